"""Training on two gloo processes under torchrun (animal_assets.core.distributed) against one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from animal_assets.core.train import TrainConfig, _my_share, train_resnet34

RECIPE = dict(device="cpu", precision="fp32", flip=False, label_smoothing=0.0, max_lr=0.005)


def coloured(n: int, k: int, size: int, seed: int):
    """Noise images whose class brightens one colour channel: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    images = rng.integers(0, 100, size=(n, size, size, 3), dtype=np.uint8)
    for c in range(k):
        images[labels == c, :, :, c % 3] += 60 * (1 + c // 3)
    return images, labels


@pytest.mark.parametrize("n, world", [(5, 2), (64, 2), (7, 3)])
def test_the_shares_weighted_and_averaged_give_the_whole_batch_mean(n, world):
    """DDP averages the processes' gradients; the factor on each process's mean loss makes that
    average the whole batch's mean, whatever rows each process got (gradients are linear in the
    loss, so the losses stand in for them)."""
    losses = torch.from_numpy(np.random.default_rng(n).standard_normal(n))
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    seen, averaged = [], 0.0
    for rank in range(world):
        mine, y_a, _, factor, counted = _my_share(x, losses, losses, (rank, world), channels_last=False)
        assert counted and torch.equal(y_a, losses[rank::world])
        seen += mine.flatten().long().tolist()
        averaged += factor * float(y_a.mean()) / world
    assert sorted(seen) == list(range(n))
    assert averaged == pytest.approx(float(losses.mean()), abs=1e-12)


def test_a_batch_smaller_than_the_group_is_trained_whole_by_every_process():
    x = torch.zeros(1, 3, 4, 4)
    y = torch.tensor([2])
    assert _my_share(x, y, y, (0, 2), channels_last=False)[3:] == (1.0, True)
    assert _my_share(x, y, y, (1, 2), channels_last=False)[3:] == (1.0, False)


def test_two_processes_on_steps_of_one_image_give_one_process_weights_bit_for_bit():
    """Each process starts from the same seed and draws the same order and augmentations; with
    one image per step both train it whole and DDP averages two equal gradients, so the weights,
    the history and the returned network are those of one process exactly."""
    images, labels = coloured(6, 2, 64, seed=3)
    config = TrainConfig(epochs=1, batch_size=1, **RECIPE)
    one = train_resnet34(images, labels, num_classes=2, config=config)
    epochs = []
    two = train_resnet34(images, labels, num_classes=2, config=TrainConfig(**{**config.to_dict(), "processes": 2}),
                         val_images=images[:4], val_labels=labels[:4], on_epoch=epochs.append)
    assert type(two.model) is type(one.model) and type(two.model.bn1) is torch.nn.BatchNorm2d
    a, b = one.model.state_dict(), two.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert two.history[0]["train_loss"] == one.history[0]["train_loss"]
    assert [row["epoch"] for row in epochs] == [1] and epochs[0]["val_balanced_acc"] is not None
    assert two.config.processes == 2 and two.precision == "fp32"


def test_two_gloo_processes_follow_the_loss_curve_of_one_on_the_same_global_batch():
    """Steps of 64 images shared by two processes (32 each). BatchNorm on the CPU normalises
    each process's 32 images with their own statistics (SyncBatchNorm runs on GPUs only), which
    is the one difference from one process: each epoch's mean loss stays within 0.15 of one
    process's (measured: at most 0.10 on this data and two others), and both learn the task."""
    images, labels = coloured(192, 4, 32, seed=1)
    config = TrainConfig(epochs=4, batch_size=64, **RECIPE)
    one = [row["train_loss"] for row in train_resnet34(images, labels, num_classes=4, config=config).history]
    two = [row["train_loss"] for row in train_resnet34(
        images, labels, num_classes=4, config=TrainConfig(**{**config.to_dict(), "processes": 2})).history]
    assert len(two) == 4
    assert max(abs(a - b) for a, b in zip(one, two)) <= 0.15, (one, two)
    assert one[-1] < 0.1 and two[-1] < 0.1 and two[0] > 5 * two[-1], (one, two)


def test_processes_must_be_at_least_one():
    with pytest.raises(ValueError, match="processes must be >= 1"):
        TrainConfig(processes=0)


def test_a_failing_process_is_reported_with_its_output(monkeypatch):
    """A process that dies ends the call with the exit status and the processes' last lines."""
    from animal_assets.core import distributed

    images, labels = coloured(8, 2, 32, seed=0)
    monkeypatch.setattr(distributed, "__name__", "animal_assets.core.no_such_module")
    with pytest.raises(RuntimeError, match=r"(?s)failed \(exit \d+\).*no_such_module"):
        train_resnet34(images, labels, num_classes=2, config=TrainConfig(epochs=1, batch_size=4, processes=2, **RECIPE))
