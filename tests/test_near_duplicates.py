"""Near-copy groups: each detector finds a made near-copy and leaves a distinct look-alike alone,
and no near-copy pair crosses the validation / training split."""
from __future__ import annotations

import functools
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance

from animal_assets.core.near_duplicates import dhash, find_near_copies, group_table, thumbnails
from animal_assets.core.split import select_val


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def made_features(seed: int, n: int = 200, d: int = 64):
    """n distinct images; image 0 has a near-copy (cosine > 0.99) and image 1 a look-alike
    (cosine about 0.85), both appended at the end."""
    rng = np.random.default_rng(seed)
    base = _unit(rng.normal(size=(n, d)))
    copy = _unit(base[0] + 0.05 * rng.normal(size=d) / np.sqrt(d))
    look = _unit(base[1] + 0.6 * _unit(rng.normal(size=(1, d)))[0])
    return np.vstack([base, copy, look])


def _nn(head: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The head features' nearest neighbours, as the neighbours stage stores them."""
    from animal_assets.core.knn import knn

    return knn(np.ascontiguousarray(head, dtype=np.float32), k=min(k, len(head) - 1), device="cpu")


def _blank(n: int) -> np.ndarray:
    return np.zeros((n, 4), np.float32)  # thumbnails that correlate with nothing


def _no_hashes(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)  # all distinct


@pytest.mark.parametrize("seed", [0, 1])
def test_embedding_pairs_group_a_near_copy_and_not_a_look_alike(seed):
    head = made_features(seed)
    n = len(head)
    sims = head @ head.T
    assert sims[0, n - 2] > 0.99 and 0.75 < sims[1, n - 1] < 0.92
    near = find_near_copies(_nn(head), _blank(n), _no_hashes(n), [f"f{i}" for i in range(n)], threshold=0.95,
                            corroborate=None)
    assert near.group[0] == near.group[n - 2]
    assert near.group[1] != near.group[n - 1]
    assert np.bincount(near.group).max() == 2 and (np.bincount(near.group) == 2).sum() == 1
    pair = near.pairs.iloc[0]
    assert (pair["a"], pair["b"], pair["by"]) == (0, n - 2, "embedding") and pair["similarity"] > 0.99


def test_equal_hashes_and_equal_bytes_group_images_the_features_keep_apart():
    head = made_features(2)
    n = len(head)
    hashes = _no_hashes(n)
    hashes[5] = hashes[9] = np.uint64(0x0F0F0F0F0F0F0F0F)  # a structured hash, shared
    hashes[6] = hashes[7] = np.uint64(0)  # a blank hash says nothing
    sha = [f"f{i}" for i in range(n)]
    sha[11] = sha[12] = "same-bytes"
    near = find_near_copies(_nn(head), _blank(n), hashes, sha, threshold=0.95, corroborate=None)
    g = near.group
    assert g[5] == g[9] and g[11] == g[12] and g[6] != g[7]
    by = {(int(a), int(b)): s for a, b, s in near.pairs[["a", "b", "by"]].itertuples(index=False)}
    assert by[(5, 9)] == "hash" and by[(11, 12)] == "bytes"
    table = group_table(near, np.array([f"img_{i}" for i in range(n)]), np.arange(n) % 3)
    assert set(table["size"]) == {2} and len(table) == 3
    assert table["conflict"].all()  # the made pairs carry different given labels


def test_groups_are_deterministic_and_numbered_by_first_member():
    head = made_features(3)
    n = len(head)
    a = find_near_copies(_nn(head), _blank(n), _no_hashes(n), [f"f{i}" for i in range(n)], corroborate=None)
    b = find_near_copies(_nn(head.copy()), _blank(n), _no_hashes(n), [f"f{i}" for i in range(n)], corroborate=None)
    np.testing.assert_array_equal(a.group, b.group)
    pd.testing.assert_frame_equal(a.pairs, b.pairs)
    first_seen = pd.Series(a.group).drop_duplicates().to_numpy()
    np.testing.assert_array_equal(first_seen, np.arange(len(first_seen)))


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _copies(img: np.ndarray) -> dict[str, np.ndarray]:
    im = Image.fromarray(img)
    return {
        "jpeg 50": np.asarray(_jpeg(im, 50)),
        "resize 52": np.asarray(im.resize((52, 52), Image.BILINEAR).resize((64, 64), Image.BILINEAR)),
        "crop 3 px": np.asarray(im.crop((3, 2, 63, 61)).resize((64, 64), Image.BILINEAR)),
        "brighter": np.asarray(ImageEnhance.Brightness(im).enhance(1.12)),
    }


def test_dhash_survives_a_re_encode_and_tells_pictures_apart():
    from tests.test_image_quality import picture

    a, b = picture(0), picture(1)
    ha, hb, hc = dhash(np.stack([a, b, np.asarray(_jpeg(Image.fromarray(a), 85))]))
    assert bin(int(ha) ^ int(hc)).count("1") <= 3
    assert bin(int(ha) ^ int(hb)).count("1") >= 16


@pytest.mark.slow
def test_the_encoder_groups_made_near_copies_of_real_images_and_not_other_images_of_a_class(tmp_path):
    """Images of the demo set (digits on textured backgrounds), each with four made copies: every
    copy lands in its original's group; another image of the same class does not."""
    from animal_assets.core.embed import embed_images
    from animal_assets.core.ingest import read_dataset
    from animal_assets.core.synthetic.demo import make_demo_dataset
    from animal_assets.core.ingest import load_raw_images

    demo = make_demo_dataset(tmp_path / "demo", seed=3, size="tiny")
    raw = read_dataset(str(demo.dataset_dir), tmp_path / "raw")
    images, manifest = load_raw_images(raw)
    originals = images[:40]
    made, source = [], []
    for i, img in enumerate(originals):
        for copy in _copies(img).values():
            made.append(copy)
            source.append(i)
    batch = np.concatenate([originals, np.stack(made)])
    head = embed_images(batch, image_size=128, precision="fp32", device="cpu")
    near = find_near_copies(_nn(head), thumbnails(batch), dhash(batch), [f"f{i}" for i in range(len(batch))],
                            mirrored=thumbnails(np.ascontiguousarray(batch[:, :, ::-1])))
    g = near.group
    copies_found = g[len(originals):] == g[np.array(source)]
    assert copies_found.mean() >= 0.9, copies_found.mean()
    # distinct images of one class (look-alikes by construction: same digit, same style) stay apart
    given = manifest["given"].to_numpy()[:40]
    for k in np.unique(given):
        members = np.flatnonzero(given == k)
        assert len(set(g[members])) == len(members), k


def test_no_validation_image_has_a_near_copy_anywhere():
    rng = np.random.default_rng(0)
    n, k = 400, 2
    given = np.repeat(np.arange(k), n // 2)
    decisions = pd.DataFrame({"given": given, "label": given, "action": "keep", "reason": "",
                              "label_issue": False})
    trust = rng.random(n)
    trust[:40] = 2.0  # the most trusted images all have near-copies
    near = np.arange(n)
    near[:40] = near[40:80]  # image i < 40 and image i + 40 are near-copies
    near[200:240] = near[240:280]
    trust[200:240] = 2.0
    val = select_val(decisions, trust, dup_group=np.arange(n), num_classes=k, per_class=20,
                     near_group=near)
    assert val.sum() == 40
    grouped = np.r_[0:80, 200:280]
    assert not val[grouped].any()
    plain = select_val(decisions, trust, dup_group=np.arange(n), num_classes=k, per_class=20)
    # without the groups the most trusted images, those with near-copies, are picked
    assert plain[:40].sum() == 20 and plain[200:240].sum() == 20


def test_contamination_flags_a_planted_copy_and_its_mirror_image_and_not_other_pictures():
    from animal_assets.core.near_duplicates import contamination
    from tests.test_image_quality import picture

    data = np.stack([picture(s) for s in range(30)])
    planted = _copies(data[4])["crop 3 px"]
    mirrored = np.ascontiguousarray(_copies(data[7])["jpeg 50"][:, ::-1])
    others = [picture(s) for s in range(100, 110)]  # pictures the data does not hold
    test = np.stack([others[0], planted, *others[1:5], mirrored, *others[5:]])
    found = contamination(test, data)
    assert found["test"].tolist() == [1, 6]
    assert found["match"].tolist() == [4, 7]
    assert found.loc[1, "by"] in ("mirror", "hash") and found.loc[0, "by"] in ("thumbnail", "hash")


@pytest.mark.slow
def test_the_contamination_check_warns_of_a_planted_copy_naming_both_images(tiny_graph, tmp_path):
    """Through a run of the graph with a test set (the negative control, pictures the data does
    not hold, is in the unit test above and beside the planted copy here)."""
    from animal_assets import runner
    from animal_assets.core.ds801 import encode_jpeg, new_image_id, write_ds801
    from animal_assets.core.ingest import load_raw_images
    from animal_assets.definitions import build_defs
    from animal_assets.resources import DatasetResource, DeviceResource, StorageResource
    from tests.graph import TINY, fork, sqlite_instance
    from tests.test_image_quality import picture

    graph = fork(tiny_graph, tmp_path / "graph")
    images, manifest = load_raw_images(graph.defs.load_asset_value("raw_images", instance=graph.instance))
    rng = np.random.default_rng(0)
    others = [(new_image_id(rng), encode_jpeg(picture(200 + i)), i % 10) for i in range(12)]
    planted = (new_image_id(rng), encode_jpeg(_copies(images[5])["jpeg 50"]), 0)
    test_dir = write_ds801(tmp_path / "test-set", others + [planted], num_classes=10)
    defs = build_defs({
        "storage": StorageResource(root=str(graph.tmp / "out")),
        "dataset": DatasetResource(path=str(graph.dataset), test_set=str(test_dir)),
        "compute": DeviceResource(device="cpu"),
    })
    summary = runner.run(config=TINY, instance=sqlite_instance(graph.tmp), defs=defs,
                         select=["near_duplicates"])
    verdict = summary["checks"]["near_duplicates.test_set_not_in_the_data"]
    assert verdict.startswith("failed (WARN): 1 of 13 test images have a copy")
    assert planted[0] in verdict and str(manifest["id"].iloc[5]) in verdict
    # without a test set the check passes (the tiny graph's own run)
    assert tiny_graph.summary["checks"]["near_duplicates.test_set_not_in_the_data"] == "passed"


def test_a_mirrored_copy_is_grouped_only_with_the_mirror_option():
    from tests.test_image_quality import picture

    data = np.stack([picture(s) for s in range(20)])
    flipped = np.ascontiguousarray(_copies(data[3])["jpeg 50"][:, ::-1])
    batch = np.concatenate([data, flipped[None]])
    n = len(batch)
    head = made_features(4, n=n - 2)  # features that keep every image apart
    hashes = _no_hashes(n)
    args = (_nn(head), thumbnails(batch), hashes, [f"f{i}" for i in range(n)])
    plain = find_near_copies(*args)
    assert plain.group[3] != plain.group[n - 1]
    mirror = find_near_copies(*args, mirrored=thumbnails(np.ascontiguousarray(batch[:, :, ::-1])),
                              mirror=True)
    assert mirror.group[3] == mirror.group[n - 1]
    assert mirror.pairs.set_index(["a", "b"]).loc[(3, n - 1), "by"] == "mirror"
    assert np.bincount(mirror.group).max() == 2


def test_feature_pairs_need_thumbnails_that_correlate():
    """Images of little content (a colour with noise) have near-equal features without being
    copies: a feature pair counts only where the thumbnails correlate too."""
    rng = np.random.default_rng(5)
    flat = np.clip(120 + rng.normal(0, 30, (6, 64, 64, 3)), 0, 255).astype(np.uint8)
    head = np.repeat(_unit(rng.normal(size=(1, 16))), 6, axis=0) + 0.001 * rng.normal(size=(6, 16))
    args = (_nn(head), thumbnails(flat), _no_hashes(6), [f"f{i}" for i in range(6)])
    assert np.bincount(find_near_copies(*args, corroborate=None).group).max() == 6
    assert np.bincount(find_near_copies(*args).group).max() == 1


@pytest.mark.parametrize("policy", ["keep_all", "keep_one"])
def test_balanced_train_counts_a_near_copy_group_once(tiny_graph, tmp_path, policy):
    """Five training images of one class made a near-copy group: the class counts them as one
    image, none of them is repeated but the first, and keep_one exports only that one."""
    import dataclasses

    from animal_assets.core.stages.balanced_train import BalancedTrainConfig, make_balanced_train
    from animal_assets.core.stages.clean_labels import read_decisions

    load = functools.partial(tiny_graph.defs.load_asset_value, instance=tiny_graph.instance)
    raw, clean, val, near = load("raw_images"), load("clean_labels"), load("val_split"), load("near_duplicates")
    decisions = read_decisions(clean)
    val_ids = set(pd.read_csv(val.ids_path)["id"])
    train = decisions[(decisions["label"] >= 0) & ~decisions["id"].isin(val_ids)]
    smallest = int(train["label"].value_counts().idxmin())
    members = train.index[train["label"] == smallest][:5].to_numpy()
    table = pd.read_csv(near.path)
    table["group"] = np.arange(len(table))
    table.loc[members, "group"] = members[0]
    table.to_csv(tmp_path / "near.csv", index=False)
    made = dataclasses.replace(near, path=str(tmp_path / "near.csv"))
    params = BalancedTrainConfig(near_copies=policy)
    plain = make_balanced_train(raw, clean, val, tmp_path / "plain", params)
    bal = make_balanced_train(raw, clean, val, tmp_path / "grouped", params, near=made)
    assert plain.distinct_before == plain.counts_before and plain.n_left_out == 0
    assert bal.distinct_before[smallest] == plain.counts_before[smallest] - 4
    exported = pd.read_csv(bal.train.ids_path)
    ids = decisions["id"].to_numpy()
    copied_from = exported.loc[exported["generated"], "source_id"]
    assert not copied_from.isin(ids[members[1:]]).any()
    kept = set(exported.loc[~exported["generated"], "id"])
    if policy == "keep_one":
        assert bal.n_left_out == 4 and not kept & set(ids[members[1:]]) and ids[members[0]] in kept
    else:
        assert bal.n_left_out == 0 and set(ids[members]) <= kept


def _approximate_searches(monkeypatch) -> list[int]:
    """The row counts of every approximate search from here on (the search still runs)."""
    from animal_assets.core import ann

    searched, search = [], ann.approximate_knn

    def counted(x, **kw):
        searched.append(len(x))
        return search(x, **kw)

    monkeypatch.setattr(ann, "approximate_knn", counted)
    return searched


def test_the_approximate_thumbnail_search_groups_what_the_exact_one_groups(monkeypatch):
    """Past the neighbours stage's size threshold the thumbnails are searched in the approximate
    index too: on 4,000 thumbnails with 120 planted copies (60 re-encoded-like, 60 crop-like)
    it finds the same groups as comparing every pair."""
    rng = np.random.default_rng(11)
    n, t = 4000, 144
    thumbs = _unit(rng.standard_normal((n, t)).astype(np.float32))
    crop = _unit(rng.standard_normal((n, t)).astype(np.float32))  # each image's cropped thumbnail
    copied, cropped_from = rng.choice(n // 2, 120, replace=False).reshape(2, 60)
    noise = 0.01 * rng.standard_normal((120, t)).astype(np.float32)  # correlation about 0.99
    thumbs[n - 120:n - 60] = _unit(thumbs[copied] + noise[:60])
    thumbs[n - 60:] = _unit(crop[cropped_from] + noise[60:])
    args = (_nn(made_features(5, n=n - 2)), thumbs, _no_hashes(n), [f"f{i}" for i in range(n)])
    searched = _approximate_searches(monkeypatch)
    exact = find_near_copies(*args, cropped=(crop,))
    approximate = find_near_copies(*args, cropped=(crop,), approximate=True)
    assert searched == [n, 2 * n]  # the thumbnails, then the thumbnails with their crops
    np.testing.assert_array_equal(approximate.group, exact.group)
    assert (exact.group[n - 120:n - 60] == exact.group[copied]).all()
    assert (exact.group[n - 60:] == exact.group[cropped_from]).all()
    assert np.bincount(exact.group).max() == 2


def test_the_stage_searches_the_thumbnails_as_the_neighbours_were_searched(tiny_graph, tmp_path, monkeypatch):
    """A neighbours asset that took the approximate search makes near_duplicates search its
    thumbnails approximately too; on the tiny graph both find its groups."""
    import dataclasses

    from animal_assets.core.stages.near_duplicates import NearDuplicatesConfig, find_groups

    load = functools.partial(tiny_graph.defs.load_asset_value, instance=tiny_graph.instance)
    raw, neighbours, near = load("raw_images"), load("neighbours"), load("near_duplicates")
    assert neighbours.method == "exact"
    searched = _approximate_searches(monkeypatch)
    again = find_groups(raw, dataclasses.replace(neighbours, method="approximate"), tmp_path,
                        NearDuplicatesConfig())
    n = raw.n_usable
    assert searched == [n, 2 * n, 2 * n]  # the thumbnails, then with each crop margin's
    assert pd.read_csv(again.path)["group"].tolist() == pd.read_csv(near.path)["group"].tolist()
