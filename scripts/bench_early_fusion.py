"""Evaluation cost of early fusion vs. two towers as the catalogue grows.

    .venv/bin/python scripts/bench_early_fusion.py --out bench-early-fusion.json
    .venv/bin/python scripts/bench_early_fusion.py --sizes 1000 10000 --out /tmp/quick.json  # seconds

What is timed, per catalogue size N: one batch of ``--users`` users (default
256) ranked against the whole catalogue, as the full-ranking evaluation does
it (``RetrievalModule._eval_step``): encode the users, ``score_matrix`` against
the catalogue's item representations, top-``--topk`` (default 100). Item
representations are computed once beforehand and not timed: for the two-tower
model that is the offline index build; for early fusion it is only the
embedding lookup, the MLP still runs per (user, item) pair.

Both models are random-initialized (the cost does not depend on training) and
built directly from synthetic fitted features, not through Hydra: each side
has an ``id`` feature of the right cardinality and one categorical feature,
embeddings of ``--embedding-dim`` (32). Two towers: MLP [128, 64] per tower,
score = inner product. Early fusion: the same embeddings, one MLP [128, 64, 1]
over their concatenation (its first layer is split by side, the best case for
early fusion; see ``EarlyFusionModel.score_matrix``).

A point is skipped when the time extrapolated linearly from the previous size
exceeds ``--budget`` seconds (default 60). Times are the best of several
runs (see ``time_ranking``; the minimum, since other jobs on a shared machine
only add time). Prints a table and writes the figures as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time

import torch

from twotower.models import EarlyFusionModel, TwoTowerModel


def fitted_features(num_users: int, num_items: int) -> dict[str, list[dict]]:
    """Synthetic fitted features: an ID (one row per value plus the unknown row) and a categorical."""
    return {
        "user": [
            {"name": "user_id", "kind": "id", "cardinality": num_users + 1},
            {"name": "occupation", "kind": "categorical", "cardinality": 22},
        ],
        "item": [
            {"name": "item_id", "kind": "id", "cardinality": num_items + 1},
            {"name": "genre", "kind": "categorical", "cardinality": 20},
        ],
    }


def feature_batch(ids: torch.Tensor, other: str, cardinality: int, id_name: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(len(ids))
    return {id_name: ids + 1, other: torch.randint(1, cardinality, (len(ids),), generator=g)}


@torch.inference_mode()
def encode_catalogue(model: torch.nn.Module, num_items: int, chunk: int = 1 << 16) -> torch.Tensor:
    parts = []
    for start in range(0, num_items, chunk):
        ids = torch.arange(start, min(start + chunk, num_items))
        parts.append(model.encode_items(feature_batch(ids, "genre", 20, "item_id")))
    return torch.cat(parts)


@torch.inference_mode()
def rank_once(model: torch.nn.Module, user_feats: dict, item_reps: torch.Tensor, topk: int) -> float:
    start = time.perf_counter()
    scores = model.score_matrix(model.encode_users(user_feats), item_reps)  # [U, N]
    torch.topk(scores, min(topk, scores.shape[1]), dim=1)
    return time.perf_counter() - start


def time_ranking(model, user_feats, item_reps, topk: int, repeats: int) -> float:
    """Best (minimum) seconds: the machine may be shared, and other jobs only add time.
    A short run is warmed up once, then repeated ``repeats`` times and
    at least half a second in all (at most 50 runs); a run over a second is repeated up to
    twice, one over ten seconds runs once."""
    first = rank_once(model, user_feats, item_reps, topk)
    if first > 10.0:
        return first
    if first > 1.0:
        return min([first] + [rank_once(model, user_feats, item_reps, topk) for _ in range(min(repeats, 2) - 1)])
    times: list[float] = []
    while len(times) < 50 and (len(times) < repeats or sum(times) < 0.5):
        times.append(rank_once(model, user_feats, item_reps, topk))
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--topk", type=int, default=100)
    parser.add_argument("--embedding-dim", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=60.0, help="skip a point estimated to take longer (s)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default="bench-early-fusion.json")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    rows, last = [], {"two_tower": None, "early_fusion": None}  # (N, seconds) of the last measured point
    for num_items in sorted(args.sizes):
        fitted = fitted_features(args.users, num_items)
        models = {
            "two_tower": TwoTowerModel(fitted, args.embedding_dim, mlp=[128, 64]),
            "early_fusion": EarlyFusionModel(fitted, args.embedding_dim, mlp=[128, 64]),
        }
        user_feats = feature_batch(torch.arange(args.users), "occupation", 22, "user_id")
        row = {"num_items": num_items, "users": args.users, "pairs": args.users * num_items}
        for name, model in models.items():
            model.eval()
            prev = last[name]
            estimate = None if prev is None else prev[1] * num_items / prev[0]
            if estimate is not None and estimate > args.budget:
                row[name] = {"skipped": True, "estimated_s": estimate}
                continue
            start = time.perf_counter()
            item_reps = encode_catalogue(model, num_items)
            encode_s = time.perf_counter() - start
            seconds = time_ranking(model, user_feats, item_reps, args.topk, args.repeats)
            del item_reps
            last[name] = (num_items, seconds)
            row[name] = {"ms": seconds * 1e3, "catalogue_encode_ms": encode_s * 1e3, "pairs_per_s": row["pairs"] / seconds}
        tt, ef = row["two_tower"], row["early_fusion"]
        row["ratio"] = ef["ms"] / tt["ms"] if "ms" in tt and "ms" in ef else None
        rows.append(row)
        print_row(row, header=len(rows) == 1)

    result = {
        "what": f"score {args.users} users against N items and take the top {args.topk} (item representations precomputed)",
        "two_tower": "embeddings -> MLP [128, 64] per tower, inner product",
        "early_fusion": "same embeddings, one MLP [128, 64, 1] over the concatenation",
        "embedding_dim": args.embedding_dim,
        "budget_s": args.budget,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "rows": rows,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\n{torch.get_num_threads()} CPU threads, torch {torch.__version__}; written to {args.out}")


def print_row(row: dict, header: bool) -> None:
    if header:
        print(f"{'N':>9} | {'two-tower ms':>12} | {'early-fusion ms':>16} | {'ratio':>7}")
        print(f"{'-' * 9}-+-{'-' * 12}-+-{'-' * 16}-+-{'-' * 7}")

    def cell(entry: dict) -> str:
        return f"{entry['ms']:.1f}" if "ms" in entry else f"skip (~{entry['estimated_s']:.0f} s)"

    ratio = f"{row['ratio']:.0f}x" if row["ratio"] is not None else "-"
    print(f"{row['num_items']:>9} | {cell(row['two_tower']):>12} | {cell(row['early_fusion']):>16} | {ratio:>7}", flush=True)


if __name__ == "__main__":
    main()
