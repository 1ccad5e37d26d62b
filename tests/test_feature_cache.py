"""The content-addressed feature cache and the embeddings stage reading from it."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from animal_assets.core.stages.embeddings import EmbeddingsConfig, compute_embeddings
from animal_assets.core.feature_cache import FeatureCache
from animal_assets.core.ingest import read_dataset
from tests.fixtures import make_dataset


def test_rows_come_back_by_key_and_survive_a_reopen(tmp_path):
    cache = FeatureCache(tmp_path, image_size=64, stages=False)
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    cache.add(["a", "b", "c", "b"], rows)  # the repeated key keeps its first row
    assert len(cache) == 3
    again = FeatureCache(tmp_path, image_size=64, stages=False)
    np.testing.assert_array_equal(again.get(["c", "a"]), rows[[2, 0]])
    assert again.missing(["a", "x", "c", "y"]).tolist() == [1, 3]
    again.add(["x", "a"], np.full((2, 3), 7.0, np.float32))  # "a" keeps its row
    np.testing.assert_array_equal(FeatureCache(tmp_path, image_size=64, stages=False).get(["a", "x"]),
                                  np.stack([rows[0], np.full(3, 7.0)]))


def test_two_writers_of_one_folder_keep_each_others_rows(tmp_path):
    first = FeatureCache(tmp_path, image_size=64, stages=False)
    second = FeatureCache(tmp_path, image_size=64, stages=False)  # opened before first adds
    first.add(["a", "b"], np.ones((2, 3), np.float32))
    second.add(["b", "c"], np.full((2, 3), 2.0, np.float32))  # "b" keeps first's row
    for cache in (second, FeatureCache(tmp_path, image_size=64, stages=False)):
        assert len(cache) == 3
        np.testing.assert_array_equal(cache.get(["a", "b", "c"]), [[1.0] * 3, [1.0] * 3, [2.0] * 3])


def _add_one_by_one(root: str, name: str, n: int) -> None:
    cache = FeatureCache(root, image_size=64, stages=False)
    for i in range(n):
        cache.add([f"{name}{i}"], np.full((1, 3), i, np.float32))


def test_processes_adding_at_once_lose_no_row(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")  # the child adds rows only: no threads
    workers = [context.Process(target=_add_one_by_one, args=(str(tmp_path), name, 40)) for name in "pq"]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    cache = FeatureCache(tmp_path, image_size=64, stages=False)
    assert len(cache) == 80
    for name in "pq":
        np.testing.assert_array_equal(cache.get([f"{name}{i}" for i in range(40)])[:, 0], np.arange(40))


def test_other_settings_never_share_rows(tmp_path):
    FeatureCache(tmp_path, image_size=64, stages=False).add(["a"], np.ones((1, 3), np.float32))
    other = FeatureCache(tmp_path, image_size=128, stages=False)
    assert len(other) == 0 and other.missing(["a"]).tolist() == [0]


@pytest.mark.parametrize("shorter", ["keys.json", "features.npy"])
def test_a_stop_between_the_two_writes_keeps_the_rows_both_files_hold(tmp_path, shorter):
    cache = FeatureCache(tmp_path, image_size=64, stages=False)
    cache.add(["a", "b"], np.ones((2, 3), np.float32))
    saved = (cache.dir / shorter).read_bytes()  # the file as it was before the next add
    cache.add(["c"], np.full((1, 3), 2.0, np.float32))
    (cache.dir / shorter).write_bytes(saved)
    again = FeatureCache(tmp_path, image_size=64, stages=False)
    assert len(again) == 2 and again.missing(["a", "b", "c"]).tolist() == [2]
    again.add(["c"], np.full((1, 3), 3.0, np.float32))
    np.testing.assert_array_equal(FeatureCache(tmp_path, image_size=64, stages=False).get(["c"]),
                                  np.full((1, 3), 3.0, np.float32))


def test_the_stage_keeps_its_cache_in_its_own_folder_unless_told_not_to(tmp_path):
    from animal_assets.core.stages import RunContext
    from animal_assets.core.stages.embeddings import CACHE_FOLDER, run

    raw = read_dataset(make_dataset(tmp_path, n=8, k=2, seed=3, name="c"), tmp_path / "out" / "raw_images")
    ctx = RunContext(output=tmp_path / "out", device="cpu", log=lambda _: None, warn=lambda _: None)
    params = EmbeddingsConfig(image_size=32, batch_size=3, stages=True, precision="fp32")
    first = run(params, ctx, raw_images=raw)
    second = run(params, ctx, raw_images=raw)
    assert (first.n_cached, second.n_cached) == (0, 8)
    assert (tmp_path / "out" / "embeddings" / CACHE_FOLDER).is_dir()
    # read back in one batch what was embedded in batches of 3: the same features
    np.testing.assert_allclose(np.load(second.path), np.load(first.path), rtol=1e-5, atol=1e-6)
    off = RunContext(output=tmp_path / "off", device="cpu", log=lambda _: None, warn=lambda _: None)
    plain = run(dataclasses.replace(params, cache=False, batch_size=8), off, raw_images=raw)
    assert plain.n_cached == 0 and not (tmp_path / "off" / "embeddings" / CACHE_FOLDER).exists()
    np.testing.assert_allclose(np.load(plain.path), np.load(first.path), rtol=1e-5, atol=1e-6)


def test_width_mismatch_is_refused(tmp_path):
    cache = FeatureCache(tmp_path, image_size=64)
    cache.add(["a"], np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="width"):
        cache.add(["b"], np.ones((1, 4), np.float32))


def test_embeddings_stage_embeds_only_new_images(tmp_path):
    params = EmbeddingsConfig(image_size=64, batch_size=8, stages=False, precision="fp32")
    cache = tmp_path / "cache"
    first = read_dataset(make_dataset(tmp_path, n=10, k=2, seed=0, name="a"), tmp_path / "out-a")
    fresh = compute_embeddings(first, tmp_path / "emb-a", params, device="cpu")
    cold = compute_embeddings(first, tmp_path / "emb-a2", params, device="cpu", cache_dir=cache)
    assert cold.n_cached == 0
    np.testing.assert_allclose(np.load(cold.path), np.load(fresh.path), rtol=0, atol=1e-5)
    # a second dataset: the first one's 10 images plus 6 others
    second_dir = make_dataset(tmp_path, n=6, k=2, seed=1, name="b")
    import shutil
    import json
    for img in (first_root := make_dataset(tmp_path, n=10, k=2, seed=0, name="a2")).joinpath("imgs").iterdir():
        shutil.copy(img, second_dir / "imgs" / img.name)
    labels = json.loads((second_dir / "data-labels.json").read_text())
    labels.update(json.loads((first_root / "data-labels.json").read_text()))
    (second_dir / "data-labels.json").write_text(json.dumps(labels))
    second = read_dataset(second_dir, tmp_path / "out-b")
    warm = compute_embeddings(second, tmp_path / "emb-b", params, device="cpu", cache_dir=cache)
    assert (warm.n, warm.n_cached) == (16, 10)
    again = compute_embeddings(second, tmp_path / "emb-b2", params, device="cpu", cache_dir=cache)
    assert again.n_cached == 16
    np.testing.assert_array_equal(np.load(again.path), np.load(warm.path))
