"""Negative samplers: pure functions of item ids and training counts.

A sampler sees a batch's users and positive items and returns a
:class:`Negatives`: the extra candidate items (if any), whether the batch's
other positives serve as negatives (in-batch), and the log-probability ``log q``
of each candidate under the process that produced it, for the logQ
correction (Yi et al., RecSys 2019). Samplers know nothing of models,
Lightning or files; the DataModule calls them while it builds a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch



@dataclass
class Negatives:
    """Negatives of one batch of ``B`` (user, positive item) pairs.

    ``items``: ``[B, n]`` per-example negatives, ``[M]`` negatives shared by
    the whole batch, or ``None``. ``in_batch``: the batch's positives are also
    candidates for every user (the diagonal is each user's own positive).
    ``items_logq`` matches ``items``; ``positives_logq`` is ``[B]``, the log
    probability of each positive as an in-batch candidate. A ``None`` logq
    means no correction for those candidates.
    """

    items: torch.Tensor | None = None
    in_batch: bool = False
    items_logq: torch.Tensor | None = None
    positives_logq: torch.Tensor | None = None
    items_valid: torch.Tensor | None = None  # like ``items``; False where a row had no negative to give
    hardest: int | None = None  # online mining: keep only each row's hardest valid negatives
    streaming_logq: bool = False  # the in-batch logQ comes from the model's streaming frequency estimate


@dataclass
class TrainingStats:
    """What a sampler may know of the training split: positives per item
    ``[N]`` and, for samplers that need them, every training interaction
    (``users``, ``items``, ``ratings``: ``[E]``, ratings NaN where unknown)."""

    item_counts: torch.Tensor
    users: torch.Tensor | None = None
    items: torch.Tensor | None = None
    ratings: torch.Tensor | None = None
    num_users: int = 0


def batch_probabilities(item_counts: torch.Tensor) -> torch.Tensor:
    """Probability that a training positive drawn at random is item ``i``:
    ``count_i / sum(counts)``. An item appears in a batch of ``B`` with
    probability about ``B`` times this; the constant factor cancels in a
    softmax, so this is the ``p`` of the logQ correction. ``[N] -> [N]``."""
    total = item_counts.sum()
    if total <= 0:
        raise ValueError("item_counts sum to zero: no training positive to estimate frequencies from")
    return item_counts / total


def resample_collisions(
    negatives: torch.Tensor, positives: torch.Tensor, draw, generator: torch.Generator, max_rounds: int = 100
) -> torch.Tensor:
    """Redraw per-example negatives equal to their row's positive.

    ``negatives``: ``[B, n]``; ``positives``: ``[B]``; ``draw(k)`` returns ``k``
    fresh item ids. Stops when no collision is left (or after ``max_rounds``,
    which only a one-item catalogue can reach; the loss then masks the rest).
    """
    negatives = negatives.clone()
    for _ in range(max_rounds):
        clash = negatives == positives[:, None]
        k = int(clash.sum())
        if k == 0:
            break
        negatives[clash] = draw(k, generator)
    return negatives


class NoNegatives:
    """For losses that need no negatives (``mse`` regresses observed ratings)."""

    provides_negatives = False

    def sample(self, users: torch.Tensor, positives: torch.Tensor, generator: torch.Generator) -> Negatives:
        return Negatives()


# Where the ``p`` of the logQ correction ``s - log p`` comes from, one switch for every sampler:
# ``counts`` (training counts: the in-batch positives' frequencies, or a corpus sampler's own
# distribution, count ** alpha), ``streaming`` (in-batch only: estimated while training), ``none``.
LOGQ_SOURCES = ("counts", "streaming", "none")


def check_logq(logq: str, streaming_allowed: bool = False) -> bool:
    """Whether ``logq`` asks for a correction; refuses a value the sampler does not support."""
    allowed = LOGQ_SOURCES if streaming_allowed else ("counts", "none")
    if logq not in allowed:
        only = "" if streaming_allowed or logq != "streaming" else " (only sampler=in_batch estimates frequencies while training)"
        raise ValueError(f"sampler.logq={logq!r}: expected one of {', '.join(allowed)}{only}")
    return logq != "none"


class InBatchSampler:
    """The batch's other positives are the negatives. ``logq`` says where the
    ``p`` of the correction ``s - log p`` comes from: ``counts`` (training
    counts, fixed), ``streaming`` (estimated while training by
    :class:`~twotower.frequency.StreamingFrequencyEstimator`, which the
    LightningModule owns (``frequency_estimator`` in the config) and feeds the global batch)
    or ``none`` (no correction)."""

    provides_negatives = True

    def __init__(
        self,
        item_counts: torch.Tensor,
        logq: str = "counts",
        online_hardest: int | None = None,
    ):
        check_logq(logq, streaming_allowed=True)
        if online_hardest is not None and online_hardest < 1:
            raise ValueError(f"sampler.online_hardest={online_hardest}: expected null or >= 1")
        self.logq = logq
        self.logq_correction = logq != "none"
        self.online_hardest = online_hardest
        self.log_p = torch.log(batch_probabilities(item_counts).clamp_min(1e-12))

    def label_logq(self, labels: torch.Tensor) -> torch.Tensor | None:
        """``[B]`` what each label's logit has subtracted (its ``log p`` as an in-batch
        candidate), or ``None`` (no correction, or one estimated while training)."""
        return self.log_p[labels] if self.logq == "counts" else None

    def sample(self, users: torch.Tensor, positives: torch.Tensor, generator: torch.Generator) -> Negatives:
        return Negatives(in_batch=True, positives_logq=self.label_logq(positives), hardest=self.online_hardest,
                         streaming_logq=self.logq == "streaming")  # fmt: skip


class CorpusSampler:
    """Negatives drawn from the whole catalogue with probability proportional to
    ``weights`` (all ones: uniform; ``count ** alpha``: popularity).

    ``num_negatives`` per example (``shared=False``, ``[B, n]``, never the
    row's own positive) or for the whole batch (``shared=True``, ``[n]``).
    """

    provides_negatives = True

    def __init__(self, weights: torch.Tensor, num_negatives: int, shared: bool = False, logq: str = "none"):
        if num_negatives < 1:
            raise ValueError(f"num_negatives={num_negatives}: expected >= 1")
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("sampling weights must be >= 0 and not all zero")
        self.probs = weights / weights.sum()
        self.log_q = torch.log(self.probs.clamp_min(1e-12))
        self.num_negatives = num_negatives
        self.shared = shared
        self.logq_correction = check_logq(logq)
        self._uniform = bool((weights == weights[0]).all())

    def draw(self, k: int, generator: torch.Generator) -> torch.Tensor:
        if self._uniform:
            return torch.randint(len(self.probs), (k,), generator=generator)
        return torch.multinomial(self.probs, k, replacement=True, generator=generator)

    def label_logq(self, labels: torch.Tensor) -> None:
        """A label is scored apart from the sampled columns: no correction."""
        return None

    def sample(self, users: torch.Tensor, positives: torch.Tensor, generator: torch.Generator) -> Negatives:
        if self.shared:
            items = self.draw(self.num_negatives, generator)
        else:
            flat = self.draw(len(positives) * self.num_negatives, generator).view(len(positives), self.num_negatives)
            items = resample_collisions(flat, positives, self.draw, generator)
        return Negatives(items=items, items_logq=self.log_q[items] if self.logq_correction else None)


class MixedSampler:
    """Mixed negative sampling (Yang et al., WWW 2020): the batch's other
    positives plus ``num_negatives`` corpus items shared by the batch, drawn
    with probability proportional to ``count ** alpha`` (``alpha=0``: uniform).

    Each candidate is corrected with the log of its *expected number of
    occurrences* under the source it came from: ``log(B * p_i)`` for an
    in-batch candidate (``p`` from training counts, ``B`` the batch size) and
    ``log(M * q_i)`` for a sampled one. The factors ``B`` and ``M`` cancel in a
    softmax over one source alone, but put two sources on one scale.
    """

    provides_negatives = True

    def __init__(self, item_counts: torch.Tensor, num_negatives: int, alpha: float = 0.0, logq: str = "counts"):
        self.logq_correction = check_logq(logq)
        self.in_batch = InBatchSampler(item_counts, logq)
        self.corpus = CorpusSampler(item_counts.float() ** alpha if alpha else torch.ones_like(item_counts, dtype=torch.float), num_negatives, shared=True)

    def label_logq(self, labels: torch.Tensor) -> torch.Tensor | None:
        """``[B]`` each label's ``log(B * p)`` as an in-batch candidate of a batch of ``B``, or ``None``."""
        if not self.logq_correction:
            return None
        return self.in_batch.log_p[labels] + torch.log(torch.tensor(float(len(labels))))

    def sample(self, users: torch.Tensor, positives: torch.Tensor, generator: torch.Generator) -> Negatives:
        items = self.corpus.draw(self.corpus.num_negatives, generator)
        if not self.logq_correction:
            return Negatives(items=items, in_batch=True)
        return Negatives(
            items=items,
            in_batch=True,
            positives_logq=self.label_logq(positives),
            items_logq=self.corpus.log_q[items] + torch.log(torch.tensor(float(len(items)))),
        )


class ExposedUnclickedSampler:
    """Per-example negatives drawn from the items the same user was exposed to
    but did not like (training interactions rated ``<= max_rating``; in
    MovieLens a low rating is the closest proxy for "shown, not clicked").
    Such items suit ranking, not retrieval; this sampler lets one measure it.
    A user without any gets masked columns (no negative) in that row."""

    provides_negatives = True

    def __init__(self, stats: TrainingStats, num_negatives: int, max_rating: float = 2.0):
        if num_negatives < 1:
            raise ValueError(f"num_negatives={num_negatives}: expected >= 1")
        if stats.ratings is None or bool(torch.isnan(stats.ratings).all()):
            raise ValueError("sampler exposed_unclicked needs ratings in the training data (low ratings are the negatives)")
        low = stats.ratings <= max_rating
        users, items = stats.users[low], stats.items[low]
        order = torch.argsort(users, stable=True)
        self.items = items[order]
        counts = torch.bincount(users, minlength=stats.num_users)
        self.ptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        self.num_negatives = num_negatives
        self.max_rating = max_rating

    def sample(self, users: torch.Tensor, positives: torch.Tensor, generator: torch.Generator) -> Negatives:
        start, count = self.ptr[users], self.ptr[users + 1] - self.ptr[users]
        u = torch.rand(len(users), self.num_negatives, generator=generator)
        offset = (u * count[:, None]).long().clamp_max((count - 1).clamp_min(0)[:, None])
        has_any = (count > 0)[:, None].expand(-1, self.num_negatives)
        index = (start[:, None] + offset).clamp_max(max(len(self.items) - 1, 0))
        items = self.items[index] if len(self.items) else torch.zeros_like(index)
        return Negatives(items=items, items_valid=has_any.clone())


def uniform_sampler(stats: TrainingStats, num_negatives: int, shared: bool = False, logq: str = "none") -> CorpusSampler:
    """Every catalogue item equally likely."""
    return CorpusSampler(torch.ones_like(stats.item_counts, dtype=torch.float), num_negatives, shared, logq)


def popularity_sampler(
    stats: TrainingStats, num_negatives: int, alpha: float = 0.75, shared: bool = False, logq: str = "none"
) -> CorpusSampler:
    """Item ``i`` with probability proportional to ``count_i ** alpha``."""
    return CorpusSampler(stats.item_counts.float() ** alpha, num_negatives, shared, logq)


def in_batch_sampler(
    stats: TrainingStats, logq: str = "counts", online_hardest: int | None = None
) -> InBatchSampler:
    """In-batch negatives; ``online_hardest=k`` keeps only each user's ``k``
    highest-scoring in-batch negatives (online hard-negative mining)."""
    return InBatchSampler(stats.item_counts, logq, online_hardest)


def mixed_sampler(stats: TrainingStats, num_negatives: int, alpha: float = 0.0, logq: str = "counts") -> MixedSampler:
    return MixedSampler(stats.item_counts, num_negatives, alpha, logq)


def exposed_unclicked_sampler(stats: TrainingStats, num_negatives: int, max_rating: float = 2.0) -> ExposedUnclickedSampler:
    return ExposedUnclickedSampler(stats, num_negatives, max_rating)


def no_negatives(stats: TrainingStats) -> NoNegatives:
    return NoNegatives()
