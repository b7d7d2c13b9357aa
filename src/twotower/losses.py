"""Training losses: pure functions of a batch's similarity scores, mean-reduced
(so their scale does not depend on the batch size).

Every loss takes a :class:`ScoredBatch`. The config group ``loss`` chooses one
of the small classes at the end of this file, which bind hyper-parameters to
the functions and say what the loss needs from the sampler.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from twotower.candidates import mask_value


@dataclass
class ScoredBatch:
    """Similarities for one batch of ``B`` examples.

    ``pos``: ``[B]`` score of each user with its positive item.
    ``neg``: ``[B, C]`` scores with the negative columns, or ``None``.
    ``neg_valid``: ``[B, C]`` bool, False where a column is not a negative of that row.
    ``pos_logq`` ``[B]`` / ``neg_logq`` ``[B, C]``: log sampling probabilities to subtract
    from the logits (logQ correction), or ``None``.
    ``rating``: ``[B]`` observed ratings (for ``mse``), or ``None``.
    """

    pos: torch.Tensor
    neg: torch.Tensor | None = None
    neg_valid: torch.Tensor | None = None
    pos_logq: torch.Tensor | None = None
    neg_logq: torch.Tensor | None = None
    rating: torch.Tensor | None = None


def corrected_logits(batch: ScoredBatch, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``s / tau - log q`` for the positive ``[B]`` and the negatives ``[B, C]``
    (invalid negatives set to a large finite negative)."""
    pos = batch.pos / temperature
    neg = batch.neg / temperature
    if batch.pos_logq is not None:
        pos = pos - batch.pos_logq
    if batch.neg_logq is not None:
        neg = neg - batch.neg_logq
    if batch.neg_valid is not None:
        neg = neg.masked_fill(~batch.neg_valid, mask_value(neg.dtype))
    return pos, neg


def listwise_softmax_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy with the positive as the label:
    ``-log( exp(pos) / (exp(pos) + sum_j exp(neg_j)) )``, mean over the batch.
    ``pos_logits``: ``[B]``; ``neg_logits``: ``[B, C]`` (masked columns already
    at a large negative value)."""
    logits = torch.cat([pos_logits[:, None], neg_logits], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def squared_error_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of ``(pred - target) ** 2``; ``[B], [B] -> []``."""
    return ((pred - target) ** 2).mean()


@dataclass
class ListwiseLoss:
    """Listwise training: softmax over one positive and its negatives, temperature ``tau``."""

    temperature: float = 0.05
    needs_negatives = True
    trains_on = "positives"

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"loss.temperature={self.temperature}: expected > 0")

    def __call__(self, batch: ScoredBatch) -> torch.Tensor:
        return listwise_softmax_loss(*corrected_logits(batch, self.temperature))


@dataclass
class MSELoss:
    """The matrix-completion baseline: regress the inner product onto observed ratings."""

    needs_negatives = False
    trains_on = "ratings"

    def __call__(self, batch: ScoredBatch) -> torch.Tensor:
        return squared_error_loss(batch.pos, batch.rating)
