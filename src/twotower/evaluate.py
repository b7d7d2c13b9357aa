"""``twotower-evaluate RUN [--ckpt best|last] [--split test|val] [--covisit-weight W ...]``: the
metrics of a checkpoint, computed again from its rebuilt run. On test with the run's own
settings they are compared with the run's ``results.json``; with ``--covisit-weight`` the same
checkpoint ranks once per weight of the co-visitation score (:mod:`twotower.covisit`), on
validation to choose it (the weight with the best monitored metric is named), on test to report
what a run with that ``model.covisit_weight`` tests at (the weight changes ranking only, not
training)."""

from __future__ import annotations

import argparse
import math
import os

import lightning as L

from twotower.cli import is_refusal, report
from twotower.loggers import quiet_lightning
from twotower.metric_names import METRIC_NAMES
from twotower.report import format_table
from twotower.restore import load_run, run_dir_of
from twotower.retrieval import read_json
from twotower.wiring import Run

SPLITS = ("test", "val")


def evaluate(path: str | os.PathLike, which: str = "best") -> tuple[dict[str, float], dict[str, float]]:
    """``(metrics, results.json)``: the checkpoint's test metrics, recomputed, and the run's saved ones."""
    ckpt_path, run, _ = load_run(path, which)
    metrics = rank(run, "test")
    results_file = run_dir_of(ckpt_path) / "results.json"
    saved = read_json(results_file) if results_file.is_file() else {}
    return metrics, {k: v for k, v in saved.items() if k.startswith("test/")}


def rank(run: Run, split: str) -> dict[str, float]:
    """The metrics of ``run``'s model ranking ``split``'s users (the run's own test-batch limit,
    e.g. debug=fast's, on test, so the same users are evaluated)."""
    if len(run.data.eval_sets[split].users) == 0:
        raise ValueError(f"{run.data.name} has no {split} users in this run (data.split.val_ratio=0?): expected a run with a {split} split")
    limit = run.cfg.trainer.get("limit_test_batches", None) if split == "test" else None
    quiet_lightning()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu",
                        enable_model_summary=False, **({"limit_test_batches": limit} if limit is not None else {}))  # fmt: skip
    if split == "test":
        trainer.test(run.module, datamodule=run.datamodule, verbose=False)
        return dict(run.module.test_metrics)
    trainer.validate(run.module, datamodule=run.datamodule, verbose=False)
    return dict(run.module.val_metrics)


def rank_by_covisit_weight(run: Run, split: str, weights: list[float]) -> dict[float, dict[str, float]]:
    """``split``'s metrics of ``run``'s model ranking with each co-visitation weight, exactly
    (as a run with that ``model.covisit_weight`` ranks, whatever its ``eval.backend``)."""
    run.module.eval_backend = "torch"
    ranked = {}
    for weight in weights:
        run.module.covisit_weight = weight
        ranked[weight] = rank(run, split)
    return ranked


def covisit_table(ranked: dict[float, dict[str, float]], split: str, ks: list[int]) -> str:
    """One row per weight: Recall and NDCG at each cut-off."""
    columns = [f"{name}@{k}" for name in ("recall", "ndcg") for k in ks]
    lines = ["covisit_weight" + "".join(c.rjust(12) for c in columns)]
    lines += [f"{w:<14g}" + "".join(f"{m[f'{split}/{c}']:12.4f}" for c in columns) for w, m in ranked.items()]
    return "\n".join(lines)


def _weight(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
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
    args = p.parse_args(argv)
    name, _, k = args.metric.partition("@")
    if name not in METRIC_NAMES or not k.isdigit():
        p.error(f"--metric {args.metric}: expected <{'|'.join(METRIC_NAMES)}>@K")
    if args.covisit_weight is None and args.split != "test":
        p.error("--split val ranks with --covisit-weight (a run's validation metrics are in its CSV log)")
    try:
        if args.covisit_weight is None:
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
    print(format_table(metrics, "test"))
    if not saved:
        print("no test metrics in results.json to compare with")
        return 1
    diffs = {k: abs(metrics[k] - v) if k in metrics else float("inf") for k, v in saved.items()}
    worst = max(diffs, key=diffs.get)
    print(f"largest absolute difference from results.json: {diffs[worst]:.3g} ({worst}; {len(diffs)} metrics)")
    return 0 if diffs[worst] <= 1e-6 else 1


if __name__ == "__main__":
    raise SystemExit(evaluate_main())
