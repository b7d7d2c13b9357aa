"""What Lightning's progress bar costs per training step, measured by alternating runs.

Runs of one configuration on a small shared machine drift by 10-20 % within minutes, more
than the cost measured here; so the variants (no bar, a bar updated every N steps) run in
turns, ``--repeats`` rounds, each a fresh model trained ``1 + --epochs`` epochs (the first a
warm-up), and the table gives the 25th percentile and median of the per-epoch time per step::

    .venv/bin/python scripts/progress_bar_cost.py --refresh 1 20 --repeats 3 > /dev/null

The bars write to stdout (Lightning's default); the table goes to stderr.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("overrides", nargs="*", help="config overrides (default: the two_tower listwise in-batch run on ML-100K)")
    p.add_argument("--refresh", type=int, nargs="+", default=[1, 20], help="refresh rates to compare with no bar")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.epochs < 1 or min(args.refresh) < 1:
        p.error("--repeats, --epochs and every --refresh must be >= 1")

    import lightning as L
    from lightning.pytorch.callbacks import TQDMProgressBar

    from twotower.config import compose_config
    from twotower.wiring import build_run

    template = build_run(compose_config(["logger.wandb.mode=disabled", *args.overrides]))
    dm = template.datamodule
    steps = len(dm.train_dataloader())

    class EpochTimes(L.Callback):
        def __init__(self):
            self.ms_per_step: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.ms_per_step.append((time.perf_counter() - self.start) / steps * 1000)

    variants = [0, *args.refresh]  # 0: no bar
    times: dict[int, list[float]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for refresh in variants:
            module = copy.deepcopy(template.module)  # each variant from the same initial weights
            timer = EpochTimes()
            trainer = L.Trainer(
                max_epochs=1 + args.epochs, limit_val_batches=0, logger=False, enable_checkpointing=False,
                enable_model_summary=False, accelerator="cpu", devices=1, enable_progress_bar=refresh > 0,
                callbacks=[timer] + ([TQDMProgressBar(refresh_rate=refresh)] if refresh else []),
            )  # fmt: skip
            trainer.fit(module, datamodule=dm)
            times[refresh].extend(timer.ms_per_step[1:])
    print(f"{steps} steps per epoch; ms per step over {args.repeats} x {args.epochs} epochs", file=sys.stderr)
    print(f"{'progress bar':<28}{'p25':>8}{'median':>8}", file=sys.stderr)
    for refresh in variants:
        ordered = sorted(times[refresh])
        label = "none" if refresh == 0 else f"updated every {refresh} steps"
        print(f"{label:<28}{ordered[len(ordered) // 4]:>8.2f}{statistics.median(ordered):>8.2f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
