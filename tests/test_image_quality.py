"""Image-quality scores and flags: each kind is found on a made example and a clean picture is
flagged for nothing, also after a JPEG round trip; under the drop policy the label stage drops the
flagged images with the reason "quality"."""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from animal_assets.core.image_quality import KINDS, Thresholds, issues, score_images

SIZE = 64


def _smooth(rng: np.random.Generator, scale: int) -> np.ndarray:
    """Noise of one feature size, upsampled bilinearly: (SIZE, SIZE, 3) in [0, 1]."""
    coarse = rng.random((3, SIZE // scale + 2, SIZE // scale + 2))
    img = Image.fromarray(np.uint8(coarse.transpose(1, 2, 0) * 255))
    big = img.resize(((SIZE // scale + 2) * scale, (SIZE // scale + 2) * scale), Image.BILINEAR)
    return np.asarray(big, dtype=np.float64)[:SIZE, :SIZE] / 255.0


def picture(seed: int) -> np.ndarray:
    """A colourful picture with detail at every scale, like a photograph."""
    rng = np.random.default_rng(seed)
    x = 0.45 * _smooth(rng, 16) + 0.3 * _smooth(rng, 4) + 0.25 * _smooth(rng, 1)
    x = (x - x.min()) / (x.max() - x.min())
    return np.uint8(np.rint(x * 255))


def blur(x: np.ndarray, sigma: float) -> np.ndarray:
    r = int(3 * sigma)
    g = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    f = x.astype(np.float64)
    f = np.apply_along_axis(lambda v: np.convolve(np.pad(v, r, mode="edge"), g, "valid"), 0, f)
    f = np.apply_along_axis(lambda v: np.convolve(np.pad(v, r, mode="edge"), g, "valid"), 1, f)
    return np.uint8(np.clip(np.rint(f), 0, 255))


def jpeg(x: np.ndarray, quality: int = 80) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def made(seed: int) -> dict[str, np.ndarray]:
    """One picture of each kind, and clean ones (a photograph-like one, one on a plain studio
    background)."""
    rng = np.random.default_rng(seed)
    x = picture(seed)
    gray = np.uint8(np.rint(x.astype(np.float64) @ [0.299, 0.587, 0.114]))
    letterbox = x.copy()
    letterbox[:10], letterbox[-10:] = 0, 0
    studio = np.full_like(x, 250)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    blob = (yy - 34) ** 2 / 500 + (xx - 30) ** 2 / 400 < 1
    studio[blob] = picture(seed + 100)[blob]
    return {
        "clean": x,
        "studio": studio,
        "dark": np.uint8(x * 0.15),
        "light": np.uint8(255 - (255 - x.astype(np.int16)) * 0.1),
        "low_information": np.uint8(np.clip(120 + rng.normal(0, 0.6, x.shape), 0, 255)),
        "blurry": blur(x, 2.0),
        "grayscale": np.repeat(gray[..., None], 3, axis=2),
        "padded": letterbox,
    }


def flagged(images: dict[str, np.ndarray]) -> dict[str, str]:
    names = list(images)
    scores = score_images(np.stack([images[n] for n in names]))
    return dict(zip(names, issues(Thresholds().flags(scores))))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("encode", [False, True])
def test_each_kind_is_found_and_a_clean_picture_is_flagged_for_nothing(seed, encode):
    images = made(seed)
    if encode:
        images = {name: jpeg(x) for name, x in images.items()}
    found = flagged(images)
    assert found["clean"] == "" and found["studio"] == "", found
    for kind in KINDS:
        # a made example may show a second kind too (a near-constant image is also dark or
        # light at the extremes), but always its own
        assert kind in found[kind].split(","), (kind, found)
    assert found["padded"] == "padded" and found["grayscale"] == "grayscale", found


def test_scores_are_deterministic_and_do_not_depend_on_the_chunk():
    batch = np.stack(list(made(3).values()) * 5)
    a = score_images(batch, chunk=7)
    b = score_images(batch, chunk=1000)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == list(KINDS) and len(a) == len(batch)


def test_blur_score_falls_with_the_blur_and_not_with_the_contrast():
    x = picture(4)
    scores = score_images(np.stack([x, blur(x, 1.0), blur(x, 2.0), np.uint8(x * 0.5 + 60)]))["blurry"]
    assert scores[0] > scores[1] > scores[2]
    assert abs(scores[3] - scores[0]) < 0.02 * scores[0] + 0.005  # half the contrast: same share


def test_padding_needs_bands_on_two_opposite_sides_ending_at_an_edge():
    x = picture(5)
    one_side = x.copy()
    one_side[:16] = 0
    pillar = x.copy()
    pillar[:, :8], pillar[:, -8:] = 255, 255
    scores = score_images(np.stack([one_side, pillar]))["padded"]
    assert scores[0] == 0.0
    assert scores[1] == pytest.approx(16 / 64)


def test_constant_images_are_low_information_not_blurry():
    black = np.zeros((2, SIZE, SIZE, 3), np.uint8)
    black[1] = 200
    flags = Thresholds().flags(score_images(black))
    assert flags["low_information"].all() and not flags["blurry"].any()
    assert flags["dark"].tolist() == [True, False]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="uint8"):
        score_images(np.zeros((2, SIZE, SIZE, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        score_images(np.zeros((2, SIZE, SIZE), np.uint8))


def _with_dark_image(tmp_path):
    from animal_assets.core.ds801 import encode_jpeg
    from animal_assets.core.synthetic.demo import make_demo_dataset

    demo = make_demo_dataset(tmp_path / "demo", seed=2, size="tiny")
    victim = sorted(json.loads((demo.dataset_dir / "data-labels.json").read_text()))[0]
    (demo.dataset_dir / "imgs" / f"{victim}.jpg").write_bytes(encode_jpeg(np.zeros((SIZE, SIZE, 3), np.uint8)))
    return demo, victim


@pytest.mark.slow
def test_the_drop_policy_drops_flagged_images_with_their_reason(tmp_path):
    from animal_assets.core.config import params_from_run_config
    from animal_assets.core.pipeline import run_stages
    from animal_assets.core.stages import RunContext, upto
    from tests.graph import TINY

    demo, victim = _with_dark_image(tmp_path)
    config = {"ops": {**TINY["ops"], "image_quality": {"config": {"policy": "drop"}}}}
    ctx = RunContext(output=tmp_path / "out", dataset=str(demo.dataset_dir),
                     log=lambda _: None, warn=lambda _: None)
    results = run_stages(ctx, params_from_run_config(config), stages=upto("clean_labels"),
                         describe=False)
    quality = pd.read_csv(results["image_quality"].path, keep_default_na=False).set_index("id")
    assert quality.loc[victim, "dark_flag"] and "dark" in quality.loc[victim, "issues"]
    assert results["image_quality"].n_drop == quality["drop"].sum() > 1
    decisions = pd.read_csv(tmp_path / "out" / "clean_labels" / "decisions.csv").set_index("id")
    flagged = quality.index[quality["drop"]]
    assert victim in flagged
    decided = decisions.loc[flagged]
    assert (decided["action"] == "drop").all() and (decided["label"] == -1).all()
    # an image that is also out of distribution keeps that reason (the black one is)
    assert set(decided["reason"]) <= {"quality", "ood"} and (decided["reason"] == "quality").any()
    assert (decisions["reason"] == "quality").sum() == (decided["reason"] == "quality").sum()


def test_the_report_policy_flags_images_and_drops_none_of_them(tiny_graph):
    quality = tiny_graph.defs.load_asset_value("image_quality", instance=tiny_graph.instance)
    clean = tiny_graph.defs.load_asset_value("clean_labels", instance=tiny_graph.instance)
    table = pd.read_csv(quality.path, keep_default_na=False)
    assert quality.policy == "report" and quality.n_flagged > 0 and quality.n_drop == 0
    assert not table["drop"].any() and (table["issues"] != "").sum() == quality.n_flagged
    decisions = pd.read_csv(clean.path)
    assert not (decisions["reason"] == "quality").any()


def test_decide_drops_flagged_images_with_their_reason_and_ood_first():
    from animal_assets.core.cleaning import decide

    probs = np.tile([0.9, 0.1], (6, 1))
    labels = np.zeros(6, dtype=np.int64)
    ood = np.array([1, 0, 0, 0, 0, 0], bool)
    quality = np.array([1, 1, 0, 0, 0, 0], bool)
    group = np.array([0, 1, 2, 2, 3, 4])  # rows 2 and 3 are byte-identical copies
    quality[3] = True  # one copy flagged: the group goes whole
    plain = decide(labels, probs, ood_flags=ood, dup_group=group, num_classes=2)
    flagged = decide(labels, probs, ood_flags=ood, dup_group=group, num_classes=2, quality_flags=quality)
    assert plain["reason"].tolist() == ["ood", "", "", "duplicate", "", ""]
    assert flagged["reason"].tolist() == ["ood", "quality", "quality", "quality", "", ""]
    assert (flagged["label"].to_numpy()[:4] == -1).all() and (flagged["action"][:4] == "drop").all()
    none = decide(labels, probs, ood_flags=ood, dup_group=group, num_classes=2, quality_flags=np.zeros(6, bool))
    pd.testing.assert_frame_equal(none, plain)
