"""Adam for towers whose embedding tables have sparse gradients.

With a catalogue of a million items, a dense gradient of the item-ID table is a
``[1M, D]`` tensor per step, nearly all zeros, and Adam then reads and writes
four such tensors: at 1M items that was half of a training step
(docs/BENCHMARKS.md). ``nn.Embedding(sparse=True)`` gives a gradient of the
batch's rows only; :class:`Adam` updates those rows with SparseAdam's lazy rule
and every other parameter with torch's Adam, in one optimizer (Lightning's
automatic optimization, learning-rate schedulers and checkpoints see one).
"""

from __future__ import annotations

import math

import torch


def lazy_adam_rows_(
    weight: torch.Tensor,
    rows: torch.Tensor,
    grad_rows: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float = 0.0,
) -> None:
    """One lazy Adam step on the ``rows`` of ``weight`` (in place), SparseAdam's rule.

    ``weight``, ``exp_avg``, ``exp_avg_sq``: ``[N, D]``; ``rows``: ``[R]`` distinct row
    indices; ``grad_rows``: ``[R, D]`` their gradients; ``step``: this parameter's step
    count, 1 at the first update. Only the given rows' moments decay: a row no batch
    touches keeps its state (the "lazy" part). ``weight_decay`` adds ``weight_decay *
    weight`` to the touched rows' gradients (torch's Adam adds it to every row).
    """
    if weight_decay:
        grad_rows = grad_rows.add(weight.index_select(0, rows), alpha=weight_decay)
    first = exp_avg.index_select(0, rows).lerp_(grad_rows, 1 - beta1)  # m + (1 - b1) (g - m)
    second = exp_avg_sq.index_select(0, rows).mul_(beta2).addcmul_(grad_rows, grad_rows, value=1 - beta2)
    exp_avg.index_copy_(0, rows, first)
    exp_avg_sq.index_copy_(0, rows, second)
    step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
    weight.index_add_(0, rows, first.div_(second.sqrt_().add_(eps)), alpha=-step_size)


class Adam(torch.optim.Adam):
    """torch's Adam (same arguments, same update of every dense gradient), except that a
    parameter whose gradient is sparse - an ``nn.Embedding(sparse=True)`` table - gets
    the lazy update of :func:`lazy_adam_rows_` on the rows the batch touched."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        sparse = [(group, p) for group in self.param_groups for p in group["params"]
                  if p.grad is not None and p.grad.is_sparse]  # fmt: skip
        # torch's Adam refuses sparse gradients; it steps over parameters without one.
        held = [p.grad for _, p in sparse]
        for _, p in sparse:
            p.grad = None
        super().step()
        for (group, p), grad in zip(sparse, held):
            p.grad = grad
            self._sparse_step(group, p, grad)
        return loss

    def _sparse_step(self, group: dict, param: torch.Tensor, grad: torch.Tensor) -> None:
        if group["amsgrad"] or group["maximize"] or group.get("decoupled_weight_decay"):
            raise ValueError(
                "sparse embedding gradients take the plain lazy Adam update: amsgrad, maximize and "
                "decoupled weight decay are not supported with model.net.sparse_embeddings=true"
            )
        grad = grad.coalesce()  # one entry per row: a batch can name a row several times
        if grad._nnz() == 0:
            return
        state = self.state[param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        lazy_adam_rows_(
            param, grad.indices()[0], grad.values(), state["exp_avg"], state["exp_avg_sq"], int(state["step"]),
            group["lr"], beta1, beta2, group["eps"], group["weight_decay"],
        )  # fmt: skip
