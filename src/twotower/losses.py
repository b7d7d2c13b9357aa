"""Training losses: pure functions of a batch's similarity scores, mean-reduced
(so their scale does not depend on the batch size).

Every loss takes a :class:`ScoredBatch`. The config group ``loss`` chooses one
of the small classes at the end of this file, which bind hyper-parameters to
the functions and say what the loss needs from the sampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from twotower.example_weights import weighted_mean


def mask_value(dtype: torch.dtype) -> float:
    """A large finite negative for masked logits: ``-inf`` would make a row
    whose every candidate is masked produce NaN in a softmax."""
    return torch.finfo(dtype).min / 100


def logit_bias(
    valid: torch.Tensor | None, neg_logq: torch.Tensor | None, pos_column: torch.Tensor | None = None
) -> torch.Tensor | None:
    """What is added to each negative column's logit, ``[B, C]``: ``-log q`` (0 without a logQ
    correction) where the column is a valid negative, :func:`mask_value` where it is not,
    except each user's own positive's column ``pos_column`` ``[B]`` (in-batch), which keeps
    its ``-log q`` so that a softmax can take it as the label. One pass over ``[B, C]``
    where a subtraction and a masking pass, and their gradients, were.
    ``None`` when there is neither a mask nor a correction."""
    if valid is None and neg_logq is None:
        return None
    if neg_logq is None:
        correction = 0.0
    elif neg_logq.dim() == 2 and neg_logq.stride(0) == 0:
        correction = -neg_logq[:1]  # one row expanded to all (in-batch): negate it once, broadcast
    else:
        correction = -neg_logq
    if valid is None:
        return correction.expand(neg_logq.shape).contiguous()
    if pos_column is not None:
        valid = valid.clone()
        valid[torch.arange(len(valid), device=valid.device), pos_column] = True
    return torch.where(valid, correction, mask_value(torch.float32))


def keep_hardest(scores: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """Online hard-negative mining: of each row's valid negatives keep the ``k``
    highest-scoring ones. ``scores``, ``valid``: ``[B, C]`` -> ``valid`` ``[B, C]``
    with at most ``k`` True per row (fewer where a row has fewer valid ones)."""
    if k >= scores.shape[1]:
        return valid
    ranked = scores.detach().masked_fill(~valid, float("-inf"))
    top = ranked.topk(k, dim=1).indices
    keep = torch.zeros_like(valid)
    keep.scatter_(1, top, True)
    return keep & valid


@dataclass
class ScoredBatch:
    """Similarities for one batch of ``B`` examples.

    ``pos``: ``[B]`` score of each user with its positive item.
    ``neg``: ``[B, C]`` scores with the negative columns, or ``None``.
    ``neg_valid``: ``[B, C]`` bool, False where a column is not a negative of that row.
    ``pos_logq`` ``[B]`` / ``neg_logq`` ``[B, C]``: log sampling probabilities to subtract
    from the logits (logQ correction), or ``None``.
    ``pos_column``: ``[B]`` long, the column of ``neg`` that is the user's own positive
    (in-batch negatives: a valid=False column), or ``None``.
    ``rating``: ``[B]`` observed ratings (for ``mse``), or ``None``.
    ``weight``: ``[B]`` each example's weight in the batch's mean (``user_weight_exponent``),
    or ``None`` for the plain mean.
    ``walk`` ``[B]``: the score of each user with its walk label (``walk_label_weight``), or
    ``None``; ``walk_logq`` ``[B]`` that label's ``log q`` (as ``pos_logq``), ``walk_same``
    ``[B]`` True where the label is the positive itself.
    """

    pos: torch.Tensor
    neg: torch.Tensor | None = None
    neg_valid: torch.Tensor | None = None
    pos_logq: torch.Tensor | None = None
    neg_logq: torch.Tensor | None = None
    rating: torch.Tensor | None = None
    pos_column: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    walk: torch.Tensor | None = None
    walk_logq: torch.Tensor | None = None
    walk_same: torch.Tensor | None = None


def corrected_logits(batch: ScoredBatch, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``s / tau - log q`` for the positive ``[B]`` and the negatives ``[B, C]``
    (invalid negatives set to a large finite negative; the positive's own column, when
    ``pos_column`` names one, equal to the positive's logit)."""
    pos = batch.pos / temperature
    if batch.pos_logq is not None:
        pos = pos - batch.pos_logq
    bias = logit_bias(batch.neg_valid, batch.neg_logq, batch.pos_column)
    if bias is None:
        neg = batch.neg / temperature
    elif 1 / temperature <= torch.finfo(batch.neg.dtype).max:
        neg = torch.add(bias, batch.neg, alpha=1 / temperature)  # one pass over [B, C]
    else:  # 1 / tau overflows the dtype, and so do the logits: the training guard reports it
        neg = batch.neg / temperature + bias
    return pos, neg


def listwise_softmax_loss(
    pos_logits: torch.Tensor, neg_logits: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Softmax cross-entropy with the positive as the label:
    ``-log( exp(pos) / (exp(pos) + sum_j exp(neg_j)) )``, mean over the batch (weighted by
    ``weight`` ``[B]`` when given). ``pos_logits``: ``[B]``; ``neg_logits``: ``[B, C]``
    (masked columns already at a large negative value)."""
    return weighted_mean(F.cross_entropy(*positive_first(pos_logits, neg_logits), reduction="none"), weight)


def positive_first(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [B, 1 + C], labels [B])``: the positive's logit ``[B]`` as column 0 before the
    negatives' ``[B, C]``, and 0, its column, as every row's label."""
    logits = torch.cat([pos_logits[:, None], neg_logits], dim=1)
    return logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device)


def with_walk_label(
    label_terms: torch.Tensor, logits: torch.Tensor, walk_logits: torch.Tensor, walk_same: torch.Tensor, share: float
) -> torch.Tensor:
    """Each row's loss with a second, softer label: ``(1 - a) * CE(label) + a * CE(walk)``, where
    ``CE(walk) = -log( exp(w) / (exp(w) + sum_c exp(logit_c)) )``: the walk's end ``w`` scored
    against the row's own columns (the label among them), so it is pulled up only as far as the
    columns let it, never without bound. Where the walk ended at the label itself
    (``walk_same``), both terms are ``CE(label)``. ``label_terms``: ``[B]`` ``CE(label)``;
    ``logits``: ``[B, C]`` every column of the row's softmax; ``walk_logits``: ``[B]``."""
    walk_terms = torch.logaddexp(torch.logsumexp(logits, dim=1), walk_logits) - walk_logits
    return (1 - share) * label_terms + share * torch.where(walk_same, label_terms, walk_terms)


def squared_error_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of ``(pred - target) ** 2``; ``[B], [B] -> []``."""
    return ((pred - target) ** 2).mean()


def all_valid(neg: torch.Tensor, neg_valid: torch.Tensor | None) -> torch.Tensor:
    """``neg_valid``, or an all-True ``[B, C]`` mask when there is none."""
    return torch.ones_like(neg, dtype=torch.bool) if neg_valid is None else neg_valid


def select_negatives(neg_valid: torch.Tensor, k: int) -> torch.Tensor:
    """At most ``k`` valid columns per row, chosen uniformly at random among the
    valid ones (all of them when a row has ``<= k``); ``[B, C]`` bool -> ``[B, C]`` bool.
    Random scores on the mask's device, top-``k`` over the valid columns."""
    k = min(k, neg_valid.shape[1])
    if k == 0:
        return torch.zeros_like(neg_valid)
    scores = torch.rand(neg_valid.shape, device=neg_valid.device).masked_fill(~neg_valid, -1.0)
    chosen = torch.zeros_like(neg_valid).scatter_(1, scores.topk(k, dim=1).indices, True)
    return chosen & neg_valid  # a row with fewer than k valid columns picked some invalid ones


def pointwise_bce_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor, neg_mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, positives labelled 1, negatives 0:
    ``(sum_b softplus(-pos_b) + sum_{b,j: mask} softplus(neg_bj)) / (B + #mask)``,
    the mean over every (row, label) term that enters.
    ``pos_logits``: ``[B]``; ``neg_logits``: ``[B, C]``; ``neg_mask``: ``[B, C]`` bool,
    True for the negative columns that enter (the others contribute nothing)."""
    pos_terms = F.binary_cross_entropy_with_logits(pos_logits, torch.ones_like(pos_logits), reduction="none")
    neg_terms = F.binary_cross_entropy_with_logits(neg_logits, torch.zeros_like(neg_logits), reduction="none")
    neg_terms = torch.where(neg_mask, neg_terms, torch.zeros_like(neg_terms))
    return (pos_terms.sum() + neg_terms.sum()) / (len(pos_logits) + neg_mask.sum())


def masked_pair_mean(terms: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``terms`` ``[B, C]`` over the True entries of ``valid`` ``[B, C]``; 0 (with
    zero gradients, never NaN) when there are none."""
    terms = torch.where(valid, terms, torch.zeros_like(terms))
    return terms.sum() / valid.sum().clamp_min(1)


def pairwise_hinge_loss(pos: torch.Tensor, neg: torch.Tensor, neg_valid: torch.Tensor, margin: float) -> torch.Tensor:
    """Triplet hinge ``max(0, s(a, b-) + m - s(a, b+))``, mean over the valid (row, negative)
    pairs. ``pos``: ``[B]``; ``neg``, ``neg_valid``: ``[B, C]``; raw scores."""
    return masked_pair_mean(F.relu(neg - pos[:, None] + margin), neg_valid)


def pairwise_logistic_loss(pos: torch.Tensor, neg: torch.Tensor, neg_valid: torch.Tensor, sigma: float) -> torch.Tensor:
    """Triplet logistic ``log(1 + exp(sigma (s(a, b-) - s(a, b+))))`` (as a softplus), mean
    over the valid (row, negative) pairs. ``pos``: ``[B]``; ``neg``, ``neg_valid``: ``[B, C]``; raw scores."""
    return masked_pair_mean(F.softplus(sigma * (neg - pos[:, None])), neg_valid)


def cosine_contrastive_loss(
    pos: torch.Tensor,
    neg: torch.Tensor,
    neg_valid: torch.Tensor,
    margin: float,
    negative_weight: float,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The cosine contrastive loss of SimpleX (Mao et al., CIKM 2021): per row
    ``(1 - s+) + w * mean_j max(0, s_j - m)`` over the row's valid negatives, mean over rows.
    Negatives below the margin cost nothing, so the many easy ones do not drown the few
    hard ones; ``w`` balances the two terms. ``pos``: ``[B]``; ``neg``, ``neg_valid``:
    ``[B, C]``; raw cosines; ``weight``: ``[B]`` the rows' weights in the mean, or ``None``.
    A row without a valid negative keeps its positive term."""
    hinge = torch.where(neg_valid, F.relu(neg - margin), torch.zeros_like(neg))
    per_row = hinge.sum(dim=1) / neg_valid.sum(dim=1).clamp_min(1)
    return weighted_mean((1 - pos) + negative_weight * per_row, weight)


def _check_number(key: str, value, strict: bool) -> None:
    """Refuse a loss parameter that is not a finite number ``> 0`` (``strict``) or ``>= 0``."""
    bound = "> 0" if strict else ">= 0"
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not is_number or value < 0 or (strict and value == 0):
        raise ValueError(f"{key}={value!r}: expected {bound} (a finite number)")


@dataclass
class ListwiseLoss:
    """Listwise training: softmax over one positive and its negatives, temperature ``tau``;
    each example weighted by its user's training count to the power ``-user_weight_exponent``
    (:mod:`twotower.example_weights`; 0: every example alike); a share ``walk_label_weight`` of
    each example's label given to where a two-step walk from its positive ended
    (:func:`with_walk_label`, :mod:`twotower.graph_walk`; 0: none)."""

    temperature: float = 0.2
    user_weight_exponent: float = 0.0
    walk_label_weight: float = 0.0
    needs_negatives = True
    trains_on = "positives"

    def __post_init__(self) -> None:
        _check_number("loss.temperature", self.temperature, strict=True)
        _check_number("loss.user_weight_exponent", self.user_weight_exponent, strict=False)
        _check_number("loss.walk_label_weight", self.walk_label_weight, strict=False)
        if self.walk_label_weight >= 1:
            raise ValueError(f"loss.walk_label_weight={self.walk_label_weight!r}: expected a share in [0, 1)")

    def __call__(self, batch: ScoredBatch) -> torch.Tensor:
        pos, neg = corrected_logits(batch, self.temperature)
        if batch.pos_column is not None:
            # The positive is one of the columns (in-batch): the same softmax with it as the
            # label, without concatenating a separate positive column to [B, C].
            logits, labels = neg, batch.pos_column
        else:
            logits, labels = positive_first(pos, neg)
        terms = F.cross_entropy(logits, labels, reduction="none")
        if self.walk_label_weight and batch.walk is not None:
            walk = batch.walk / self.temperature
            if batch.walk_logq is not None:
                walk = walk - batch.walk_logq
            terms = with_walk_label(terms, logits, walk, batch.walk_same, self.walk_label_weight)
        return weighted_mean(terms, batch.weight)


@dataclass
class PointwiseLoss:
    """Pointwise training: binary cross-entropy on ``s / tau - log q``, each positive
    with at most ``negatives_per_positive`` of its valid negatives, drawn at random."""

    temperature: float = 0.2
    negatives_per_positive: int = 3
    needs_negatives = True
    trains_on = "positives"

    def __post_init__(self) -> None:
        _check_number("loss.temperature", self.temperature, strict=True)
        k = self.negatives_per_positive
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"loss.negatives_per_positive={k}: expected an integer >= 1")

    def __call__(self, batch: ScoredBatch) -> torch.Tensor:
        pos, neg = corrected_logits(batch, self.temperature)
        chosen = select_negatives(all_valid(neg, batch.neg_valid), self.negatives_per_positive)
        return pointwise_bce_loss(pos, neg, chosen)


@dataclass
class PairwiseHingeLoss:
    """Pairwise training on triplets: hinge with margin ``m`` on raw scores."""

    margin: float = 0.5
    needs_negatives = True
    trains_on = "positives"

    def __post_init__(self) -> None:
        _check_number("loss.margin", self.margin, strict=False)

    def __call__(self, batch: ScoredBatch) -> torch.Tensor:
        return pairwise_hinge_loss(batch.pos, batch.neg, all_valid(batch.neg, batch.neg_valid), self.margin)


@dataclass
class PairwiseLogisticLoss:
    """Pairwise training on triplets: logistic loss with slope ``sigma`` on raw scores."""

    sigma: float = 5.0
    needs_negatives = True
    trains_on = "positives"

    def __post_init__(self) -> None:
        _check_number("loss.sigma", self.sigma, strict=True)

    def __call__(self, batch: ScoredBatch) -> torch.Tensor:
        return pairwise_logistic_loss(batch.pos, batch.neg, all_valid(batch.neg, batch.neg_valid), self.sigma)


@dataclass
class CosineContrastiveLoss:
    """SimpleX's cosine contrastive loss on raw cosines: pull the positive to 1, push each
    negative below ``margin``, the negative term weighted by ``negative_weight``."""

    margin: float = 0.9
    negative_weight: float = 150.0
    user_weight_exponent: float = 0.0  # as ListwiseLoss's
    needs_negatives = True
    trains_on = "positives"

    def __post_init__(self) -> None:
        _check_number("loss.user_weight_exponent", self.user_weight_exponent, strict=False)
        if not (isinstance(self.margin, (int, float)) and not isinstance(self.margin, bool) and -1 <= self.margin <= 1):
            raise ValueError(f"loss.margin={self.margin!r}: expected a cosine in [-1, 1]")
        _check_number("loss.negative_weight", self.negative_weight, strict=True)

    def __call__(self, batch: ScoredBatch) -> torch.Tensor:
        valid = all_valid(batch.neg, batch.neg_valid)
        return cosine_contrastive_loss(batch.pos, batch.neg, valid, self.margin, self.negative_weight, batch.weight)


@dataclass
class MSELoss:
    """The matrix-completion baseline: regress the inner product onto observed ratings."""

    needs_negatives = False
    trains_on = "ratings"

    def __call__(self, batch: ScoredBatch) -> torch.Tensor:
        return squared_error_loss(batch.pos, batch.rating)
