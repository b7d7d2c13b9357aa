"""scripts/ease_reference.py: the EASE closed form satisfies its own optimality conditions."""

import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ease_reference.py"
spec = importlib.util.spec_from_file_location("ease_reference", SCRIPT)
ease_reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ease_reference)


def test_ease_weights_solve_the_constrained_ridge_regression():
    """B minimizes ||X - XB||^2 + lam ||B||^2 with diag(B) = 0: for every column j,
    (G + lam I) B[:, j] = G[:, j] on every row but j (the constraint's own row), G = X^T X."""
    rng = np.random.default_rng(0)
    train = (rng.random((40, 7)) < 0.3).astype(np.float64)
    lam = 2.0
    scores = ease_reference.ease_scores(train, lam)
    gram = train.T @ train
    weights = np.linalg.lstsq(train, scores, rcond=None)[0]  # scores = X B, X has full column rank here
    assert np.allclose(np.diag(weights), 0, atol=1e-9)
    lhs = (gram + lam * np.eye(7)) @ weights
    off_diagonal = ~np.eye(7, dtype=bool)
    assert np.allclose(lhs[off_diagonal], gram[off_diagonal], atol=1e-9)


def test_evaluate_masks_seen_items_and_counts_hits():
    scores = np.array([[0.9, 0.8, 0.1, 0.0], [0.1, 0.2, 0.3, 0.4]])
    seen = np.array([[True, False, False, False], [False, False, False, False]])
    targets = np.array([[False, True, False, True], [False, False, False, False]])  # user 2 has none: left out
    metrics = ease_reference.evaluate(scores, seen, targets, ks=[1, 2])
    # User 1: item 0 masked, ranking 1, 2, 3: hit at rank 1, miss at rank 2; 2 targets.
    assert metrics["recall@1"] == 0.5 and metrics["recall@2"] == 0.5
    assert metrics["ndcg@1"] == 1.0
