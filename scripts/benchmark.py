"""Throughput benchmark on the bundled MovieLens-100K (CPU or whatever Lightning picks).

    .venv/bin/python scripts/benchmark.py --out benchmark-results.json   # full (a few minutes on 2 cores)
    .venv/bin/python scripts/benchmark.py --quick --out /tmp/quick.json  # smoke run (seconds)

Per config (composed with ``compose_config``) it measures: batch construction
alone (iterating ``train_dataloader()``, no model); training samples/s of the
real ``training_step`` inside ``Trainer.fit`` (no logger, checkpoints, progress
bar or validation; one warm-up epoch, then timed epochs); and full-ranking
evaluation wall time (``trainer.validate``/``trainer.test``). Medians over
``--repeats``. Prints a table and writes the same figures as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("WANDB_MODE", "disabled")

import lightning as L  # noqa: E402
import torch  # noqa: E402

from twotower.config import build, compose_config  # noqa: E402
from twotower.module import RetrievalModule  # noqa: E402
from twotower.train import build_datamodule  # noqa: E402

CONFIGS = {
    "two_tower in_batch+logQ (listwise)": [],
    "two_tower uniform (listwise)": ["sampler=uniform"],
    "matrix_completion (mse)": ["model=matrix_completion"],
}
COMMON = ["logger.wandb.mode=disabled"]


class EpochTimer(L.Callback):
    """Wall time and examples of every training epoch."""

    def __init__(self) -> None:
        self.epochs: list[tuple[float, int]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start, self._samples = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._samples += len(batch["rating"])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs.append((time.perf_counter() - self._start, self._samples))


def setup(overrides: list[str], out_dir: str):
    """The run ``train()`` would build: config, DataModule (set up), RetrievalModule."""
    cfg = compose_config(COMMON + overrides, output_dir=out_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    loss = build(cfg.loss)
    dm = build_datamodule(cfg, train_on=loss.trains_on)
    dm.setup("fit")
    model = build(cfg.model.net)(dm.data)
    module = RetrievalModule(model, loss, build(cfg.model.optimizer), list(cfg.eval.ks), dm.data.item_counts)
    return cfg, dm, module


def trainer(cfg, out_dir: str, **kwargs) -> L.Trainer:
    common = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return build(cfg.trainer, default_root_dir=out_dir, **common, **kwargs)


def bench_batches(dm, repeats: int, limit: int | None) -> dict:
    def one_pass() -> tuple[float, int, int]:
        start, n, b = time.perf_counter(), 0, 0
        for batch in dm.train_dataloader():
            n, b = n + len(batch["rating"]), b + 1
            if limit and b >= limit:
                break
        return time.perf_counter() - start, b, n

    one_pass()  # warm-up
    runs = [one_pass() for _ in range(repeats)]
    sec = statistics.median(r[0] for r in runs)
    return {"seconds": sec, "batches": runs[0][1], "batches_per_s": runs[0][1] / sec, "samples_per_s": runs[0][2] / sec}


def bench_config(name: str, overrides: list[str], args) -> dict:
    limit = 5 if args.quick else None
    fit_rates, fit_secs, evals = [], [], {"val": [], "test": []}
    for rep in range(args.repeats):
        with tempfile.TemporaryDirectory() as out_dir:
            cfg, dm, module = setup(overrides, out_dir)
            if rep == 0:
                towers = {t: sum(p.numel() for p in getattr(module.model, t).parameters())
                          for t in ("user_tower", "item_tower")}  # fmt: skip
                info = {"overrides": overrides, "batch_size": dm.batch_size, "train_examples": len(dm.train_examples.user),
                        "num_users": dm.data.num_users, "num_items": dm.data.num_items,
                        "params": towers, "batch_construction": bench_batches(dm, args.repeats, limit)}  # fmt: skip
            timer = EpochTimer()
            fit = trainer(cfg, out_dir, max_epochs=1 + args.epochs, limit_val_batches=0, callbacks=[timer],
                          limit_train_batches=limit or 1.0)  # fmt: skip
            fit.fit(module, datamodule=dm)
            timed = timer.epochs[1:]  # the first epoch is the warm-up
            fit_secs.append(sum(t for t, _ in timed) / len(timed))
            fit_rates.append(sum(n for _, n in timed) / sum(t for t, _ in timed))
            ev = trainer(cfg, out_dir)
            for split, run in (("val", ev.validate), ("test", ev.test)):
                users = len(dm.data.eval_sets[split].users)
                start = time.perf_counter()
                run(module, datamodule=dm, verbose=False)
                sec = time.perf_counter() - start
                evals[split].append({"seconds": sec, "users": users, "scores_per_s": users * dm.data.num_items / sec})
    info["train"] = {"samples_per_s": statistics.median(fit_rates), "epoch_seconds": statistics.median(fit_secs),
                     "timed_epochs": args.epochs, "repeats": args.repeats}  # fmt: skip
    for split, runs in evals.items():
        sec = statistics.median(r["seconds"] for r in runs)
        info[split] = {"seconds": sec, "users": runs[0]["users"], "scores_per_s": runs[0]["users"] * info["num_items"] / sec}
    print(f"done: {name}", flush=True)
    return info


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def table(results: dict) -> str:
    cols = [("user/item params", 17), ("batches/s", 10), ("build samp/s", 13), ("train samp/s", 13),
            ("epoch s", 8), ("val s", 7), ("test s", 7), ("test scores/s", 14)]  # fmt: skip
    head = f"{'config':36} " + " ".join(f"{c:>{w}}" for c, w in cols)
    rows = [head, "-" * len(head)]
    for name, r in results.items():
        bc, p = r["batch_construction"], r["params"]
        rows.append(f"{name:36} {p['user_tower']:>8,}/{p['item_tower']:<8,} {bc['batches_per_s']:>10.1f} "
                    f"{bc['samples_per_s']:>13,.0f} {r['train']['samples_per_s']:>13,.0f} {r['train']['epoch_seconds']:>8.3f} "
                    f"{r['val']['seconds']:>7.3f} {r['test']['seconds']:>7.3f} {r['test']['scores_per_s']:>14,.0f}")  # fmt: skip
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmark-results.json", help="JSON results path")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions; the median is reported")
    parser.add_argument("--epochs", type=int, default=3, help="timed training epochs per repetition (after 1 warm-up)")
    parser.add_argument("--quick", action="store_true", help="1 repeat, 1 timed epoch of 5 batches")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats, args.epochs = 1, 1
    for noise in (".*does not have many workers", ".*LeafSpec", ".*`IterableDataset` has `__len__`"):
        warnings.filterwarnings("ignore", noise)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.set_float32_matmul_precision("high")  # as twotower-train does

    load_before = os.getloadavg()  # other processes on the machine skew every figure
    results = {name: bench_config(name, overrides, args) for name, overrides in CONFIGS.items()}
    env = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "torch": torch.__version__,
           "lightning": L.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "cpu": cpu_model(), "cuda": torch.cuda.is_available(), "quick": args.quick,
           "loadavg_1min_before_after": [load_before[0], os.getloadavg()[0]]}  # fmt: skip
    print(f"\nMovieLens-100K, {env['cpu']}, {env['threads']} threads, torch {env['torch']}, {env['date']}"
          f"{' (QUICK)' if args.quick else ''}; batch size {sorted({r['batch_size'] for r in results.values()})}; "
          f"medians of {args.repeats} repeat(s); load average before/after "
          f"{env['loadavg_1min_before_after']}\n{table(results)}")  # fmt: skip
    with open(args.out, "w") as f:
        json.dump({"environment": env, "results": results}, f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
