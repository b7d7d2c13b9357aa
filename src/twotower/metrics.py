"""Full-ranking metrics: pure tensor functions, no Lightning.

Conventions (those of RecBole, so numbers compare): per user, with ``n`` held-out
positives and ``hits[r]`` whether the item at rank ``r`` (0-based) is one of them,
  - Recall@K    = sum_{r<K} hits / n
  - Precision@K = sum_{r<K} hits / K
  - HitRate@K   = 1 if any hit in the top K
  - MRR@K       = 1 / (1 + first hit rank), 0 without a hit in the top K
  - NDCG@K      = sum_{r<K} hits[r] / log2(r + 2)  /  sum_{r<min(n,K)} 1 / log2(r + 2)
and every metric is the mean over users. Catalogue coverage@K is the share of
all items that appear in at least one user's top K; mean popularity@K the mean
training count of the retrieved items.
"""

from __future__ import annotations

import torch

from twotower.topk import match_targets


def per_user_metrics(hits: torch.Tensor, num_targets: torch.Tensor, ks: list[int]) -> dict[str, torch.Tensor]:
    """``hits``: bool ``[U, K_max]`` (ranked top-K_max); ``num_targets``: ``[U]`` (> 0).

    Returns ``{"recall@10": [U], ...}`` for every metric and K in ``ks``."""
    hits = hits.float()
    k_max = hits.shape[1]
    discounts = 1.0 / torch.log2(torch.arange(k_max, dtype=torch.float, device=hits.device) + 2)
    cum_hits = hits.cumsum(1)
    cum_gain = (hits * discounts).cumsum(1)
    cum_ideal = discounts.cumsum(0)
    ranks = torch.arange(k_max, device=hits.device)
    first_hit = torch.where(hits.bool(), ranks, k_max).min(1).values
    n = num_targets.float()
    out = {}
    for k in ks:
        if not 1 <= k <= k_max:
            raise ValueError(
                f"K={k}: expected 1 <= K <= {k_max}, the number of items ranked (eval.ks may not exceed the catalogue)"
            )
        h = cum_hits[:, k - 1]
        ideal = cum_ideal[(num_targets.clamp(max=k) - 1).long()]
        out[f"recall@{k}"] = h / n
        out[f"ndcg@{k}"] = cum_gain[:, k - 1] / ideal
        out[f"hit_rate@{k}"] = (h > 0).float()
        out[f"mrr@{k}"] = torch.where(first_hit < k, 1.0 / (first_hit.float() + 1), torch.zeros_like(n))
        out[f"precision@{k}"] = h / k
    return out


#: Popularity bands of the catalogue: the items with the most training positives that make
#: the first 20% of items are the head, the next 30% the torso, the other half the tail.
BANDS = (0.2, 0.5)
BAND_NAMES = ("head", "torso", "tail")


def popularity_bands(item_counts: torch.Tensor, edges: tuple[float, float] = BANDS) -> torch.Tensor:
    """``[N]`` band of each item (0 head, 1 torso, 2 tail) by its rank in training counts
    (ties by item index): ranks below ``edges[0] * N`` are the head, below ``edges[1] * N`` the torso."""
    head, torso = edges
    if not 0 < head < torso < 1:
        raise ValueError(f"eval.popularity_bands={list(edges)}: expected two cumulative shares of the items by popularity, 0 < end of head < end of torso < 1 (e.g. [0.2, 0.5])")
    order = torch.sort(-item_counts.float(), stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    n = len(order)
    return (rank >= round(head * n)).long() + (rank >= round(torso * n)).long()


class RankingAccumulator:
    """Collects per-user metrics and retrieved items over chunks of users, then
    averages: over all users, and apart over warm users (seen in training) and
    cold users (not seen), when both kinds are present."""

    def __init__(self, ks: list[int], item_counts: torch.Tensor, bands: tuple[float, float] = BANDS):
        self.ks = sorted(ks)
        self.item_counts = item_counts.float()
        self.band_of = popularity_bands(self.item_counts, bands)  # [N]: 0 head, 1 torso, 2 tail
        self.band_hits: dict[int, list[torch.Tensor]] = {k: [] for k in self.ks}  # [U, 3] per chunk
        self.band_targets: list[torch.Tensor] = []  # [U, 3]
        self.band_retrieved = {k: torch.zeros(len(BAND_NAMES)) for k in self.ks}
        self.values: dict[str, list[torch.Tensor]] = {}
        self.warm: list[torch.Tensor] = []
        self.retrieved = {k: torch.zeros(len(item_counts), dtype=torch.bool) for k in self.ks}
        self.popularity = {k: 0.0 for k in self.ks}
        self.num_users = 0

    def add(self, topk_items: torch.Tensor, hits: torch.Tensor, num_targets: torch.Tensor, warm: torch.Tensor,
            target_rows: torch.Tensor | None = None, target_items: torch.Tensor | None = None) -> None:  # fmt: skip
        """``topk_items``: ``[U, K_max]`` long; ``hits``: bool ``[U, K_max]``; ``num_targets``, ``warm``: ``[U]``;
        ``target_rows`` / ``target_items``: the held-out pairs (COO), for the metrics per popularity band."""
        topk_items, hits, num_targets, warm = (t.detach().cpu() for t in (topk_items, hits, num_targets, warm))
        band = self.band_of[topk_items]  # [U, K_max]
        for k in self.ks:
            self.band_retrieved[k] += torch.bincount(band[:, :k].reshape(-1), minlength=len(BAND_NAMES)).float()
        if target_rows is not None:
            targets = torch.zeros(len(topk_items), len(BAND_NAMES))
            targets.index_put_((target_rows.cpu(), self.band_of[target_items.cpu()]), torch.ones(len(target_rows)), accumulate=True)
            self.band_targets.append(targets)
            one_hot = torch.nn.functional.one_hot(band, len(BAND_NAMES)).float() * hits[..., None].float()  # [U, K, 3]
            cumulative = one_hot.cumsum(1)
            for k in self.ks:
                self.band_hits[k].append(cumulative[:, min(k, cumulative.shape[1]) - 1])
        for name, v in per_user_metrics(hits, num_targets, self.ks).items():
            self.values.setdefault(name, []).append(v)
        self.warm.append(warm.bool())
        for k in self.ks:
            top = topk_items[:, :k]
            self.retrieved[k][top.reshape(-1)] = True
            self.popularity[k] += float(self.item_counts[top].sum())
        self.num_users += len(topk_items)

    def per_user(self, prefix: str) -> dict[str, torch.Tensor]:
        """Each user's metrics, in the order the users were added: ``{f"{prefix}/recall@10": [U], ...}``
        (float) and ``"warm"`` ``[U]`` (bool): what significance tests pair across runs."""
        if self.num_users == 0:
            return {}
        return {**{f"{prefix}/{name}": torch.cat(chunks) for name, chunks in self.values.items()}, "warm": torch.cat(self.warm)}

    def compute(self, prefix: str) -> dict[str, float]:
        if self.num_users == 0:
            return {}
        warm = torch.cat(self.warm)
        groups = {"": torch.ones_like(warm)}
        if warm.any() and (~warm).any():
            groups.update({"warm/": warm, "cold/": ~warm})
        out = {}
        for name, chunks in self.values.items():
            v = torch.cat(chunks)
            for group, mask in groups.items():
                out[f"{prefix}/{group}{name}"] = float(v[mask].mean())
        for k in self.ks:
            out[f"{prefix}/coverage@{k}"] = float(self.retrieved[k].float().mean())
            out[f"{prefix}/mean_popularity@{k}"] = self.popularity[k] / (self.num_users * k)
        if len(groups) > 1:
            out[f"{prefix}/num_warm_users"] = float(warm.sum())
            out[f"{prefix}/num_cold_users"] = float((~warm).sum())
        out[f"{prefix}/num_users"] = float(self.num_users)
        for k in self.ks:
            for b, name in enumerate(BAND_NAMES):
                out[f"{prefix}/band/{name}/share@{k}"] = float(self.band_retrieved[k][b]) / (self.num_users * k)
        if self.band_targets:
            targets = torch.cat(self.band_targets)
            for k in self.ks:
                hits = torch.cat(self.band_hits[k])
                for b, name in enumerate(BAND_NAMES):
                    has = targets[:, b] > 0  # a band's recall over the users with held-out items in it
                    if has.any():
                        out[f"{prefix}/band/{name}/recall@{k}"] = float((hits[has, b] / targets[has, b]).mean())
        return out


def popularity_ranking(item_counts: torch.Tensor, batches, ks: list[int], bands: tuple[float, float] = BANDS) -> RankingAccumulator:
    """The most-popular baseline on the same evaluation batches (``EvalBatch``-like: ``warm``,
    ``seen_rows`` / ``seen_items``, ``target_rows`` / ``target_items``): every user gets the
    items with the most training positives, its seen items removed, ties broken by item
    index; accumulated as :class:`RankingAccumulator` accumulates a model's rankings.

    Without a ``[U, N]`` score matrix: a chunk's users take their top-K from the first
    ``K + (most items any of them has seen)`` items of the one global order."""
    counts = item_counts.float()
    order = torch.sort(-counts, stable=True).indices  # [N], most popular first
    rank_of = torch.empty_like(order)
    rank_of[order] = torch.arange(len(order))
    k_max = min(max(ks), len(order))
    accumulator = RankingAccumulator(ks, counts, bands)
    for batch in batches:
        users = len(batch.warm)
        most_seen = int(torch.bincount(batch.seen_rows, minlength=users).max()) if len(batch.seen_rows) else 0
        width = min(k_max + most_seen, len(order))
        seen = torch.zeros(users, width, dtype=torch.bool)
        rank = rank_of[batch.seen_items]
        inside = rank < width
        seen[batch.seen_rows[inside], rank[inside]] = True
        # The first k_max unseen columns of each row, in order: rank columns by (seen, position).
        position = torch.arange(width).expand(users, -1) + seen.long() * width
        columns = position.topk(k_max, dim=1, largest=False).indices  # ascending: the unseen, in order
        topk_items = order[:width][columns]
        hits, num_targets = match_targets(topk_items, batch.target_rows, batch.target_items, len(order))
        accumulator.add(topk_items, hits, num_targets, batch.warm, batch.target_rows, batch.target_items)
    return accumulator
