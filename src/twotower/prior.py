"""The popularity prior added to a two-tower model's scores when it ranks (evaluation, export,
serving), never while it trains.

Why: training with the logQ correction removes the items' popularity from what the towers
learn (their scores estimate how much more likely an item is for this user than overall), which
is right for warm users but leaves users the model knows little about with less than the
trivial answer. Ranking by ``score(u, i) + w_u * log(1 + c_i)`` puts the popularity back, with
``c_i`` the item's clicks observed before the ranked period, each weighted
``0.5 ** (age / half_life)`` (recent clicks count more: what is popular now, not last year), and
``w_u`` one weight for warm users (with training data) and one for cold users (without).

An inner product of augmented vectors computes it exactly, so exact and approximate indexes
serve it unchanged: ``[user vector, w_u] . [item vector, log(1 + c_i)]``.

A weight may be ``auto``: at every validation, each candidate weight ranks the validation
users, and each group (warm, cold) takes the candidate with the best mean of the monitored
metric over its users (:func:`choose_weights`); the checkpoint keeps the weights chosen at its
validation, and test and serving use those (nothing is chosen on test). How much popularity
helps depends on the data and the split (much on a temporal split with drift, little or
nothing on a random one), hence the choice on each run's own validation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from twotower.metric_names import METRIC_NAMES

SECONDS_PER_DAY = 86_400.0
AUTO = "auto"  # a weight chosen on validation


@dataclass(frozen=True)
class PopularityPrior:
    """``warm_weight`` / ``cold_weight``: ``w_u`` of users with / without training data (>= 0);
    ``half_life_days``: the age at which a click counts half (``None``: every click counts 1)."""

    warm_weight: float
    cold_weight: float
    half_life_days: float | None = None

    def __post_init__(self) -> None:
        for name in ("warm_weight", "cold_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"model.popularity_prior.{name}={value!r}: expected a number >= 0")
        if self.half_life_days is not None and not (isinstance(self.half_life_days, (int, float)) and self.half_life_days > 0):
            raise ValueError(f"model.popularity_prior.half_life_days={self.half_life_days!r}: expected a number of days > 0, or null")

    def item_log_prior(self, items: torch.Tensor, times: torch.Tensor | None, num_items: int) -> torch.Tensor:
        """``[N]`` ``log(1 + c_i)`` from the observed clicks: ``items`` ``[M]`` long and their
        ``times`` ``[M]`` (seconds; ages count from the latest click; ``None`` without a half-life)."""
        weights = torch.ones(len(items), dtype=torch.float64)
        if self.half_life_days is not None and len(items):
            if times is None:
                raise ValueError("model.popularity_prior.half_life_days needs the clicks' timestamps; the data has none: expected half_life_days=null")
            age_days = (times.max() - times).double() / SECONDS_PER_DAY
            weights = torch.pow(0.5, age_days / self.half_life_days)
        counts = torch.zeros(num_items, dtype=torch.float64).index_add_(0, items.long(), weights)
        return torch.log1p(counts).float()

    def user_weights(self, warm: torch.Tensor) -> torch.Tensor:
        """``[U]`` float ``w_u`` for ``warm`` ``[U]`` bool."""
        return torch.where(warm.bool(), self.warm_weight, self.cold_weight).float()

    def with_weights(self, warm_weight: float, cold_weight: float) -> PopularityPrior:
        """The same prior with other weights (checked as the constructor checks them)."""
        return replace(self, warm_weight=warm_weight, cold_weight=cold_weight)


@dataclass(frozen=True)
class WeightSearch:
    """Which weights are chosen on validation (``warm`` / ``cold``), among ``candidates``."""

    candidates: tuple[float, ...]
    warm: bool
    cold: bool

    def __post_init__(self) -> None:
        if not self.candidates or not all(isinstance(c, (int, float)) and math.isfinite(c) and c >= 0 for c in self.candidates):
            raise ValueError(f"model.popularity_prior.candidates={list(self.candidates)}: expected a non-empty list of numbers >= 0")


def choose_weights(metric_by_weight: torch.Tensor, warm: torch.Tensor, candidates: Sequence[float],
                   current: tuple[float, float]) -> tuple[float, float]:  # fmt: skip
    """``(warm weight, cold weight)``: per group of users, the candidate whose ranking gives the
    highest mean metric over the group's users. ``metric_by_weight``: ``[W, U]`` (one row per
    candidate, in order); ``warm``: ``[U]`` bool. Ties go to the smallest weight (the least
    popularity); a group without users keeps its ``current`` weight."""
    chosen = []
    for group, keep in ((warm.bool(), current[0]), (~warm.bool(), current[1])):
        if not group.any():
            chosen.append(keep)
            continue
        means = metric_by_weight[:, group].double().mean(1)
        best = max(range(len(candidates)), key=lambda i: (float(means[i]), -candidates[i]))
        chosen.append(float(candidates[best]))
    return chosen[0], chosen[1]


def append_column(vectors: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
    """``[R, D], [R] -> [R, D + 1]``: the prior's extra coordinate (a weight for users, a log prior for items)."""
    return torch.cat([vectors, column.to(vectors)[:, None]], dim=1)


def monitored_ranking_metric(monitor: str | None) -> str:
    """``val/[warm/|cold/]ndcg@20`` -> ``ndcg@20``: the per-user metric a weight search compares;
    ValueError for a monitor that is not one (none, coverage, popularity)."""
    match = re.fullmatch(rf"val/(?:warm/|cold/)?((?:{'|'.join(METRIC_NAMES)})@\d+)", str(monitor))
    if match is None:
        raise ValueError(f"eval.monitor={monitor}: a weight of the popularity prior set to auto is chosen on the monitored "
                         "validation metric; expected eval.monitor=val/<recall|ndcg|hit_rate|mrr|precision>@K, or numbers for the weights")
    return match.group(1)
