"""Data-parallel training with torch.distributed (DDP), launched by ``torchrun``.

``torchrun --nproc_per_node=N -m reference train ...`` starts N processes and gives each one
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``. Each process holds
a full copy of the model, takes its own slice of every global batch (see ``data.get_batch``), and
DDP averages the gradients across processes during ``backward()``, so every copy takes the same
optimizer step: the result equals one process training on the combined batch. The backend is
gloo on CPU and NCCL on CUDA (one GPU per process).

``train.strategy=fsdp`` shards the model instead of copying it (``reference/trainer/fsdp.py``);
it joins the process group even for one process (``torchrun --nproc_per_node=1``), since its
sharded tensors live in one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and samples."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device_type: str, *, always: bool = False) -> DistInfo:
    """Join the process group when started by torchrun; a single process otherwise.

    ``device_type`` is ``"cuda"`` (NCCL; this process uses GPU ``LOCAL_RANK``) or ``"cpu"``
    (gloo). A job of one process joins a group of one only when ``always`` (FSDP needs one).
    """
    if not launched_by_torchrun():
        return DistInfo()
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        local_rank=int(os.environ.get("LOCAL_RANK", os.environ["RANK"])),
        world_size=int(os.environ["WORLD_SIZE"]),
    )
    if not info.enabled and not always:
        return info
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
        backend = "nccl"
    elif device_type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"distributed training supports cpu (gloo) and cuda (nccl), "
                         f"not {device_type!r}")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return info


def device_for(info: DistInfo, device_type: str) -> torch.device:
    """The device this process trains on: its own GPU under torchrun on CUDA."""
    if device_type == "cuda":
        index = info.local_rank if info.enabled else torch.cuda.current_device()
        return torch.device("cuda", index)
    return torch.device(device_type)


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def broadcast_flag(info: DistInfo, flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (e.g. "stop now"), so all ranks take the same branch."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def broadcast_object(info: DistInfo, obj: object) -> object:
    """Rank 0's ``obj`` (any picklable value) on every rank, e.g. rank 0's decision."""
    if not info.enabled:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_reduce_mean(value: float, info: DistInfo, device: torch.device) -> float:
    """The mean of ``value`` over all ranks (e.g. a validation loss)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / info.world_size


def cleanup(info: DistInfo) -> None:
    if (info.enabled or launched_by_torchrun()) and dist.is_initialized():
        dist.destroy_process_group()
