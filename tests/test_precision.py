"""Which arithmetic "auto" picks (animal_assets.core.precision), and the bf16 embedding path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from animal_assets.core import precision
from animal_assets.core.precision import autocast, resolve_precision

SAPPHIRE_RAPIDS = frozenset({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"})
EPYC = frozenset({"avx2", "avx512f", "avx512_bf16"})  # Zen 4: AVX-512 BF16, no matrix unit
OLDER = frozenset({"avx2", "fma"})  # no bf16 arithmetic: emulated


@pytest.mark.parametrize("flags,expected", [(SAPPHIRE_RAPIDS, "bf16"), (EPYC, "bf16"), (OLDER, "fp32"),
                                            (frozenset(), "fp32")])
def test_auto_takes_bf16_on_the_cpu_only_with_bf16_in_hardware(monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("auto", torch.device("cpu")) == expected


@pytest.mark.parametrize("asked", ["fp32", "bf16"])
def test_an_explicit_precision_is_kept_on_any_cpu(monkeypatch, asked):
    for flags in (SAPPHIRE_RAPIDS, EPYC, OLDER):
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: flags)
        assert resolve_precision(asked, "cpu") == asked


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", "cpu")


def test_cpu_flags_are_read_from_this_machine():
    flags = precision.cpu_flags()
    assert isinstance(flags, frozenset)
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo here")
    if "flags" in text:
        assert "fpu" in flags or "sse2" in flags


def test_autocast_runs_bf16_only_when_asked():
    x = torch.randn(4, 8)
    layer = torch.nn.Linear(8, 3)
    with autocast(torch.device("cpu"), "bf16"):
        assert layer(x).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert layer(x).dtype == torch.float32


@pytest.mark.slow
def test_bf16_embeddings_stay_close_to_fp32_and_are_deterministic():
    from animal_assets.core.embed import embed_images

    images = np.random.default_rng(0).integers(0, 256, size=(6, 64, 64, 3), dtype=np.uint8)
    kw = dict(image_size=64, batch_size=4, device="cpu", stages=True)
    fp32 = embed_images(images, precision="fp32", **kw)
    bf16 = embed_images(images, precision="bf16", **kw)
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    assert not np.array_equal(bf16, fp32)  # the bf16 path really ran
    a, b = (torch.nn.functional.normalize(torch.from_numpy(f), dim=1) for f in (fp32, bf16))
    assert float((a * b).sum(1).min()) > 0.99
    assert np.array_equal(bf16, embed_images(images, precision="bf16", **kw))
