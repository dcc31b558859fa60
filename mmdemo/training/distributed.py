"""Data-parallel training over several processes (``torchrun``): who is who, and the few
collective operations the training engine needs.

``torchrun --nproc_per_node N -m mmdemo train ...`` starts N copies of the command with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT`` set.
``setup(device)`` joins them into one process group (gloo on CPUs, NCCL on GPUs, one GPU per
process) and returns a ``Context``; without those variables it returns a one-process context
whose operations do nothing, so the training loop reads the same either way.

The rules the engine follows (loop.py):
- every process draws the same global batches (same seed) and takes its contiguous share of
  each; the per-process batch size is ``--batch-size``, the global batch ``world_size`` times
  it, so an epoch takes ``1 / world_size`` of the optimizer steps of one process;
- the frozen encoders' cache is built in shares (each process decodes and encodes
  ``1 / world_size`` of the images and texts) and then gathered, so every process holds it all;
- decisions (stop for the time limit, a stop request, early stopping) are taken on rank 0
  and broadcast, so all processes leave a loop at the same step;
- only rank 0 writes (checkpoints, resume state, records, progress).

A process that dies makes torchrun stop the others; without torchrun, every collective
operation gives up after ``MMDEMO_DIST_TIMEOUT_S`` seconds (default 600) instead of waiting
forever for a peer that is gone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ..device import cores_per_process, env_local_world_size

DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None  # "gloo" or "nccl"; None for one process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """In a process group (``torchrun --nproc_per_node 1`` too: DDP with one process)."""
        return self.backend is not None

    def share(self, n: int) -> tuple[int, int]:
        """This process's contiguous share [lo, hi) of n items (shares differ by at most one)."""
        return n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size

    def agree(self, decide: Callable[[], bool]) -> bool:
        """``decide()`` on rank 0, the same answer on every process."""
        if not self.distributed:
            return bool(decide())
        flag = torch.tensor([int(bool(decide())) if self.is_main else 0], device=self._comm_device())
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the processes (float64)."""
        if not self.distributed:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(total)
        return total.tolist()

    def map_concat(self, n: int, compute: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
        """``compute(lo, hi)`` gives the rows for items lo..hi-1 of n; each process computes its
        share and every process gets the rows of all n items, in item order (on the CPU)."""
        if not self.distributed or n == 0:
            return compute(0, n)
        lo, hi = self.share(n)
        part = compute(lo, hi) if hi > lo else None
        return self._all_gather_cat(part)

    def _all_gather_cat(self, part: torch.Tensor | None) -> torch.Tensor:
        # the shares differ in length (and a process may have none), so the shapes go first,
        # then every share padded to the longest
        meta = None if part is None else (tuple(part.shape), str(part.dtype).removeprefix("torch."))
        metas: list = [None] * self.world_size
        dist.all_gather_object(metas, meta)
        shape, dtype = next(m for m in metas if m is not None)
        dtype = getattr(torch, dtype)
        longest = max(m[0][0] for m in metas if m is not None)
        device = self._comm_device()
        padded = torch.zeros((longest, *shape[1:]), dtype=dtype, device=device)
        if part is not None:
            padded[: len(part)] = part.to(device)
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded)
        return torch.cat([g[: m[0][0]] for g, m in zip(gathered, metas) if m is not None]).cpu()

    def wrap(self, module: nn.Module, ignore: list[str] | tuple[str, ...] = ()) -> nn.Module:
        """``module`` in DistributedDataParallel (gradients averaged over the processes in the
        backward pass); itself for one process. Wrap again after changing which parameters
        train: DDP syncs those that required gradients when it was built. ``ignore`` names
        parameters and buffers DDP leaves alone (frozen encoders: the same on every process,
        so not broadcast at every wrap and step)."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        if ignore:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, list(ignore))

        # device_ids=None: inputs stay where the caller put them (the engine moves its own
        # tensors); unused parameters happen (the missing-image token when no image is dropped)
        return DistributedDataParallel(module, device_ids=None, find_unused_parameters=True)

    def cpu_threads(self, requested: int | None) -> int | None:
        """Torch threads for each of this machine's processes on a CPU: never more than the
        cores divided among them (threads that contend for cores slow every process down)."""
        if not self.distributed:
            return requested
        fair = cores_per_process(self.local_world_size)
        return min(requested or fair, fair)

    def _comm_device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


SINGLE = Context()


def setup(device: torch.device) -> tuple[Context, torch.device]:
    """Join the torchrun process group (once per process) and return this process's context and
    device: on CUDA each process gets its own GPU (``cuda:LOCAL_RANK``) and NCCL, on a CPU gloo."""
    if "WORLD_SIZE" not in os.environ and not dist.is_initialized():
        return SINGLE, device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get("MMDEMO_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S)))
        dist.init_process_group(backend, timeout=timeout)
    elif dist.get_backend() != backend:
        raise RuntimeError(f"the process group uses {dist.get_backend()}, training on {device} needs {backend}")
    context = Context(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        local_world_size=env_local_world_size(),
        backend=backend,
    )
    return context, device


def teardown() -> None:
    """Leave the process group (at the end of a command, also after a failed collective
    operation: a broken gloo group left for the interpreter's exit to destroy aborts the
    process, "terminate called without an active exception", instead of letting it exit with
    its own code)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
