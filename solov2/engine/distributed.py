"""Process-group setup for torchrun launches, and the few collective helpers training needs.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/PORT); without them the run
is a single process and every helper is a no-op. CUDA runs use NCCL, CPU runs gloo.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized_here: bool = False  # this code created the process group (and destroys it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """The torch device for ``device``: "auto" or None picks CUDA when available; "cuda" under
    torchrun means this process's GPU. Raises ``RuntimeError`` for an unknown name or a CUDA
    device that PyTorch does not see, saying what is accepted."""
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise RuntimeError(f"unknown device {device!r}: use {DEVICE_CHOICES}") from None
    if dev.type not in ("cpu", "cuda"):
        raise RuntimeError(f"device {device!r} is not supported: use {DEVICE_CHOICES}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' asked for, but PyTorch sees no CUDA device")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


def init_distributed(device: str | None = None) -> DistributedContext:
    """Join the process group torchrun describes in the environment (if any)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistributedContext(0, 1, 0, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    created = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        supports_device_id = "device_id" in inspect.signature(dist.init_process_group).parameters
        kwargs = {"device_id": dev} if dev.type == "cuda" and supports_device_id else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
        created = True
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, created)


def cleanup(ctx: DistributedContext) -> None:
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: Tensor, ctx: DistributedContext) -> Tensor:
    """Sum over processes (a copy; the input is left alone)."""
    out = tensor.detach().clone()
    if ctx.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def barrier(ctx: DistributedContext) -> None:
    if ctx.distributed:
        dist.barrier()


def broadcast_flag(flag: bool, ctx: DistributedContext) -> bool:
    """True on every process if it is True on any."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
