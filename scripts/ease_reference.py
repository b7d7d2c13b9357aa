"""EASE (Steck, WWW 2019) on exactly the split the platform trains and tests on, as a
reference point for the two-tower results in docs/RESULTS.md.

EASE is a closed-form item-item model, not a two-tower one: B = argmin ||X - XB||^2 +
lambda ||B||^2 with diag(B) = 0, scores X B. It needs a dense items x items inverse, so
it is only for catalogues of a few tens of thousands of items.

    python scripts/ease_reference.py --seeds 1 2 3 --lambdas 100 250 500

Overrides after ``--`` go to the platform's config (default: the RecBole protocol).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from twotower.config import build, compose_config
from twotower.metrics import per_user_metrics
from twotower.wiring import build_datamodule

MAX_ITEMS = 30_000  # a dense float64 items x items inverse of this size is 7 GB


def ease_scores(train: np.ndarray, lam: float) -> np.ndarray:
    """``train``: ``[U, I]`` 0/1 -> ``[U, I]`` scores ``X B``."""
    gram = train.T @ train
    gram[np.diag_indices_from(gram)] += lam
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)
    weights[np.diag_indices_from(weights)] = 0.0
    return train @ weights


def evaluate(scores: np.ndarray, seen: np.ndarray, targets: np.ndarray, ks: list[int]) -> dict[str, float]:
    """Full ranking with ``seen`` masked; the platform's metric definitions, over users with targets."""
    users = np.flatnonzero(targets.any(axis=1))
    masked = np.where(seen[users], -np.inf, scores[users])
    top = np.argsort(-masked, axis=1, kind="stable")[:, : max(ks)]
    hits = torch.as_tensor(targets[users[:, None], top])
    metrics = per_user_metrics(hits, torch.as_tensor(targets[users].sum(axis=1)), ks)
    return {name: float(values.mean()) for name, values in metrics.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--lambdas", type=float, nargs="+", default=[250.0])
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 50])
    parser.add_argument("overrides", nargs="*", default=["experiment=recbole_protocol"])
    args = parser.parse_args(argv)
    rows = []
    for seed in args.seeds:
        cfg = compose_config([*args.overrides, f"seed={seed}", "logger.wandb.mode=disabled"], output_dir=None)
        dm = build_datamodule(cfg, train_on=build(cfg.loss).trains_on)
        dm.setup("fit")
        data = dm.data
        num_users, num_items = len(data.user_ids), len(data.item_ids)
        if num_items > MAX_ITEMS:
            raise SystemExit(f"EASE needs a dense {num_items:,} x {num_items:,} inverse; this script stops at {MAX_ITEMS:,} items")

        def matrix(split: str) -> np.ndarray:
            pairs = data.splits[split].positives()
            out = np.zeros((num_users, num_items), dtype=np.float64)
            out[pairs.user.numpy(), pairs.item.numpy()] = 1.0
            return out

        train, val, test = matrix("train"), matrix("val"), matrix("test")
        for lam in args.lambdas:
            metrics = evaluate(ease_scores(train, lam), (train + val) > 0, test > 0, args.ks)
            rows.append((seed, lam, metrics))
            print(f"seed {seed} lambda {lam:g}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.split("@")[0] in ("recall", "ndcg")), flush=True)
    print("\nmean ± std over seeds")
    for lam in args.lambdas:
        values = [m for _, l, m in rows if l == lam]
        summary = {k: (np.mean([v[k] for v in values]), np.std([v[k] for v in values], ddof=1) if len(values) > 1 else 0.0) for k in values[0]}
        print(f"lambda {lam:g}: " + ", ".join(f"{k} {m:.4f} ± {s:.4f}" for k, (m, s) in summary.items() if k.split("@")[0] in ("recall", "ndcg")))


if __name__ == "__main__":
    main()
