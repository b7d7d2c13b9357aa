"""An independent evaluation of a trained run, for end-to-end tests to compare the run's own
test metrics with: the run's best checkpoint rebuilt, every test user scored with every
item, seen items removed from a full sort, and Recall@K / NDCG@K written out user by user
(the definitions in twotower.metrics). Nothing of the module's ranking or metric code."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from twotower.restore import load_run


def brute_force_test_metrics(run_dir: str | Path, k: int) -> dict[str, float]:
    """``{"test/recall@K": ..., "test/ndcg@K": ...}`` over the test users the run evaluated:
    all of them, or the first ``limit_test_batches`` chunks of users when the run was limited."""
    _, run, _ = load_run(run_dir)
    data, dm = run.data, run.datamodule
    es = data.eval_sets["test"]
    count = len(es.users)
    limit = run.cfg.trainer.get("limit_test_batches")
    if isinstance(limit, int) and not isinstance(limit, bool):
        count = min(count, limit * dm.test_dataloader().dataset.chunk)
    with torch.no_grad():
        items = run.model.encode_items(dm.packed("item").gather(torch.arange(data.num_items)))
    recalls, ndcgs = [], []
    for start in range(0, count, 256):  # bounded [256, N] scores
        users = es.users[start : min(start + 256, count)]
        with torch.no_grad():
            scores = run.model.score_matrix(run.model.encode_users(dm.packed("user").gather(users)), items).double().numpy()
        for row, u in enumerate(range(start, start + len(users))):
            targets = set(es.target_items[es.target_ptr[u] : es.target_ptr[u + 1]].tolist())
            seen = set(es.seen_items[es.seen_ptr[u] : es.seen_ptr[u + 1]].tolist())
            best = np.argsort(-scores[row], kind="stable")[: k + len(seen)].tolist()  # k survive the seen ones
            hits = [i in targets for i in [i for i in best if i not in seen][:k]]
            recalls.append(sum(hits) / len(targets))
            dcg = sum(1 / math.log2(r + 2) for r, hit in enumerate(hits) if hit)
            ideal = sum(1 / math.log2(r + 2) for r in range(min(len(targets), k)))
            ndcgs.append(dcg / ideal)
    return {f"test/recall@{k}": sum(recalls) / count, f"test/ndcg@{k}": sum(ndcgs) / count}


def assert_matches_brute_force(metrics: dict[str, float], run_dir: str | Path, k: int = 10) -> None:
    """The run's test metrics equal the brute force's, to float32 rounding."""
    expected = brute_force_test_metrics(run_dir, k)
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-6), f"{name}: run {metrics[name]}, brute force {value}"
