"""Galleries and plots: bounded, deterministic, decodable, and showing the right images first."""
from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from animal_assets.core import media, plots

NAMES = ["cat", "lynx", "wolf"]
RED, GREEN, BLUE = (220, 20, 20), (20, 200, 20), (20, 20, 220)


def noise(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


def solid(colours: list[tuple[int, int, int]]) -> np.ndarray:
    return np.stack([np.full((64, 64, 3), c, dtype=np.uint8) for c in colours])


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def first_thumbnail_colour(data: bytes) -> np.ndarray:
    """Mean colour at the centre of the top-left thumbnail."""
    pixels = np.asarray(decode(data).convert("RGB"), dtype=np.float64)
    centre = 6 + 40  # padding + half of the default 80 px thumbnail
    return pixels[centre - 5:centre + 5, centre - 5:centre + 5].reshape(-1, 3).mean(axis=0)


def close_to(colour: np.ndarray, expected: tuple[int, int, int]) -> bool:
    return bool(np.abs(colour - np.asarray(expected)).max() < 30)


@pytest.mark.parametrize("n, columns, expected_grid", [
    (1, 8, (1, 1)), (5, 8, (5, 1)), (16, 8, (8, 2)), (40, 8, (8, 2)), (9, 4, (4, 3)),
])
def test_gallery_is_a_bounded_jpeg_grid(n, columns, expected_grid):
    data = media.gallery(noise(n), [f"img {i}\nline two" for i in range(n)], columns=columns,
                         max_items=16, max_bytes=200_000)
    assert data[:2] == b"\xff\xd8"
    image = decode(data)
    cols, rows = expected_grid
    cell_w, cell_h = 80 + 6, 80 + 6 + 3 * 14
    assert image.size == (cols * cell_w + 6, rows * cell_h + 6)


def test_gallery_is_squeezed_under_its_byte_budget_and_is_deterministic():
    images, captions = noise(16, seed=1), [f"caption {i}" for i in range(16)]
    roomy = media.gallery(images, captions, max_bytes=500_000)
    tight = media.gallery(images, captions, max_bytes=25_000)
    assert len(tight) <= 25_000 < len(roomy)
    assert decode(tight).size[1] <= decode(roomy).size[1]  # rows left out once quality is low
    assert media.gallery(images, captions, max_bytes=25_000) == tight


@pytest.mark.parametrize("images, captions, message", [
    (noise(0), [], "at least one image"),
    (noise(2), ["only one"], "2 images but 1 captions"),
    (np.zeros((1, 64, 64), dtype=np.uint8), ["grey"], "(H, W, 3) uint8"),
    (np.zeros((1, 64, 64, 3), dtype=np.float32), ["float"], "(H, W, 3) uint8"),
])
def test_gallery_refuses_bad_input(images, captions, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        media.gallery(images, captions)


def test_highlighted_thumbnails_get_a_coloured_frame():
    image = media.gallery_image(solid([(255, 255, 255)] * 2), ["a", "b"], highlight=[True, False])
    pixels = np.asarray(image)
    assert tuple(pixels[6 - 2, 6 + 40]) == (31, 119, 180)  # just above the first thumbnail
    assert tuple(pixels[6 - 2, 6 + 86 + 40]) == (255, 255, 255)  # the second has no frame


@pytest.mark.parametrize("caption, n_lines", [
    ("short", 1),
    ("cat -> lynx 0.93\n0f8e1a2b", 2),
    ("guinea_pig -> hamster 0.93\n0f8e1a2b", 3),
    ("one two three four five six seven eight nine ten eleven twelve", 3),
])
def test_captions_wrap_to_at_most_three_lines_that_fit(caption, n_lines):
    from PIL import ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    font = media._font()
    lines = media._wrap(draw, caption, 80, font)
    assert len(lines) == n_lines
    assert all(draw.textlength(line, font=font) <= 80 for line in lines)


PLOTS = {
    "class_counts": lambda: plots.class_counts_plot(
        {"given": [10, 20, 5], "after cleaning": [8, 15, 5]}, NAMES, title="images per class"),
    "confusion": lambda: plots.confusion_plot([[5, 1, 0], [2, 3, 1], [0, 0, 6]], NAMES,
                                              title="confusion"),
    "training_curves": lambda: plots.training_curves([
        {"epoch": 1, "train_loss": 2.0, "val_loss": None, "val_balanced_acc": None},
        {"epoch": 2, "train_loss": 1.5, "val_loss": 1.6, "val_balanced_acc": 0.4},
    ]),
    "score_histogram": lambda: plots.score_histogram(np.linspace(0, 1, 200), 0.9, title="scores"),
    "score_histogram_nothing_flagged": lambda: plots.score_histogram(
        np.linspace(0, 1, 200), float("inf"), title="scores"),
    "comparison": lambda: plots.comparison_plot(["full", "no cleaning"], [0.84, 0.79],
                                                [0.01, 0.02], metric="balanced accuracy",
                                                title="ablation"),
}


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_plots_are_small_deterministic_pngs(name):
    first, second = PLOTS[name](), PLOTS[name]()
    assert first.startswith(b"\x89PNG\r\n\x1a\n")
    assert first == second
    assert 2_000 < len(first) < 80_000
    assert min(decode(first).size) > 150


@pytest.mark.parametrize("call, message", [
    (lambda: plots.class_counts_plot({"given": [1, 2]}, NAMES, title="t"), "2 counts for 3"),
    (lambda: plots.confusion_plot(np.zeros((2, 2)), NAMES, title="t"), r"\(3, 3\)"),
    (lambda: plots.training_curves([]), "at least one epoch"),
    (lambda: plots.comparison_plot(["a"], [0.1, 0.2], metric="m", title="t"), "same length"),
])
def test_plots_refuse_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("data, mime", [
    (media.gallery(noise(1), ["x"]), "image/jpeg"),
    (PLOTS["confusion"](), "image/png"),
])
def test_markdown_embeds_the_exact_bytes(data, mime):
    md = media.image_markdown(data, alt="a [b]", caption="under it")
    assert md.startswith(f"![a (b)](data:{mime};base64,")
    encoded = md[md.index("base64,") + 7:md.index(")\n")]
    assert base64.b64decode(encoded) == data
    assert md.endswith("\n\nunder it")


def test_only_png_and_jpeg_are_embedded():
    with pytest.raises(ValueError, match="PNG and JPEG"):
        media.data_uri(b"GIF89a....")


def test_write_image_is_atomic_and_returns_the_path(tmp_path):
    path = tmp_path / "sub" / "plot.png"
    data = PLOTS["class_counts"]()
    assert media.write_image(path, data) == str(path)
    assert path.read_bytes() == data
    assert [p.name for p in path.parent.iterdir()] == ["plot.png"]


def _decisions(rows: list[dict]) -> pd.DataFrame:
    base = {"given": 0, "label": 0, "action": "keep", "reason": "", "confidence": 0.9,
            "source": "auto"}
    table = pd.DataFrame([{**base, **r} for r in rows])
    table.insert(0, "id", [f"img_{i:08x}-0000-4000-8000-000000000000" for i in range(len(table))])
    table["dup_group"] = table.pop("dup_group") if "dup_group" in table else np.arange(len(table))
    return table


def test_decision_galleries_put_a_reviewers_decisions_first():
    d = _decisions([
        {"action": "relabel", "given": 0, "label": 1, "confidence": 0.99, "dup_group": 0},
        {"action": "relabel", "given": 1, "label": 2, "confidence": 0.50, "source": "review",
         "reason": "review", "dup_group": 1},
        {"action": "drop", "label": -1, "reason": "ood", "dup_group": 2},
        {"action": "keep", "dup_group": 3},
    ])
    images = solid([GREEN, RED, BLUE, GREEN])
    out = media.decision_galleries(images, d, NAMES)
    assert set(out) == {"relabelled", "dropped"}  # no duplicate group: no conflict gallery
    assert close_to(first_thumbnail_colour(out["relabelled"]), RED)
    assert close_to(first_thumbnail_colour(out["dropped"]), BLUE)


def test_duplicate_conflicts_show_copies_with_different_labels():
    d = _decisions([
        {"given": 0, "label": 1, "action": "relabel", "reason": "duplicate_conflict",
         "dup_group": 7},
        {"given": 1, "label": -1, "action": "drop", "reason": "duplicate", "dup_group": 7},
        {"given": 2, "label": 2, "dup_group": 8},
        {"given": 2, "label": -1, "action": "drop", "reason": "duplicate", "dup_group": 8},
    ])
    out = media.decision_galleries(solid([RED, RED, GREEN, GREEN]), d, NAMES)
    conflict = decode(out["duplicate_conflicts"])
    assert conflict.size[0] == 2 * 86 + 6  # the agreeing pair (group 8) is left out
    assert close_to(first_thumbnail_colour(out["duplicate_conflicts"]), RED)


def test_dropped_gallery_mixes_the_reasons():
    reasons = ["ood"] * 20 + ["label_issue"] * 2
    d = _decisions([{"action": "drop", "label": -1, "reason": r} for r in reasons])
    colours = [BLUE] * 20 + [RED] * 2
    out = media.decision_galleries(solid(colours), d, NAMES, max_items=4)
    pixels = np.asarray(decode(out["dropped"]).convert("RGB"), dtype=np.float64)
    firsts = [pixels[46, 6 + 86 * j + 40] for j in range(4)]
    # round-robin over reasons (label_issue sorts first): red, blue, red, blue
    assert [close_to(c, RED) for c in firsts] == [True, False, True, False]


def test_outlier_gallery_starts_with_the_most_outlying_image():
    table = pd.DataFrame({"id": ["img_a", "img_b", "img_c"], "score": [0.1, 0.9, 0.5],
                          "rank": [2, 0, 1], "flag": [False, True, False]})
    data = media.outlier_gallery(solid([GREEN, RED, BLUE]), table, [0, 1, 2], NAMES)
    assert close_to(first_thumbnail_colour(data), RED)


@pytest.mark.parametrize("generated, expect_gallery", [([False, False], False),
                                                       ([False, True], True)])
def test_generated_gallery_only_when_images_were_generated(generated, expect_gallery):
    ids = pd.DataFrame({"id": ["img_a", "img_b"], "label": [0, 0], "source_id": ["img_a", "img_a"],
                        "generated": generated})
    data = media.generated_gallery(solid([GREEN, RED]), ids, NAMES)
    assert (data is not None) == expect_gallery
    if expect_gallery:
        assert close_to(first_thumbnail_colour(data), RED)


def test_one_loss_spike_does_not_flatten_the_curves():
    spiky = [40.0, 1.6, 1.3, 1.1, 2.0, 1.5, 1.2, 1.0]
    top = plots.loss_axis_top(spiky)
    assert top is not None and 2.0 < top < 5.0
    assert plots.loss_axis_top([2.0, 1.6, 1.3, 1.1, 1.9, 1.5, 1.2, 1.0]) is None
    assert plots.loss_axis_top([40.0, 1.0, float("nan")]) is None  # too few to tell
