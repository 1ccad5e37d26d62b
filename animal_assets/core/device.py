"""The compute device: ``"auto"`` resolved once, the same way for every stage."""
from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a usable ``torch.device``.

    ``"auto"`` is CUDA when a GPU is visible, else the CPU; a ``torch.device`` passes through.

    Raises
    ------
    TypeError
        When ``device`` is neither a str nor a ``torch.device``.
    ValueError
        For any other name, or when CUDA (or that CUDA device) is asked for and not available.
    """
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was requested but CUDA is not available; "
                             "use 'auto' or 'cpu'")
        resolved = torch.device(device)
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist "
                             f"({torch.cuda.device_count()} CUDA device(s))")
        return resolved
    raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
