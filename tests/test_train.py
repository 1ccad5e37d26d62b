"""Tests for ResNet-34 training, prediction and checkpoints in animal_assets.core.train."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torchvision

from animal_assets.core.device import resolve_device
from animal_assets.core.checkpoint import load_checkpoint, save_checkpoint
from animal_assets.core.train import TrainConfig, TrainResult, predict, predict_proba, train_resnet34

PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [0, 0, 128]])


def make_shapes(num_classes: int, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class k: a square of colour k at a random place on a noisy grey 64x64 background."""
    rng = np.random.default_rng(seed)
    n = num_classes * per_class
    labels = np.repeat(np.arange(num_classes), per_class)
    images = rng.integers(90, 140, size=(n, 64, 64, 3)).astype(np.uint8)
    for i, k in enumerate(labels):
        side = int(rng.integers(20, 36))
        top, left = rng.integers(0, 64 - side, size=2)
        images[i, top:top + side, left:left + side] = PALETTE[k]
    order = rng.permutation(n)
    return images[order], labels[order]


def tiny_config(**overrides) -> TrainConfig:
    # fp32 unless a test asks for bf16: "auto" would depend on the machine's CPU.
    base = dict(epochs=1, batch_size=16, max_lr=0.02, eval_batch_size=64, device="cpu", precision="fp32")
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # With tiny batches, two OpenMP threads on a 2-core machine that is also busy with other
    # work run about 25x slower than one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train_shapes(precision: str) -> tuple[TrainResult, np.ndarray, np.ndarray]:
    images, labels = make_shapes(10, 20, seed=0)
    val_images, val_labels = make_shapes(10, 4, seed=1)
    rows = []
    result = train_resnet34(images, labels, num_classes=10, config=tiny_config(epochs=2, precision=precision),
                            val_images=val_images, val_labels=val_labels, on_epoch=rows.append)
    assert rows == result.history
    return result, val_images, val_labels


@pytest.fixture(scope="module")
def trained() -> tuple[TrainResult, np.ndarray, np.ndarray]:
    return _train_shapes("fp32")


@pytest.fixture(scope="module")
def trained_bf16() -> tuple[TrainResult, np.ndarray, np.ndarray]:
    return _train_shapes("bf16")


@pytest.mark.slow
def test_model_is_unmodified_torchvision_resnet34(trained):
    result, _, _ = trained
    reference = torchvision.models.resnet34(weights=None, num_classes=10)
    assert type(result.model) is torchvision.models.ResNet
    got = {k: tuple(v.shape) for k, v in result.model.state_dict().items()}
    assert got == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert not result.model.training
    assert next(result.model.parameters()).device.type == "cpu"


@pytest.mark.slow
def test_training_reduces_loss_on_separable_task(trained):
    result, val_images, val_labels = trained
    first, last = result.history
    assert last["train_loss"] < first["train_loss"]
    assert last["val_loss"] < first["val_loss"]
    assert last["val_acc"] >= 0.25  # 10 classes: chance is 0.1; seeds 0-3 reach 0.275-0.475
    assert set(first) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_balanced_acc",
                          "lr", "seconds", "images_per_s"}
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert result.device == "cpu" and result.seconds > 0
    # The last epoch's validation numbers describe the returned model.
    assert np.mean(predict(result.model, val_images, device="cpu") == val_labels) == pytest.approx(last["val_acc"])


@pytest.mark.slow
def test_bf16_path_learns_the_separable_task_too(trained, trained_bf16):
    fp32, _, _ = trained
    bf16, _, _ = trained_bf16
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    first, last = bf16.history
    assert last["train_loss"] < first["train_loss"]
    assert last["val_acc"] >= 0.25  # as the fp32 path; chance is 0.1
    # bf16 arithmetic really ran: the same seed ends at other weights than fp32
    assert not torch.equal(fp32.model.state_dict()["fc.weight"], bf16.model.state_dict()["fc.weight"])
    assert next(bf16.model.parameters()).dtype == torch.float32  # autocast keeps fp32 weights


@pytest.mark.slow
def test_predict_proba_rows_are_distributions(trained):
    result, val_images, _ = trained
    probs = predict_proba(result.model, val_images, batch_size=7, device="cpu")
    assert probs.shape == (len(val_images), 10) and probs.dtype == np.float32
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert np.array_equal(predict(result.model, val_images, device="cpu"), probs.argmax(1))
    assert predict_proba(result.model, val_images[:0], device="cpu").shape == (0, 10)
    # on the CPU the scores are float32 whatever the model was trained in
    for precision in ("bf16", "fp32"):
        assert np.array_equal(predict_proba(result.model, val_images, batch_size=7, device="cpu",
                                            precision=precision), probs)
    with pytest.raises(ValueError, match="precision"):
        predict_proba(result.model, val_images, device="cpu", precision="fp16")


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(rotate_deg=10.0, mixup_alpha=0.4),
    dict(precision="bf16"),
    dict(precision="bf16", channels_last=False),
])
def test_same_seed_gives_identical_weights(overrides):
    images, labels = make_shapes(4, 4, seed=2)
    config = tiny_config(batch_size=8, **overrides)
    a = train_resnet34(images, labels, num_classes=4, config=config).model.state_dict()
    b = train_resnet34(images, labels, num_classes=4, config=config).model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = train_resnet34(images, labels, num_classes=4, config=dataclasses.replace(config, seed=1)).model.state_dict()
    assert not torch.equal(a["fc.weight"], c["fc.weight"])


def test_global_rng_is_left_alone():
    images, labels = make_shapes(2, 4, seed=3)
    torch.manual_seed(99)
    expected = torch.rand(3)
    torch.manual_seed(99)
    train_resnet34(images, labels, num_classes=2, config=tiny_config(batch_size=8))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.slow
def test_checkpoint_round_trip_gives_identical_predictions(trained, tmp_path):
    result, val_images, _ = trained
    path = tmp_path / "ckpt" / "model.pt"
    save_checkpoint(path, result.model, num_classes=10, config=result.config, history=result.history,
                    precision=result.precision)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary left behind
    model, meta = load_checkpoint(path)
    assert meta["precision"] == "fp32" and meta["config"]["precision"] == "fp32"
    assert type(model) is torchvision.models.ResNet and not model.training
    assert meta["num_classes"] == 10
    assert meta["history"] == result.history
    assert TrainConfig.from_dict(meta["config"]) == result.config
    before = predict_proba(result.model, val_images, device="cpu")
    after = predict_proba(model, val_images, device="cpu")
    assert np.array_equal(before, after)


def test_on_batch_reports_progress_to_the_end():
    images, labels = make_shapes(2, 6, seed=4)
    calls = []
    train_resnet34(images, labels, num_classes=2, config=tiny_config(epochs=2, batch_size=4),
                   on_batch=lambda done, total: calls.append((done, total)))
    assert calls == [(step, 6) for step in range(1, 7)]  # few steps per epoch: every step reports
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_config_dict_round_trip_and_demo():
    config = TrainConfig(epochs=3, mixup_alpha=0.2)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.demo().batch_size < TrainConfig().batch_size
    assert TrainConfig.demo(epochs=1).epochs == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 5  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown keys"):
        TrainConfig.from_dict({"epochs": 2, "learning_rate": 0.1})
    # checkpoints written before the precision field carried a bf16 flag
    assert TrainConfig.from_dict({"bf16": True}).precision == "auto"
    assert TrainConfig.from_dict({"bf16": False}).precision == "fp32"


@pytest.mark.parametrize("field,value", [("epochs", 0), ("batch_size", 0), ("max_lr", -1.0),
                                         ("label_smoothing", 1.0), ("translate", -1),
                                         ("precision", "fp16")])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("images,labels,match", [
    (np.zeros((4, 64, 64, 3), np.float32), np.zeros(4, np.int64), "uint8"),
    (np.zeros((4, 64, 64, 3), np.uint8), np.zeros(3, np.int64), "labels"),
    (np.zeros((4, 64, 64, 3), np.uint8), np.full(4, 5), "0..1"),
    (np.zeros((0, 64, 64, 3), np.uint8), np.zeros(0, np.int64), "empty"),
])
def test_train_rejects_bad_input(images, labels, match):
    with pytest.raises(ValueError, match=match):
        train_resnet34(images, labels, num_classes=2, config=tiny_config())


def test_val_images_and_labels_come_together():
    images, labels = make_shapes(2, 2, seed=5)
    with pytest.raises(ValueError, match="both"):
        train_resnet34(images, labels, num_classes=2, config=tiny_config(), val_images=images)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")  # passes through
    with pytest.raises(TypeError, match="str or torch.device"):
        resolve_device(0)


@pytest.mark.parametrize("n,batch_size", [(3, 64), (8, 4), (16, 4), (40, 8)])
def test_very_short_runs_train_without_a_schedule_error(n, batch_size):
    images, labels = make_shapes(2, n // 2 + 1, seed=5)
    result = train_resnet34(images[:n], labels[:n], num_classes=2,
                            config=tiny_config(epochs=1, batch_size=batch_size))
    assert len(result.history) == 1
    assert np.isfinite(result.history[0]["train_loss"])
