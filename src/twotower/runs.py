"""Run and sweep bookkeeping: unique run directories, a ``status.json`` per run, checks
that refuse a bad config before Hydra creates any folder, and a sweep summary (also
after an interrupted sweep) whose failure count becomes the command's exit status."""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from twotower.cli import USER_ERRORS, fail, redact_secrets
from twotower.config import build, check_config
from twotower.errors import ConfigError
from twotower.fsutil import write_json_atomic
from twotower.launch import relaunches_command
from twotower.wandb_runs import log_comparison_table, resolve_wandb_mode

log = logging.getLogger("twotower")

# Failures seen by the last multirun of this process (read by the console script for its exit status).
LAST_SWEEP = {"jobs": 0, "failed": 0}
# The multirun in progress: its folder, its config, whether this process created the folder.
ACTIVE_SWEEP: dict[str, Any] = {}
STATUSES = ("running", "completed", "failed", "interrupted")
def write_status(run_dir: Path, status: str, started: float, overrides: list[str], error: BaseException | None = None) -> None:
    """``status.json``: ``running`` | ``completed`` | ``failed`` | ``interrupted``, with the error if any."""
    assert status in STATUSES, status
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
    failed = [j for j in jobs if j["status"] != "completed"]  # failed, interrupted, or killed while running
    return {"jobs": len(jobs), "failed": len(failed), "failures": failed}


class RunHooks(Callback):
    """Checks before Hydra creates a folder, and the end of a multirun.

    ``on_run_start`` / ``on_multirun_start`` run after Hydra composed the config and before
    it creates the run or sweep folder: a config that cannot work is refused there, with one
    line and exit status 2, and leaves nothing behind (Hydra turns an exception raised by a
    callback into a warning, so the refusal exits itself). At the end of a multirun (or when
    it is interrupted, see :func:`finish_sweep`): print which jobs failed, write
    ``sweep_summary.json`` in the sweep directory, remember the count."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            if config.get("resume"):
                from twotower.checkpoints import resume_checkpoint  # Lightning: only when a run resumes

                resumed = resumed_config(config.resume, list(config.hydra.overrides.task))
                resume_checkpoint(Path(resumed.paths.output_dir))  # refuses when no checkpoint is intact
            else:
                check_config(config)
                build(config.loss)  # a loss checks its own parameters (temperature, margin, ...)
        except USER_ERRORS as err:
            fail("twotower-train", err)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            if config.get("resume"):
                raise ConfigError("resume= continues one run; it cannot be part of a sweep (-m)")
            if relaunches_command(config.trainer.get("strategy", "auto")):
                raise ConfigError(
                    f"trainer.strategy={config.trainer.get('strategy')} runs the whole command once per rank, so each "
                    "rank would run its own copy of the sweep; for sweeps use trainer=ddp_spawn (GPUs) or "
                    "trainer=ddp_cpu, one multi-device job at a time, or launch single runs with trainer=ddp"
                )
            check_config(config)  # the values every job shares; a swept value is checked by its job
        except USER_ERRORS as err:
            fail("twotower-train", err)
        sweep_dir = Path(config.hydra.sweep.dir)
        ACTIVE_SWEEP.update(dir=sweep_dir, config=config, created=not sweep_dir.exists(), log_dir=Path(config.paths.log_dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        finish_sweep()


def finish_sweep(interrupted: bool = False) -> None:
    """Summarize the multirun in progress (if any): ``sweep_summary.json``, the failures in the
    log and the comparison report of the jobs that completed; also after an interrupt."""
    if not ACTIVE_SWEEP:
        return
    sweep_dir, config = ACTIVE_SWEEP["dir"], ACTIVE_SWEEP["config"]
    ACTIVE_SWEEP.clear()
    summary = {**summarize_sweep(sweep_dir), "interrupted": interrupted}
    write_json_atomic(sweep_dir / "sweep_summary.json", summary)
    LAST_SWEEP.update(jobs=summary["jobs"], failed=summary["failed"])
    if interrupted:
        log.error("sweep %s interrupted: %d job(s) ran, %d completed", sweep_dir, summary["jobs"], summary["jobs"] - summary["failed"])
    elif summary["failed"]:
        log.error("sweep %s: %d of %d jobs failed", sweep_dir, summary["failed"], summary["jobs"])
    else:
        log.info("sweep %s: all %d jobs completed", sweep_dir, summary["jobs"])
    for job in summary["failures"]:
        log.error("  %s: %s%s", job["dir"], job["status"], f": {job['error']}" if job["error"] else "")
    if summary["jobs"] > summary["failed"]:
        _report(config, sweep_dir)


def discard_refused_sweep() -> None:
    """Remove the multirun's folder when this process created it and no job wrote anything
    there (a job's config was refused as Hydra composed it): a refused command leaves nothing."""
    if not ACTIVE_SWEEP:
        return
    sweep_dir, created, log_dir = ACTIVE_SWEEP["dir"], ACTIVE_SWEEP["created"], ACTIVE_SWEEP["log_dir"]
    ACTIVE_SWEEP.clear()
    if created and sweep_dir.is_dir() and {p.name for p in sweep_dir.iterdir()} <= {"multirun.yaml"}:
        (sweep_dir / "multirun.yaml").unlink(missing_ok=True)
        remove_empty_folders(sweep_dir, stop_at=log_dir)


def remove_empty_folders(folder: Path, stop_at: Path) -> None:
    """Remove ``folder`` and then each empty parent below ``stop_at`` (the folders a run or
    sweep created for itself); stop at the first that is not empty: nothing holding a file
    is ever removed."""
    folder, stop_at = Path(folder).resolve(), Path(stop_at).resolve()
    while folder != stop_at and stop_at in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


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


# What may change when a run resumes: how it reports, not what it computes.
REPORTING_KEYS = ("logger.", "trainer.enable_progress_bar", "progress_bar_refresh_steps")
RESUME_OVERRIDABLE = (*REPORTING_KEYS, "resume=", "hydra.")


def resumed_config(run_dir: str | os.PathLike, overrides: list[str]) -> DictConfig:
    """The config a run was started with (its ``config.yaml``), to continue it in
    ``run_dir``. Overrides other than logging ones are refused: a run resumes as it
    was configured, or it would not reach the result of an uninterrupted run. The run
    folder may come from someone else, so its config is read as data
    (:func:`~twotower.artifacts.check_artifact_config`); a completed run is left as it is."""
    from twotower.artifacts import check_artifact_config  # torch: only when a run resumes

    run_dir = Path(run_dir).resolve()
    expected = "expected the run directory of an earlier twotower-train run"
    if not run_dir.is_dir():
        raise ConfigError(f"resume={run_dir}: no such directory; {expected}")
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"resume={run_dir}: no config.yaml there; {expected}")
    changed = [o for o in overrides if not o.lstrip("+~").startswith(RESUME_OVERRIDABLE)]
    if changed:
        raise ConfigError(
            f"resume={run_dir}: a resumed run keeps its config; refusing the override(s) {changed} "
            "(only logger.*, trainer.enable_progress_bar and progress_bar_refresh_steps may change; "
            "start a new run to change the rest)"
        )
    if read_status(run_dir).get("status") == "completed":
        raise ConfigError(f"resume={run_dir}: the run has completed (status.json); nothing to resume; start a new run to train again")
    try:
        cfg = OmegaConf.load(saved)
    except Exception as err:  # noqa: BLE001 - YAML and OmegaConf raise several types for a broken file
        raise ConfigError(f"resume={run_dir}: cannot read config.yaml ({str(err).strip().splitlines()[0]}); {expected}") from err
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"resume={run_dir}: config.yaml holds no mapping; {expected}")
    check_artifact_config(OmegaConf.to_container(cfg, resolve=False), f"resume={run_dir}: config.yaml")
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key.startswith(REPORTING_KEYS):
            OmegaConf.update(cfg, key, yaml.safe_load(value) if value else None, force_add=True)
    cfg.resume = str(run_dir)
    OmegaConf.update(cfg, "paths.output_dir", str(run_dir), force_add=True)
    return cfg
