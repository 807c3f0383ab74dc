"""Training and evaluation across processes (``torchrun``): gloo on CPU, NCCL on GPU.

``torchrun --nproc-per-node N -m diffrec.cli.main train ...`` (or ``diffrec train`` under any
launcher that sets ``RANK``/``WORLD_SIZE``) runs data-parallel training:

- every rank builds the same model from the same seed and walks the same shuffled batches;
  each rank trains a disjoint shard of every global batch (rows ``rank::world``), so the
  global batch is ``batch_size`` whatever the world size;
- gradients are summed across ranks weighted by each shard's share of the global batch, so
  every rank takes the same optimiser step (the gradient of the global batch's mean loss)
  and the replicas stay identical; dropout and noise differ per rank (seed + rank);
- evaluation is sharded over batches of users and the metric sums are added exactly across
  ranks; each batch's reverse process is seeded by its index (``eval.rng = per_batch``, set
  under torchrun), so any world size, one included, gives the same numbers;
- rank 0 alone writes checkpoints, logs and progress; the run records its world size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from diffrec.data.batching import Batch
from diffrec.errors import DiffrecError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def world_from_env(device_type: str = "cpu") -> World:
    """The world ``torchrun`` describes in the environment (one process when it describes none)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    import torch.distributed as dist

    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_available():
        raise DiffrecError("this PyTorch build has no torch.distributed")
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend=backend)
        except (RuntimeError, ValueError) as exc:
            raise DiffrecError(f"cannot join the process group ({backend}): {str(exc).splitlines()[0][:200]}") from None
    return World(rank, size, local)


def shard(batch: Batch, world: World) -> Batch:
    """Rows ``rank::size`` of a global batch."""
    rows = slice(world.rank, None, world.size)
    nxt = None if batch.next_items is None else batch.next_items[rows]
    return Batch(batch.seq[rows], batch.target[rows], batch.pad_extra[rows], batch.users[rows], nxt)


def all_sum(values: torch.Tensor, world: World) -> torch.Tensor:
    """The element-wise sum over ranks (the values themselves in one process)."""
    if not world.distributed:
        return values
    import torch.distributed as dist

    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def average_gradients(parameters: list[torch.nn.Parameter], share: float, world: World) -> None:
    """Replace every gradient by the sum over ranks of ``share`` times the local gradient."""
    if not world.distributed:
        return
    import torch.distributed as dist

    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.mul_(share)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def barrier(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(obj: object, world: World) -> object:
    """Rank 0's ``obj`` on every rank (an exception message travels the same way)."""
    if not world.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: object, world: World) -> list[object]:
    """Every process's ``obj``, in rank order (``[obj]`` in one process)."""
    if not world.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[object] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out
