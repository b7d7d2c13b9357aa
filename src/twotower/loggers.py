"""Experiment loggers: CSV always; Weights & Biases through Lightning's logger.

The W&B run is started here, before the Trainer is built, in a mode decided
up front: Lightning's logger never falls back by itself, and an online
``wandb.init`` with an unreachable server blocks for ``init_timeout`` seconds.
So an online start that fails falls back to offline (with a warning) after a
short timeout, and the run can be uploaded later with ``wandb sync``.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

log = logging.getLogger("twotower")

WANDB_MODES = ("auto", "online", "offline", "disabled")
SECRET_NAME = re.compile(r"(_KEY|_TOKEN|_SECRET|PASSWORD)$", re.IGNORECASE)
REDACTED = "<redacted>"


class LightningNoise(logging.Filter):
    """Drops Lightning's start-up lines that say nothing about the run: the advertisement of
    its cloud logger, and accelerators that are absent (``TPU available: False, ...``). An
    accelerator that is present (``GPU available: True, used: False``) is still reported."""

    ABSENT = re.compile(r"(GPU|TPU|HPU) available: False\b")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("\N{ELECTRIC LIGHT BULB} Tip:") or self.ABSENT.match(message))


def quiet_lightning() -> None:
    """Install :class:`LightningNoise` on the loggers Lightning's ``rank_zero_info`` writes to (once)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, LightningNoise) for f in logger.filters):
            logger.addFilter(LightningNoise())


# W&B's own environment switches, as W&B reads them (``dryrun`` is its old name for offline).
WANDB_ENV_MODES = {"online": "online", "run": "online", "shared": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}


def resolve_wandb_mode(mode: str, environ: dict | None = None) -> str:
    """``auto`` -> what the user already told W&B (``WANDB_DISABLED=true``, ``WANDB_MODE``),
    else ``online`` when ``WANDB_API_KEY`` is set, else ``offline``. An explicit mode wins."""
    environ = os.environ if environ is None else environ
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.wandb.mode={mode!r}: expected one of {list(WANDB_MODES)}")
    if mode != "auto":
        return mode
    if str(environ.get("WANDB_DISABLED", "")).strip().lower() in ("1", "true", "yes"):
        return "disabled"
    env_mode = str(environ.get("WANDB_MODE", "")).strip().lower()
    if env_mode:
        if env_mode not in WANDB_ENV_MODES:
            raise ValueError(f"WANDB_MODE={env_mode!r} in the environment: expected one of {sorted(WANDB_ENV_MODES)}")
        return WANDB_ENV_MODES[env_mode]
    return "online" if environ.get("WANDB_API_KEY") else "offline"


def redact_secrets(value: Any, environ: dict | None = None) -> Any:
    """Replace every string that holds the value of a secret environment variable
    (``*_KEY``, ``*_TOKEN``, ``*_SECRET``, ``*PASSWORD``) by ``<redacted>``, recursively."""
    environ = os.environ if environ is None else environ
    secrets = [v for k, v in environ.items() if SECRET_NAME.search(k) and len(v) >= 6]
    if not secrets:
        return value

    def scrub(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: scrub(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(scrub(x) for x in v)
        if isinstance(v, str):
            for s in secrets:
                v = v.replace(s, REDACTED)
        return v

    return scrub(value)


def server_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def start_wandb_run(settings: dict, run_dir: Path, config: dict, group: str | None, tags: list[str]):
    """``wandb.init`` in the resolved mode; an online start that fails within
    ``init_timeout`` seconds falls back to offline. Returns the run or ``None``."""
    mode = resolve_wandb_mode(settings.get("mode", "auto"))
    if mode == "disabled":
        return None
    import wandb

    kwargs = dict(
        project=settings.get("project", "twotower"),
        entity=settings.get("entity"),
        group=group,
        job_type=settings.get("job_type", "train"),
        tags=tags,
        config=config,
        dir=str(run_dir),
        reinit="finish_previous",
    )
    # quiet: W&B's start lines (where the run is, how to sync it) but not its history and
    # summary block at the end, which repeats the run's own table.
    quiet = bool(settings.get("quiet", True))
    if mode == "online":
        base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
        # wandb.init itself can take far longer than init_timeout to give up, so probe first.
        if not server_reachable(base_url, timeout=min(3.0, settings.get("init_timeout", 15))):
            log.warning("W&B server %s is unreachable; logging offline instead: upload later with `wandb sync`", base_url)
            return wandb.init(mode="offline", settings=wandb.Settings(quiet=quiet), **kwargs)
        try:
            online = wandb.Settings(init_timeout=settings.get("init_timeout", 15), quiet=quiet)
            return wandb.init(mode="online", settings=online, **kwargs)
        except Exception as err:  # noqa: BLE001 - any failure to reach the server
            log.warning("W&B online start failed (%s); logging offline instead: upload later with `wandb sync`", err)
    return wandb.init(mode="offline", settings=wandb.Settings(quiet=quiet), **kwargs)


def _read_metrics_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), list(reader)


def drop_metrics_after(run_dir: Path, step: int) -> None:
    """Remove the rows of ``csv/metrics.csv`` logged after global step ``step``: what a
    killed run logged past the checkpoint it resumes from, and will log again."""
    path = Path(run_dir) / "csv" / ExperimentWriter.NAME_METRICS_FILE
    if not path.is_file():
        return
    header, rows = _read_metrics_csv(path)
    kept = [row for row in rows if row.get("step") and int(float(row["step"])) <= step]
    if len(kept) < len(rows):
        with open(path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=header)
            writer.writeheader()
            writer.writerows(kept)


class _ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that it continues an existing ``metrics.csv``
    (Lightning's deletes it): one run writes its CSV from several processes, when it is
    resumed, and in the test of a ``ddp_spawn`` run (new workers after those of ``fit``)."""

    def _check_log_dir_exists(self) -> None:  # called by __init__
        if self._fs.isfile(self.metrics_file_path):
            self.metrics_keys = _read_metrics_csv(Path(self.metrics_file_path))[0]


class RunCSVLogger(CSVLogger):
    """``RUN_DIR/csv/metrics.csv``: continued, never deleted, by every process that logs
    to it, and written out whenever a checkpoint is, so a killed run's CSV covers what
    its last checkpoint covers."""

    def __init__(self, run_dir: str):
        super().__init__(save_dir=run_dir, name="csv", version="")

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(self.log_dir)
        return self._experiment

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self.save()


def build_loggers(cfg: dict, run_dir: Path, config: dict, group: str | None = None, tags: list[str] | None = None) -> list[Logger]:
    """``cfg``: the ``logger`` config; ``config``: the resolved run config (secrets redacted)."""
    loggers: list[Logger] = []
    if cfg.get("csv", {}).get("enabled", True):
        loggers.append(RunCSVLogger(str(run_dir)))
    wb = cfg.get("wandb", {})
    if wb.get("enabled", False):
        run = start_wandb_run(wb, run_dir, config, group or wb.get("group"), list(tags or []))
        if run is not None:
            from lightning.pytorch.loggers import WandbLogger

            loggers.append(WandbLogger(experiment=run, save_dir=str(run_dir)))
    return loggers


def log_comparison_table(csv_path: Path, settings: dict, group: str) -> None:
    """Log a sweep's comparison table as a W&B table, in a run of its own
    (``job_type=sweep-summary``) in the sweep's group."""
    import pandas as pd

    table = pd.read_csv(csv_path)
    run = start_wandb_run({**settings, "job_type": "sweep-summary"}, csv_path.parent, {}, group, ["sweep-summary"])
    if run is None:
        return
    try:
        import wandb

        run.log({"comparison": wandb.Table(dataframe=table)})
    finally:
        run.finish()


def log_summary(metrics: dict[str, float]) -> None:
    """Put the final metrics in the W&B run's summary (shown in the runs table)."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.run.summary.update(metrics)


def finish_wandb(exit_code: int = 0) -> None:
    """Close the W&B run, if one is open, so the next job of a multirun starts its own."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)
