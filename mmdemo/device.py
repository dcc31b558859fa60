"""Device choice: CUDA when there is one (with bf16/fp16 autocast), the CPU otherwise."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str | None = None) -> torch.device:
    """``None``/"auto": CUDA when available, else CPU; otherwise the named device."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def autocast(device: torch.device):
    """bf16 autocast on GPUs that have it, fp16 on older ones; nothing on CPU (fp32 is faster there)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)
