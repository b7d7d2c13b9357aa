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
