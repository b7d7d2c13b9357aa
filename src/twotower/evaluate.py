"""``twotower-evaluate RUN [--ckpt best|last] [--split test|val] [--covisit-weight W ...] [--export [DIR]]``:
the metrics of a checkpoint, computed again from its rebuilt run. On test with the run's own
settings they are compared with the run's ``results.json``; with ``--covisit-weight`` the same
checkpoint ranks once per weight of the co-visitation score (:mod:`twotower.covisit`), on
validation to choose it (the weight with the best monitored metric is named), on test to report
what a run with that ``model.covisit_weight`` tests at (the weight changes ranking only, not
training). With ``--export`` the test users are answered by the run's export instead
(:class:`~twotower.retrieval.Retriever`, what ``twotower-serve`` answers with), and those
metrics are compared with ``results.json``: the export serves what was tested."""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from twotower.cli import is_refusal, report
from twotower.covisit import is_weight
from twotower.metric_names import METRIC_NAMES
from twotower.metrics import per_user_metrics
from twotower.report import format_table
from twotower.rerank import covisit_table, rank, rank_by_covisit_weight, tested_user_count
from twotower.restore import load_run, run_dir_of
from twotower.retrieval import Retriever, read_json
from twotower.wiring import Run

SPLITS = ("test", "val")
EXPORT_TOLERANCE = 1e-4  # served metrics against results.json (near-ties may swap)
SERVED_BATCH = 1024  # users per request when an export answers the test users


def evaluate(path: str | os.PathLike, which: str = "best") -> tuple[dict[str, float], dict[str, float]]:
    """``(metrics, results.json)``: the checkpoint's test metrics, recomputed, and the run's saved ones."""
    ckpt_path, run, _ = load_run(path, which)
    return rank(run, "test"), saved_test_metrics(ckpt_path)


def saved_test_metrics(ckpt_path) -> dict[str, float]:
    """The test metrics in the ``results.json`` of the checkpoint's run ({} without one)."""
    results_file = run_dir_of(ckpt_path) / "results.json"
    saved = read_json(results_file) if results_file.is_file() else {}
    return {k: v for k, v in saved.items() if k.startswith("test/")}


def served(run: Run, export_dir: str | os.PathLike) -> tuple[dict[str, float], int, float]:
    """``(metrics, users, seconds)``: the test metrics of the export's answers (top ``max(eval.ks)``,
    each user's training items left out) for the test users the run ranked, how many, and the
    time the answers took (requests of ``SERVED_BATCH`` users)."""
    retriever, data = Retriever(export_dir), run.data
    if retriever.item_ids != data.item_ids.tolist() or retriever.user_ids != [str(u) for u in data.user_ids.tolist()]:
        raise ValueError(f"{export_dir}: its users or items are not those of this run's data; expected an export of this run")
    es, k = data.eval_sets["test"], max(run.module.ks)
    count = tested_user_count(run)
    user_ids = [retriever.user_ids[u] for u in es.users[:count].tolist()]
    row_of = {str(item): row for row, item in enumerate(retriever.item_ids)}
    hits = torch.zeros(count, k, dtype=torch.bool)
    started = time.perf_counter()
    answers = [a for s in range(0, count, SERVED_BATCH) for a in retriever.recommend(user_ids[s : s + SERVED_BATCH], k=k)]
    seconds = time.perf_counter() - started
    for u, answer in enumerate(answers):
        rows = np.array([row_of[str(item["id"])] for item in answer], dtype=np.int64)
        hits[u, : len(rows)] = torch.from_numpy(np.isin(rows, es.target_items[es.target_ptr[u] : es.target_ptr[u + 1]].numpy()))
    per_user = per_user_metrics(hits, es.target_ptr[1 : count + 1] - es.target_ptr[:count], run.module.ks)
    return {f"test/{name}": values.mean().item() for name, values in per_user.items()}, count, seconds


def _weight(text: str) -> float:
    value = float(text)
    if not is_weight(value):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number >= 0")
    return value


def evaluate_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="twotower-evaluate", description="Re-evaluate a checkpoint against results.json, "
                                "or rank with several co-visitation weights.")  # fmt: skip
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--ckpt", default="best", choices=["best", "last"])
    p.add_argument("--split", default="test", choices=SPLITS, help="the users ranked (val: the run's validation carve)")
    p.add_argument("--covisit-weight", type=_weight, nargs="+", metavar="W",
                   help="rank once per weight of the co-visitation score (model.covisit_weight)")  # fmt: skip
    p.add_argument("--metric", default="recall@20", help="with --covisit-weight --split val: the metric that names the best weight")
    p.add_argument("--export", nargs="?", const="", metavar="DIR",
                   help="rank the test users through the run's export (default DIR: <run>/export), as twotower-serve answers")  # fmt: skip
    args = p.parse_args(argv)
    name, _, k = args.metric.partition("@")
    if name not in METRIC_NAMES or not k.isdigit():
        p.error(f"--metric {args.metric}: expected <{'|'.join(METRIC_NAMES)}>@K")
    if args.export is not None and (args.covisit_weight is not None or args.split != "test"):
        p.error("--export answers the test users with the export's own settings; expected no --covisit-weight or --split")
    if args.covisit_weight is None and args.split != "test":
        p.error("--split val ranks with --covisit-weight (a run's validation metrics are in its CSV log)")
    try:
        if args.export is not None:
            ckpt_path, run, _ = load_run(args.run, args.ckpt)
            export_dir = args.export or run_dir_of(ckpt_path) / "export"
            metrics, count, seconds = served(run, export_dir)
            saved = {k: v for k, v in saved_test_metrics(ckpt_path).items() if k in metrics}
        elif args.covisit_weight is None:
            metrics, saved = evaluate(args.run, args.ckpt)
        else:
            _, run, _ = load_run(args.run, args.ckpt)
            if int(k) not in run.module.ks:
                raise ValueError(f"--metric {args.metric}: the run ranks to eval.ks={run.module.ks}; expected one of those cut-offs")
            ranked = rank_by_covisit_weight(run, args.split, sorted(set(args.covisit_weight)))
    except Exception as err:
        if not is_refusal(err):
            raise
        return report(p.prog, err)
    if args.covisit_weight is not None:
        print(f"{args.split} metrics by co-visitation weight ({args.ckpt} checkpoint of {args.run}):")
        print(covisit_table(ranked, args.split, run.module.ks))
        if args.split == "val":  # a weight is chosen on validation only; ties go to the smaller (listed first)
            best = max(ranked, key=lambda w: ranked[w][f"val/{args.metric}"])
            print(f"best val {args.metric}: covisit_weight={best:g}")
        return 0
    if args.export is not None:
        print(f"answered by {export_dir}: {count} test users in {seconds:.1f} s "
              f"({1000 * seconds / max(count, 1):.2f} ms per user, requests of {SERVED_BATCH})")  # fmt: skip
    print(format_table(metrics, "test"))
    if not saved:
        print("no test metrics in results.json to compare with")
        return 1
    diffs = {k: abs(metrics[k] - v) if k in metrics else float("inf") for k, v in saved.items()}
    worst = max(diffs, key=diffs.get)
    print(f"largest absolute difference from results.json: {diffs[worst]:.3g} ({worst}; {len(diffs)} metrics)")
    # The export scores in FAISS and numpy, the run in torch: two items whose float32 scores tie
    # within rounding may come in either order, which moves a metric by about 1 / users per swap.
    return 0 if diffs[worst] <= (EXPORT_TOLERANCE if args.export is not None else 1e-6) else 1


if __name__ == "__main__":
    raise SystemExit(evaluate_main())
