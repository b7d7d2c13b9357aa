"""Run and sweep bookkeeping: unique run directories, a ``status.json`` per run,
and a sweep summary whose failure count becomes the command's exit status."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from twotower.fsutil import write_json_atomic
from twotower.loggers import log_comparison_table, redact_secrets, resolve_wandb_mode

log = logging.getLogger("twotower")

# Failures seen by the last multirun of this process (read by the console script for its exit status).
LAST_SWEEP = {"jobs": 0, "failed": 0}


def new_run_id() -> str:
    """Date, time to the microsecond and a random suffix: two jobs started in the
    same second (or microsecond, on another machine) never share a directory.
    ``TWOTOWER_RUN_ID``, when set, is used instead: every rank that torchrun starts
    runs the command itself and must find the same run directory."""
    given = os.environ.get("TWOTOWER_RUN_ID")
    if given:
        return safe_dirname(given)
    return f"{datetime.now():%Y-%m-%d_%H-%M-%S_%f}_{secrets.token_hex(2)}"


def safe_dirname(text: str, max_len: int = 180) -> str:
    """A sweep subdirectory name from ``key=value,key=value``: path separators and
    odd characters replaced, long names cut (readable, never nested)."""
    name = re.sub(r"[^A-Za-z0-9._=,+\-]", "_", text) or "default"
    return name[:max_len]


def register_resolvers() -> None:
    """``${run_id:}``, ``${dirname:...}`` and ``${first_set:...}`` for ``conf/train.yaml``'s Hydra section."""
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", new_run_id, use_cache=True)
    if not OmegaConf.has_resolver("dirname"):
        OmegaConf.register_new_resolver("dirname", safe_dirname)
    if not OmegaConf.has_resolver("first_set"):
        # `${first_set:${resume},default}`: a resumed run writes into its own directory.
        OmegaConf.register_new_resolver("first_set", lambda given, default: given if given else default)


def write_status(run_dir: Path, status: str, started: float, overrides: list[str], error: BaseException | None = None) -> None:
    """``status.json``: ``running`` | ``completed`` | ``failed``, with the error if any."""
    payload = {
        "status": status,
        "error": None if error is None else f"{type(error).__name__}: {error}",
        "traceback": None if error is None else "".join(traceback.format_exception(error))[-5000:],
        "duration_s": round(time.time() - started, 3),
        "overrides": redact_secrets(overrides),
    }
    write_json_atomic(run_dir / "status.json", payload)


def read_status(run_dir: Path) -> dict[str, Any]:
    """A run's ``status.json``, or ``{}`` when it has none (or an unreadable one)."""
    try:
        return json.loads((Path(run_dir) / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def summarize_sweep(sweep_dir: Path) -> dict[str, Any]:
    """Read every job's ``status.json`` under ``sweep_dir``."""
    jobs = []
    for status_file in sorted(sweep_dir.glob("*/status.json")):
        s = json.loads(status_file.read_text())
        jobs.append({"dir": status_file.parent.name, "status": s["status"], "error": s.get("error")})
    failed = [j for j in jobs if j["status"] != "completed"]
    return {"jobs": len(jobs), "failed": len(failed), "failures": failed}


class SweepSummary(Callback):
    """At the end of a multirun: print which jobs failed, write
    ``sweep_summary.json`` in the sweep directory, remember the count."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        summary = summarize_sweep(sweep_dir)
        write_json_atomic(sweep_dir / "sweep_summary.json", summary)
        LAST_SWEEP.update(jobs=summary["jobs"], failed=summary["failed"])
        if summary["failed"]:
            log.error("sweep %s: %d of %d jobs failed", sweep_dir, summary["failed"], summary["jobs"])
            for job in summary["failures"]:
                log.error("  %s: %s", job["dir"], job["error"])
        else:
            log.info("sweep %s: all %d jobs completed", sweep_dir, summary["jobs"])
        if summary["jobs"] > summary["failed"]:
            self._report(config, sweep_dir)

    @staticmethod
    def _report(config: DictConfig, sweep_dir: Path) -> None:
        """The comparison report (``twotower-compare``) of the sweep, in
        ``<sweep>/comparison``, and as a W&B table in the sweep's group."""
        from twotower.compare import compare

        try:
            markdown, _ = compare([sweep_dir], sweep_dir / "comparison")
        except (FileNotFoundError, ValueError) as err:
            log.warning("no comparison report for %s: %s", sweep_dir, err)
            return
        log.info("comparison of the sweep's runs (%s):\n%s", sweep_dir / "comparison", markdown)
        wb = OmegaConf.to_container(config.logger.wandb, resolve=True) if "logger" in config else {}
        if wb.get("enabled") and resolve_wandb_mode(wb.get("mode", "auto")) != "disabled":
            log_comparison_table(sweep_dir / "comparison" / "comparison.csv", wb, group=wb.get("group") or sweep_dir.name)


def run_labels(cfg: DictConfig) -> dict[str, str]:
    """What a run is, for W&B tags and groups: the chosen data, model, loss and
    sampler (Hydra's group choices when Hydra runs the job, else read off the config)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
        labels = {g: str(choices.get(g)) for g in ("data", "model", "loss", "sampler")}
        if choices.get("experiment"):
            labels["experiment"] = str(choices.get("experiment"))
        return labels
    return {
        "data": str(cfg.data.name),
        "model": str(cfg.model.name),
        "loss": str(cfg.loss._target_).rsplit(".", 1)[-1],
        "sampler": str(cfg.sampler._target_).rsplit(".", 1)[-1],
    }


def sweep_name() -> str | None:
    """The sweep directory's name when this job is part of a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir).name
    return None
