"""The Weights & Biases run of a training run or a sweep, without Lightning.

The W&B run is started here, before the Trainer is built, in a mode decided up front:
Lightning's logger never falls back by itself, and an online ``wandb.init`` with an
unreachable server blocks for ``init_timeout`` seconds. So an online start that fails falls
back to offline (with a warning) after a short timeout, and the run can be uploaded later
with ``wandb sync``. ``wandb`` itself is imported only when a run is started.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger("twotower")

WANDB_MODES = ("auto", "online", "offline", "disabled")
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
