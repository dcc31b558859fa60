"""Device choice: CUDA when there is one (with bf16/fp16 autocast), the CPU otherwise; and how
many processes torchrun started here (its environment variables), to share the cores among them."""

from __future__ import annotations

import contextlib
import os

import torch


def resolve_device(name: str | None = None) -> torch.device:
    """``None``/"auto": CUDA when available, else CPU; otherwise the named device."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
    return device


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def autocast(device: torch.device, dtype: str | None = None):
    """bf16 autocast on GPUs that have it, fp16 on older ones; nothing on CPU (fp32 is faster there).
    ``dtype`` ("bf16", "fp16", "fp32") overrides the choice on a GPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    if dtype is not None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if DTYPES[dtype] is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=DTYPES[dtype])
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def env_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def env_local_world_size() -> int:
    """The number of processes torchrun started on this machine (1 without torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


def cores_per_process(local_world_size: int) -> int:
    """This machine's cores divided among its ``local_world_size`` processes (at least one)."""
    return max(1, (os.cpu_count() or 1) // local_world_size)
