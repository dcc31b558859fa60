"""ZeroGPU on Hugging Face Spaces: a GPU is lent to a decorated call for at most its declared
duration, in a process forked for it; outside such calls there is no GPU.

- Answering (/predict, the deletion curve) is one short call: its handler is decorated with
  ``spaces.GPU(duration=...)`` when the ``spaces`` package is installed (Spaces installs it; the
  decorator does nothing off ZeroGPU). It is not a dependency of mmdemo.
- Fine-tuning runs for minutes, past any call's cap, in the job worker (a program of its own that
  never holds the lent GPU), so on ZeroGPU it runs on the CPU there: ``finetune_device``.
"""

from __future__ import annotations

import os

PREDICT_GPU_SECONDS = 30  # one answer takes well under a second on a GPU; a short cap queues first


def on_zero_gpu() -> bool:
    """Whether this process runs on a ZeroGPU Space (what the ``spaces`` package itself reads)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def gpu(duration: int = PREDICT_GPU_SECONDS):
    """Decorator: the function gets a ZeroGPU GPU for each call (at most ``duration`` seconds)
    where the ``spaces`` package is installed; unchanged elsewhere."""
    try:
        import spaces
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


def finetune_device() -> str | None:
    """The device of a fine-tune job started from the app: the CPU on ZeroGPU (see above), else
    None (the best available)."""
    return "cpu" if on_zero_gpu() else None
