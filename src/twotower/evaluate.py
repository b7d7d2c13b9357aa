"""``twotower-evaluate RUN [--ckpt best|last]``: the test metrics of a checkpoint, computed
again from its rebuilt run, and compared with the run's ``results.json``."""

from __future__ import annotations

import argparse
import os

import lightning as L

from twotower.cli import is_refusal, report
from twotower.loggers import quiet_lightning
from twotower.report import format_table
from twotower.restore import load_run, run_dir_of
from twotower.retrieval import read_json


def evaluate(path: str | os.PathLike, which: str = "best") -> tuple[dict[str, float], dict[str, float]]:
    """``(metrics, results.json)``: the checkpoint's test metrics, recomputed, and the run's saved ones."""
    ckpt_path, run, _ = load_run(path, which)
    # The run's own test-batch limit (e.g. debug=fast's), so the same users are evaluated.
    limit = run.cfg.trainer.get("limit_test_batches", None)
    quiet_lightning()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu",
                        enable_model_summary=False, **({"limit_test_batches": limit} if limit is not None else {}))  # fmt: skip
    trainer.test(run.module, datamodule=run.datamodule, verbose=False)
    results_file = run_dir_of(ckpt_path) / "results.json"
    saved = read_json(results_file) if results_file.is_file() else {}
    return dict(run.module.test_metrics), {k: v for k, v in saved.items() if k.startswith("test/")}


def evaluate_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="twotower-evaluate", description="Re-evaluate a checkpoint against results.json.")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--ckpt", default="best", choices=["best", "last"])
    args = p.parse_args(argv)
    try:
        metrics, saved = evaluate(args.run, args.ckpt)
    except Exception as err:
        if not is_refusal(err):
            raise
        return report(p.prog, err)
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
