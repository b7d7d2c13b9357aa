"""Experiment loggers: CSV always; Weights & Biases through Lightning's logger,
in a mode decided before the Trainer is built (an online logger with no
reachable server would make ``fit`` fail, it never falls back by itself)."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger

WANDB_MODES = ("auto", "online", "offline", "disabled")


def resolve_wandb_mode(mode: str, environ: dict | None = None) -> str:
    """``auto`` -> ``online`` when ``WANDB_API_KEY`` is set, else ``offline``
    (offline runs write locally and can be uploaded later with ``wandb sync``)."""
    environ = os.environ if environ is None else environ
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.wandb.mode={mode!r}: expected one of {list(WANDB_MODES)}")
    if mode == "auto":
        return "online" if environ.get("WANDB_API_KEY") else "offline"
    return mode


def build_loggers(cfg: dict, run_dir: Path, config_to_log: dict) -> list[Logger]:
    """``cfg``: the ``logger`` config; ``config_to_log``: the resolved run config."""
    loggers: list[Logger] = []
    if cfg.get("csv", {}).get("enabled", True):
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv", version=""))
    wb = cfg.get("wandb", {})
    if wb.get("enabled", False):
        mode = resolve_wandb_mode(wb.get("mode", "auto"))
        if mode != "disabled":
            from lightning.pytorch.loggers import WandbLogger

            # mode= goes straight to wandb.init; offline=True would set WANDB_MODE for the
            # whole process and leak into later jobs of a multirun.
            logger = WandbLogger(
                project=wb.get("project", "twotower"),
                entity=wb.get("entity"),
                group=wb.get("group"),
                job_type=wb.get("job_type", "train"),
                tags=list(wb.get("tags") or []),
                save_dir=str(run_dir),
                mode=mode,
            )
            logger.log_hyperparams(config_to_log)
            loggers.append(logger)
    return loggers


def finish_wandb() -> None:
    """Close the W&B run, if one is open, so the next job of a multirun starts its own."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish()
