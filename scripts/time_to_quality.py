"""Time-to-quality of training runs: the wall time until the validation metric first reached
a share (95%) of its best, read from each run's ``csv/metrics.csv`` (``time/elapsed_s``, the
seconds since the run started fitting, is logged with every validation).

    .venv/bin/python scripts/time_to_quality.py outputs/train/runs/<run> [...] [--metric val/recall@20] [--share 0.95]

Prints a markdown table for docs/BENCHMARKS.md: per run, the best value and its epoch, the
first epoch at or above ``share`` x best and its wall time, and the wall time of the last
validation. Exit status 2 with one line for a folder that is not a run or a run without the metric.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def time_to_quality(rows: list[dict], metric: str, share: float) -> dict:
    """``rows``: the CSV log's rows. The validations in order as ``(epoch, value, seconds)``;
    returns the best, the first reaching ``share`` of it, and the last validation."""
    points = [(int(r["epoch"]), float(r[metric]), float(r["time/elapsed_s"])) for r in rows if r.get(metric) and r.get("time/elapsed_s")]
    if not points:
        raise ValueError(f"no validation row with {metric} and time/elapsed_s")
    best = max(points, key=lambda p: p[1])
    reached = next(p for p in points if p[1] >= share * best[1])
    return {"best": best, "reached": reached, "last": points[-1]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--metric", default="val/recall@20")
    p.add_argument("--share", type=float, default=0.95)
    args = p.parse_args(argv)
    print(f"| run | best {args.metric} (epoch) | first >= {args.share:.0%} of best: epoch, wall time | last validation: epoch, wall time |")
    print("|---|---|---|---|")
    for run in args.runs:
        try:
            with open(run / "csv" / "metrics.csv", newline="") as file:
                found = time_to_quality(list(csv.DictReader(file)), args.metric, args.share)
        except (OSError, ValueError) as err:
            print(f"time_to_quality: error: {run}: {err}", file=sys.stderr)
            return 2
        (be, bv, _), (re, _, rt), (le, _, lt) = found["best"], found["reached"], found["last"]
        print(f"| {run.name} | {bv:.4f} ({be}) | {re}, {rt / 60:.1f} min | {le}, {lt / 60:.1f} min |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
