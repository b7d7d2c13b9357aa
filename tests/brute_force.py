"""An independent evaluation of a trained run, for end-to-end tests to compare the run's own
test metrics with: the run's best checkpoint rebuilt, every test user scored with every
item (plus the popularity prior, recounted here), seen items removed from a full sort, and
Recall@K / NDCG@K written out user by user (the definitions in twotower.metrics). Nothing of
the module's ranking, prior or metric code."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from twotower.restore import load_run


def brute_force_test_metrics(run_dir: str | Path, k: int, split: str = "test") -> dict[str, float]:
    """``{"test/recall@K": ..., "test/ndcg@K": ...}`` over the test users the run evaluated:
    all of them, or the first ``limit_test_batches`` chunks of users when the run was limited
    (``split="val"``: the best checkpoint's validation, every validation user)."""
    _, run, _ = load_run(run_dir)
    data, dm = run.data, run.datamodule
    es = data.eval_sets[split]
    count = len(es.users)
    limit = run.cfg.trainer.get("limit_test_batches")
    if split == "test" and isinstance(limit, int) and not isinstance(limit, bool):
        count = min(count, limit * dm.test_dataloader().dataset.chunk)
    with torch.no_grad():
        items = run.model.encode_items(dm.packed("item").gather(torch.arange(data.num_items)))
    prior = run.module.popularity_prior
    log_prior = None if prior is None else independent_log_prior(data, prior.half_life_days, split)
    p3 = None
    if run.module.covisit_weight:
        observed = [data.splits[name].positives() for name in parts_before(split)]
        pair_users, pair_items = (np.concatenate([getattr(p, side).numpy() for p in observed]) for side in ("user", "item"))
        p3 = independent_p3(pair_users, pair_items, data.num_users, data.num_items, es.users[:count].numpy())
    recalls, ndcgs = [], []
    for start in range(0, count, 256):  # bounded [256, N] scores
        users = es.users[start : min(start + 256, count)]
        with torch.no_grad():
            scores = run.model.score_matrix(run.model.encode_users(dm.packed("user").gather(users)), items).double().numpy()
        if prior is not None:
            weight = np.where(es.warm[start : start + len(users)].numpy(), prior.warm_weight, prior.cold_weight)
            scores = scores + weight[:, None] * log_prior[None, :]
        if run.module.covisit_weight:
            scores = scores + run.module.covisit_weight * p3[start : start + len(users)]
        for row, u in enumerate(range(start, start + len(users))):
            targets = set(es.target_items[es.target_ptr[u] : es.target_ptr[u + 1]].tolist())
            seen = set(es.seen_items[es.seen_ptr[u] : es.seen_ptr[u + 1]].tolist())
            best = np.argsort(-scores[row], kind="stable")[: k + len(seen)].tolist()  # k survive the seen ones
            hits = [i in targets for i in [i for i in best if i not in seen][:k]]
            recalls.append(sum(hits) / len(targets))
            dcg = sum(1 / math.log2(r + 2) for r, hit in enumerate(hits) if hit)
            ideal = sum(1 / math.log2(r + 2) for r in range(min(len(targets), k)))
            ndcgs.append(dcg / ideal)
    return {f"{split}/recall@{k}": sum(recalls) / count, f"{split}/ndcg@{k}": sum(ndcgs) / count}


def parts_before(split: str) -> tuple[str, ...]:
    """The splits whose positives are observed before ``split`` is ranked."""
    return ("train", "val") if split == "test" else ("train",)


def independent_p3(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int, rows: np.ndarray) -> np.ndarray:
    """``[len(rows), num_items]``: for each user of ``rows``, where a walk user -> item -> user ->
    item over the distinct pairs ends, each step uniform, over its maximum. Every path of the
    walk is enumerated (no matrix product: on Gowalla a dense one would not fit in memory)."""
    pairs = sorted(set(zip(users.tolist(), items.tolist())))
    items_of: list[list[int]] = [[] for _ in range(num_users)]
    users_of: list[list[int]] = [[] for _ in range(num_items)]
    for u, i in pairs:
        items_of[u].append(i)
        users_of[i].append(u)
    out = np.zeros((len(rows), num_items))
    for row, u in enumerate(rows.tolist()):
        for i in items_of[u]:
            for v in users_of[i]:
                out[row, items_of[v]] += 1.0 / (len(items_of[u]) * len(users_of[i]) * len(items_of[v]))  # v's items: distinct
        top = out[row].max()
        out[row] /= top if top > 0 else 1.0
    return out


def independent_log_prior(data, half_life_days: float | None, split: str = "test") -> np.ndarray:
    """``[N]`` log(1 + clicks before ``split``'s period), each click weighted 0.5 per half-life of age."""
    parts = [data.splits[name].positives() for name in parts_before(split)]
    items = np.concatenate([p.item.numpy() for p in parts])
    weight = np.ones(len(items))
    if half_life_days is not None:
        times = np.concatenate([p.time.numpy() for p in parts])
        weight = 0.5 ** ((times.max() - times) / (half_life_days * 86_400))
    counts = np.zeros(data.num_items)
    np.add.at(counts, items, weight)
    return np.log1p(counts)


def assert_matches_brute_force(metrics: dict[str, float], run_dir: str | Path, k: int = 10) -> None:
    """The run's test metrics equal the brute force's, to float32 rounding."""
    expected = brute_force_test_metrics(run_dir, k)
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-6), f"{name}: run {metrics[name]}, brute force {value}"
