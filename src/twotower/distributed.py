"""Cross-device in-batch negatives: gather every rank's item vectors, keeping the gradient.

Under DDP each rank holds ``B`` of the global batch's ``W * B`` examples. Scoring the
local users against the gathered ``[W * B, D]`` positives gives each user the same
negatives as one device with the whole batch. The gradient of a gathered slice
flows back to the rank that produced it, summed over every rank that used it; DDP
then averages the parameter gradients over ranks, which equals the gradient of the
mean loss over the global batch (tests/test_distributed.py checks it against one
process with batch ``W * B``).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; backward sums the gradients of all ranks and returns
    this rank's slice. Works on any backend (gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), local.shape[0]
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(local: torch.Tensor) -> torch.Tensor:
    """``[B, ...]`` on each of ``W`` ranks -> ``[W * B, ...]`` in rank order, differentiable.
    Every rank must pass the same shape. Without a process group: ``local`` itself."""
    return _GatherWithGrad.apply(local) if is_distributed() else local


def split_evenly(global_batch: int, world_size: int) -> int:
    """The per-rank batch of a global batch: the configured batch size is the global one."""
    if world_size < 1:
        raise ValueError(f"world size {world_size}: expected >= 1")
    if global_batch % world_size:
        raise ValueError(
            f"data.batch_size={global_batch} is the global batch and must divide evenly by the "
            f"number of processes ({world_size}: devices x nodes); use a multiple of {world_size}"
        )
    return global_batch // world_size


def configured_world_size(devices, num_nodes: int = 1) -> int | None:
    """The number of processes a Trainer config asks for, known before the Trainer
    exists: ``WORLD_SIZE`` when a launcher (torchrun, a re-launched rank) set it, else
    ``devices x num_nodes`` for an explicit device count or list; ``None`` for
    ``"auto"``/``-1`` (the Trainer decides; the batch split is checked again then)."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    if isinstance(devices, int) and devices > 0:
        return devices * num_nodes
    if isinstance(devices, (list, tuple)):
        return len(devices) * num_nodes
    return None


def is_main_process() -> bool:
    """Whether this process is global rank 0 (or not distributed): the one that writes
    the run's files. Read from the launcher's environment, so it holds before the
    Trainer exists (torchrun sets ``RANK``; Lightning's re-launched ranks ``LOCAL_RANK``
    and ``NODE_RANK``)."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"]) == 0
    return int(env.get("LOCAL_RANK", 0)) == 0 and int(env.get("NODE_RANK", 0)) == 0


def relaunches_command(strategy) -> bool:
    """Whether a strategy runs the whole command again once per rank (plain ``ddp``
    with Lightning's launcher, or any rank started by torchrun); ``ddp_spawn``
    starts workers inside the running process instead."""
    name = strategy if isinstance(strategy, str) else type(strategy).__name__.lower()
    launched_by_torchrun = "TORCHELASTIC_RUN_ID" in os.environ
    return launched_by_torchrun or (name.startswith("ddp") and "spawn" not in name and "notebook" not in name)
