"""Scores of a training batch's users with their positive and their negative columns:
inner products for a factorizing model, or the model's own pair scorer (early fusion).
Pure tensors."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from twotower.data.batches import TrainingBatch


def dot_pairs(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Row-wise inner products: ``[..., D], [..., D] -> [...]`` (broadcasting)."""
    return (users * items).sum(-1)


def dot_matrix(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """All inner products: ``[B, D], [C, D] -> [B, C]``."""
    return users @ items.T


def score_candidates(
    user_vecs: torch.Tensor,
    pos_vecs: torch.Tensor,
    extra_vecs: torch.Tensor | None,
    in_batch_vecs: torch.Tensor | None,
    score_pairs=dot_pairs,
    score_matrix=dot_matrix,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scores of each user with its positive and its negative columns.

    ``user_vecs``, ``pos_vecs``: ``[B, D]``; ``extra_vecs``: ``[M, D]`` shared,
    ``[B, n, D]`` per example, or ``None``; ``in_batch_vecs``: the in-batch columns
    ``[B', D]`` (the batch's positives, or under DDP every rank's) or ``None``. Returns ``pos [B]`` and
    ``neg [B, C]`` (``None`` when there are no negatives). The score is the
    inner product unless a model gives its own ``score_pairs`` / ``score_matrix``
    (a model that cannot factorize scores every pair with a network).
    """
    pos = score_pairs(user_vecs, pos_vecs)
    parts = []
    if in_batch_vecs is not None:
        parts.append(score_matrix(user_vecs, in_batch_vecs))
    if extra_vecs is not None:
        if extra_vecs.dim() == user_vecs.dim():  # shared by the batch
            parts.append(score_matrix(user_vecs, extra_vecs))
        else:  # one row of negatives per example
            parts.append(score_pairs(user_vecs[:, None, :].expand(-1, extra_vecs.shape[1], -1), extra_vecs))
    return pos, (torch.cat(parts, dim=1) if parts else None)


def score_batch(
    model, batch: TrainingBatch, gather: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(pos [B], neg [B, C] or None, walk [B] or None)``: a training batch through the model's
    towers, each user scored with its positive, its negative columns and its walk label (when
    the batch has them). ``gather``: under DDP with cross-device negatives, ``[B, D]`` positives
    -> every rank's ``[W * B, D]`` (with gradients)."""
    users = model.encode_users(batch.user)
    positives = model.encode_items(batch.pos)
    extra = None
    if batch.extra is not None:
        # Each distinct sampled item was encoded once; extra_inverse puts them back in column order.
        extra = model.encode_items(batch.extra).index_select(0, batch.extra_inverse)
        if batch.extra_per_example:
            extra = extra.view(len(users), -1, extra.shape[-1])
    in_batch = None
    if batch.in_batch:
        if batch.cross_device and gather is None:
            raise ValueError("a batch with cross-device negatives needs gather (the other ranks' positives)")
        in_batch = gather(positives) if batch.cross_device else positives
    pos, neg = score_candidates(users, positives, extra, in_batch, model.score_pairs, model.score_matrix)
    walk = None if batch.walk is None else model.score_pairs(users, model.encode_items(batch.walk))
    return pos, neg, walk


@torch.no_grad()
def encode_catalogue(model, chunks: Iterable[dict[str, torch.Tensor]], device: torch.device) -> torch.Tensor:
    """``[N, D]`` vectors of every item, from the catalogue's features in chunks (the
    DataModule's ``item_chunks()``): what evaluation ranks and the miner searches."""
    return torch.cat([model.encode_items({k: v.to(device) for k, v in features.items()}) for features in chunks])
