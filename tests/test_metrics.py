"""Full-ranking metrics against a brute-force pure-Python implementation and hand values;
masking of seen items; warm/cold averaging, coverage and mean popularity."""

from __future__ import annotations

import math
import random

import pytest
import torch

from twotower.metric_names import METRIC_NAMES
from twotower.metrics import RankingAccumulator, per_user_metrics
from twotower.topk import rank_and_match


def brute_force(ranking: list[int], targets: set[int], k: int) -> dict[str, float]:
    """The docstring conventions (RecBole), one user, plain Python."""
    top = ranking[:k]
    hits = [item in targets for item in top]
    n = len(targets)
    dcg = sum(1 / math.log2(r + 2) for r, h in enumerate(hits) if h)
    idcg = sum(1 / math.log2(r + 2) for r in range(min(n, k)))
    first = next((r for r, h in enumerate(hits) if h), None)
    return {
        "recall": sum(hits) / n,
        "precision": sum(hits) / k,
        "hit_rate": 1.0 if any(hits) else 0.0,
        "mrr": 0.0 if first is None else 1 / (first + 1),
        "ndcg": dcg / idcg,
    }


def test_per_user_metrics_match_brute_force_on_random_rankings():
    rng = random.Random(0)
    num_items, k_max, ks = 40, 20, [1, 3, 5, 10, 20]
    rankings, target_sets = [], []
    for _ in range(200):
        rankings.append(rng.sample(range(num_items), k_max))
        # 1 to 30 targets: some users have more targets than K, some a single one.
        target_sets.append(set(rng.sample(range(num_items), rng.randint(1, 30))))
    hits = torch.tensor([[item in t for item in r] for r, t in zip(rankings, target_sets)])
    num_targets = torch.tensor([len(t) for t in target_sets])
    out = per_user_metrics(hits, num_targets, ks)
    assert set(out) == {f"{m}@{k}" for m in METRIC_NAMES for k in ks}
    for u, (r, t) in enumerate(zip(rankings, target_sets)):
        for k in ks:
            ref = brute_force(r, t, k)
            for m in METRIC_NAMES:
                assert out[f"{m}@{k}"][u].item() == pytest.approx(ref[m], abs=1e-6), (u, m, k)


def test_per_user_metrics_hand_example():
    # targets {a, c}, ranking [a, b, c] -> hits [1, 0, 1], n = 2
    out = per_user_metrics(torch.tensor([[True, False, True]]), torch.tensor([2]), [1, 2, 3])
    assert out["recall@1"].item() == pytest.approx(0.5)
    assert out["recall@2"].item() == pytest.approx(0.5)
    assert out["recall@3"].item() == pytest.approx(1.0)
    assert out["precision@2"].item() == pytest.approx(0.5)  # 1 hit / 2
    assert out["precision@3"].item() == pytest.approx(2 / 3)
    assert out["hit_rate@1"].item() == 1.0
    assert out["mrr@1"].item() == 1.0 and out["mrr@3"].item() == 1.0
    # NDCG@1 = 1 / 1 = 1; NDCG@2 = 1 / (1 + 1/log2(3)) = 0.6131471928
    assert out["ndcg@1"].item() == pytest.approx(1.0)
    assert out["ndcg@2"].item() == pytest.approx(0.6131471928, abs=1e-6)
    # NDCG@3 = (1 + 1/log2(4)) / (1 + 1/log2(3)) = 1.5 / 1.6309297536 = 0.9197207892
    assert out["ndcg@3"].item() == pytest.approx(0.9197207892, abs=1e-6)


def test_per_user_metrics_late_hit_and_no_hit():
    # User 0: one target at rank 2 (0-based) -> MRR@3 = 1/3, MRR@2 = 0; NDCG@3 = (1/log2(4)) / 1 = 0.5.
    # User 1: no hit -> all zeros.
    hits = torch.tensor([[False, False, True], [False, False, False]])
    out = per_user_metrics(hits, torch.tensor([1, 3]), [2, 3])
    assert out["mrr@3"].tolist() == pytest.approx([1 / 3, 0.0])
    assert out["mrr@2"].tolist() == pytest.approx([0.0, 0.0])
    assert out["ndcg@3"].tolist() == pytest.approx([0.5, 0.0])
    assert out["hit_rate@2"].tolist() == [0.0, 0.0]
    assert out["hit_rate@3"].tolist() == [1.0, 0.0]


@pytest.mark.parametrize("k", [0, 4])
def test_per_user_metrics_rejects_k_out_of_range(k):
    with pytest.raises(ValueError):
        per_user_metrics(torch.zeros(2, 3, dtype=torch.bool), torch.tensor([1, 1]), [k])


def test_rank_and_match_masks_seen_and_counts_hits_vs_brute_force():
    gen = torch.Generator().manual_seed(0)
    rng = random.Random(1)
    num_users, num_items, k_max = 25, 40, 10
    scores = torch.randn(num_users, num_items, generator=gen)
    seen = {u: set(rng.sample(range(num_items), rng.randint(0, 15))) for u in range(num_users)}
    # Targets among the unseen items (held-out positives are never already-seen items).
    targets = {u: set(rng.sample(sorted(set(range(num_items)) - seen[u]), rng.randint(1, 6))) for u in range(num_users)}
    # Give seen items very high scores so that they would win if not masked.
    for u, items in seen.items():
        for i in items:
            scores[u, i] = 100.0 + i
    seen_pairs = [(u, i) for u in seen for i in sorted(seen[u])]
    target_pairs = [(u, i) for u in targets for i in sorted(targets[u])]
    original = scores.clone()
    topk, hits, num_targets = rank_and_match(
        scores,
        torch.tensor([p[0] for p in seen_pairs]),
        torch.tensor([p[1] for p in seen_pairs]),
        torch.tensor([p[0] for p in target_pairs]),
        torch.tensor([p[1] for p in target_pairs]),
        k_max,
    )
    assert topk.shape == (num_users, k_max) and hits.shape == (num_users, k_max)
    for u in range(num_users):
        unseen = [i for i in range(num_items) if i not in seen[u]]
        expected = sorted(unseen, key=lambda i: -original[u, i].item())[:k_max]
        assert topk[u].tolist() == expected
        assert not (set(topk[u].tolist()) & seen[u])
        assert hits[u].tolist() == [i in targets[u] for i in expected]
        assert num_targets[u].item() == len(targets[u])


def test_rank_and_match_k_larger_than_catalogue_is_clipped():
    scores = torch.tensor([[0.1, 0.9, 0.5]])
    topk, hits, n = rank_and_match(
        scores, torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([0]), k_max=10
    )
    assert topk.shape == (1, 3)
    assert topk[0, :2].tolist() == [2, 0]  # item 1 is seen: it can only come last
    assert hits[0, :2].tolist() == [False, True]
    assert n.tolist() == [1]


def _accumulator():
    # item counts (training popularity) of a 5-item catalogue
    acc = RankingAccumulator([2, 1], torch.tensor([5.0, 0.0, 3.0, 1.0, 1.0]))
    # chunk 1: user A (warm) top [0, 2], hit at rank 0, 1 target; user B (cold) top [0, 3], no hit, 1 target
    acc.add(
        torch.tensor([[0, 2], [0, 3]]),
        torch.tensor([[True, False], [False, False]]),
        torch.tensor([1, 1]),
        torch.tensor([True, False]),
    )
    # chunk 2: user C (warm) top [2, 4], hit at rank 1, 2 targets
    acc.add(torch.tensor([[2, 4]]), torch.tensor([[False, True]]), torch.tensor([2]), torch.tensor([True]))
    return acc


def test_ranking_accumulator_warm_cold_coverage_popularity_by_hand():
    out = _accumulator().compute("test")
    # recall@1 per user: A 1, B 0, C 0 -> all 1/3, warm (A, C) 1/2, cold (B) 0
    assert out["test/recall@1"] == pytest.approx(1 / 3)
    assert out["test/warm/recall@1"] == pytest.approx(0.5)
    assert out["test/cold/recall@1"] == pytest.approx(0.0)
    # recall@2: A 1, B 0, C 1/2 -> all 0.5, warm 0.75, cold 0
    assert out["test/recall@2"] == pytest.approx(0.5)
    assert out["test/warm/recall@2"] == pytest.approx(0.75)
    assert out["test/cold/recall@2"] == pytest.approx(0.0)
    # mrr@2: A 1, B 0, C 1/2 -> warm 0.75
    assert out["test/warm/mrr@2"] == pytest.approx(0.75)
    # coverage@1: items {0, 2} of 5 = 0.4; coverage@2: {0, 2, 3, 4} of 5 = 0.8
    assert out["test/coverage@1"] == pytest.approx(0.4)
    assert out["test/coverage@2"] == pytest.approx(0.8)
    # mean popularity@1: counts of 0, 0, 2 = (5 + 5 + 3) / 3 = 13/3
    assert out["test/mean_popularity@1"] == pytest.approx(13 / 3)
    # mean popularity@2: counts of 0, 2, 0, 3, 2, 4 = (5 + 3 + 5 + 1 + 3 + 1) / 6 = 3
    assert out["test/mean_popularity@2"] == pytest.approx(3.0)
    assert out["test/num_users"] == 3.0
    assert out["test/num_warm_users"] == 2.0
    assert out["test/num_cold_users"] == 1.0


def test_ranking_accumulator_single_group_has_no_warm_cold_keys():
    acc = RankingAccumulator([1], torch.tensor([1.0, 2.0]))
    assert acc.compute("val") == {}
    acc.add(torch.tensor([[1], [0]]), torch.tensor([[True], [False]]), torch.tensor([1, 2]), torch.tensor([True, True]))
    out = acc.compute("val")
    assert out["val/recall@1"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert out["val/coverage@1"] == pytest.approx(1.0)
    assert out["val/mean_popularity@1"] == pytest.approx(1.5)  # (2 + 1) / 2
    assert not any("warm" in key or "cold" in key for key in out)


def test_popularity_ranking_matches_a_dense_ranking_by_count():
    """The baseline without a score matrix equals ranking every item by its training count
    (distinct counts: no ties), seen items removed, by hand and on a random case."""
    from types import SimpleNamespace

    from twotower.metrics import popularity_ranking
    from twotower.topk import rank_and_match

    # By hand: counts make the order 2, 0, 3, 1, 4. User 0 has seen 2 -> top-2 is [0, 3];
    # its target 3 is a hit at rank 2. User 1 has seen nothing -> [2, 0]; target 1 is missed.
    counts = torch.tensor([5.0, 2.0, 9.0, 4.0, 1.0])
    batch = SimpleNamespace(warm=torch.tensor([True, False]), seen_rows=torch.tensor([0]), seen_items=torch.tensor([2]),
                            target_rows=torch.tensor([0, 1]), target_items=torch.tensor([3, 1]))  # fmt: skip
    ranking = popularity_ranking(counts, [batch], [2])
    out = ranking.compute("test")
    assert out["test/recall@2"] == pytest.approx(0.5) and out["test/hit_rate@2"] == pytest.approx(0.5)
    assert out["test/ndcg@2"] == pytest.approx((1 / math.log2(3)) / 1 / 2)
    per_user = ranking.per_user("test")  # what significance tests pair: each user's value, in order
    assert per_user["test/recall@2"].tolist() == [1.0, 0.0] and per_user["warm"].tolist() == [True, False]
    assert per_user["test/ndcg@2"].tolist() == pytest.approx([1 / math.log2(3), 0.0])
    assert out["test/warm/recall@2"] == 1.0 and out["test/cold/recall@2"] == 0.0
    assert out["test/mean_popularity@2"] == pytest.approx((5 + 4 + 9 + 5) / 4)

    generator = torch.Generator().manual_seed(0)
    counts = torch.randperm(300, generator=generator).float()  # distinct counts
    users, ks = 40, [5, 20]
    seen = torch.rand(users, 300, generator=generator) < 0.2
    target = (torch.rand(users, 300, generator=generator) < 0.05) & ~seen
    target[:, 0] |= ~target.any(1)  # every user has a target
    seen_rows, seen_items = seen.nonzero(as_tuple=True)
    target_rows, target_items = target.nonzero(as_tuple=True)
    batch = SimpleNamespace(warm=torch.arange(users) % 3 > 0, seen_rows=seen_rows, seen_items=seen_items,
                            target_rows=target_rows, target_items=target_items)  # fmt: skip
    got = popularity_ranking(counts, [batch], ks).compute("test")
    accumulator = RankingAccumulator(ks, counts)
    topk, hits, num_targets = rank_and_match(counts.expand(users, -1).clone(), seen_rows, seen_items, target_rows, target_items, max(ks))
    accumulator.add(topk, hits, num_targets, batch.warm, target_rows, target_items)
    assert got == pytest.approx(accumulator.compute("test"))


def test_metrics_per_popularity_band_on_a_hand_made_ranking():
    """10 items, counts 10..1 for items 0..9: head = items 0-1 (first 20%), torso = 2-4 (to
    50%), tail = 5-9. User 0 retrieves [0, 5, 2] and holds out {5, 7, 2}; user 1 retrieves
    [1, 3, 8] and holds out {0}."""
    from twotower.metrics import popularity_bands

    counts = torch.arange(10, 0, -1).float()
    assert popularity_bands(counts).tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    accumulator = RankingAccumulator([1, 3], counts)
    topk = torch.tensor([[0, 5, 2], [1, 3, 8]])
    target_rows, target_items = torch.tensor([0, 0, 0, 1]), torch.tensor([5, 7, 2, 0])
    hits = torch.tensor([[False, True, True], [False, False, False]])
    accumulator.add(topk, hits, torch.tensor([3, 1]), torch.tensor([True, True]), target_rows, target_items)
    out = accumulator.compute("test")
    # Head: only user 1 has a head target (0), never retrieved: 0. Torso: user 0's target 2, found at
    # rank 3: 0 at K=1, 1 at K=3. Tail: user 0's targets 5 and 7, 5 found at rank 2: 0, then 1/2.
    assert out["test/band/head/recall@3"] == 0.0
    assert (out["test/band/torso/recall@1"], out["test/band/torso/recall@3"]) == (0.0, 1.0)
    assert (out["test/band/tail/recall@1"], out["test/band/tail/recall@3"]) == (0.0, 0.5)
    # Shares of the top 3 (6 slots): head 0, 1 -> 2/6; torso 2, 3 -> 2/6; tail 5, 8 -> 2/6. Top 1: both head.
    assert [out[f"test/band/{b}/share@3"] for b in ("head", "torso", "tail")] == pytest.approx([1 / 3] * 3)
    assert out["test/band/head/share@1"] == 1.0 and out["test/band/tail/share@1"] == 0.0
    with pytest.raises(ValueError, match="popularity_bands"):
        popularity_bands(counts, (0.5, 0.2))
