"""Numeric precision of the network passes: float32, or bfloat16 autocast where it pays.

Importing this module is cheap (PyTorch is imported when a precision is resolved), so the
command line can offer its choices before anything heavy loads.

``"auto"`` picks bf16 on CUDA devices that support it and on CPUs with bf16 arithmetic in
hardware: AMX bf16 tiles (Intel Sapphire Rapids and later) or AVX-512 BF16 (AMD Zen 4 and
later, Intel Cooper Lake), where oneDNN runs bf16 convolutions natively. Anywhere else (older
CPUs, a CPU whose flags cannot be read) it keeps float32, because bf16 there is emulated and
slower. The figures behind that rule are in benchmarks/RESULTS.md.

The CPU flags come from ``/proc/cpuinfo`` (Linux); elsewhere ``"auto"`` keeps float32 on the CPU.
"""
from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS = ("auto", "fp32", "bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of this machine (empty when they cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16_arithmetic() -> bool:
    """True when the CPU computes bf16 products in hardware: AMX bf16 tiles (``amx_bf16`` and
    ``amx_tile`` flags) or AVX-512 BF16 (``avx512_bf16``)."""
    flags = cpu_flags()
    return ("amx_bf16" in flags and "amx_tile" in flags) or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """Turn ``"auto"``, ``"fp32"`` or ``"bf16"`` into ``"fp32"`` or ``"bf16"`` for ``device``.

    Parameters
    ----------
    precision : {"auto", "fp32", "bf16"}
        What was asked for. An explicit ``"bf16"`` is honoured on any device (slow where it is
        emulated, but it lets a user compare).
    device : torch.device or str
        Where the passes run (already resolved, e.g. ``cpu`` or ``cuda:0``).

    Returns
    -------
    str
        ``"fp32"`` or ``"bf16"``.

    Raises
    ------
    ValueError
        For any other name.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_bf16_arithmetic() else "fp32"
    return "fp32"


def autocast(device: torch.device, precision: str):
    """A bf16 autocast context on ``device`` for a resolved ``"bf16"``; a no-op for ``"fp32"``."""
    if precision == "bf16":
        import torch

        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
