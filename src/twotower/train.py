"""``twotower-train``: Hydra's command line around :func:`twotower.training.train`, with one
``status.json`` per run, one-line refusals (exit status 2) and sweeps that go on past a
failed job. Torch and Lightning are imported only once a run starts, so ``--help`` and a
config Hydra or :class:`twotower.runs.RunHooks` refuses answer at once.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from twotower import CONFIG_DIR
from twotower.cli import (
    EXIT_INTERRUPTED, USER_ERRORS, fail, interruption, is_write_error, prepared_arguments, stop_on_signals, was_interrupted,
)  # fmt: skip
from twotower.config import load_dotenv_file, register_resolvers
from twotower.errors import ConfigError
from twotower.fsutil import write_bytes_atomic
from twotower.launch import is_main_process
from twotower.runs import (
    LAST_SWEEP, discard_refused_sweep, finish_sweep, read_status, remove_empty_folders, resumed_config, write_status,
)  # fmt: skip

PROG = "twotower-train"

log = logging.getLogger("twotower")


def run_task(cfg: DictConfig) -> float | None:
    """One job as Hydra runs it: ``train`` with a ``status.json`` beside the results.

    In a multirun a failing job is recorded (status, error, traceback) and the sweep goes
    on with the next job; the sweep summary counts the failures. A single run refused for
    bad input changes nothing (a new run's folder is removed, a resumed run keeps its
    record) and exits 2 with one line; one that cannot write its folder is recorded as
    failed and exits 2 with one line; Ctrl-C or SIGTERM records it as interrupted.
    Returns the best value of the monitored validation metric, for hyper-parameter sweepers.
    """
    run_dir = Path(cfg.paths.output_dir)
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    multirun = hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN
    overrides = list(hydra_cfg.overrides.task) if hydra_cfg else []
    resumed = bool(cfg.get("resume"))
    if resumed:
        if multirun:
            raise ConfigError("resume= continues one run; it cannot be part of a sweep (-m)")
        cfg = resumed_config(cfg.resume, overrides)
        run_dir = Path(cfg.paths.output_dir)
        overrides = read_status(run_dir).get("overrides", overrides)  # the run's own, not "resume=..."
    from twotower.training import train  # Torch and Lightning: imported once a run starts

    if not is_main_process():  # rank 0 keeps the status; the other ranks only train
        train(cfg)
        return None
    new_folder = not resumed and _holds_nothing_yet(run_dir)
    previous_status = (run_dir / "status.json").read_bytes() if resumed and (run_dir / "status.json").is_file() else None
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    write_status(run_dir, "running", started, overrides)
    try:
        metrics = train(cfg)
    except BaseException as err:
        if isinstance(err, USER_ERRORS) and not multirun and not was_interrupted():
            if new_folder:
                shutil.rmtree(run_dir, ignore_errors=True)
                remove_empty_folders(run_dir.parent, stop_at=Path(cfg.paths.log_dir))
            elif previous_status is not None:
                write_bytes_atomic(run_dir / "status.json", previous_status)
            fail(PROG, err)
        interrupted = was_interrupted() or isinstance(err, KeyboardInterrupt)
        try:
            write_status(run_dir, "interrupted" if interrupted else "failed", started, overrides, interruption() if interrupted else err)
        except OSError as status_err:  # the folder cannot be written at all: the error below says so
            log.error("could not record the failure in %s: %s", run_dir / "status.json", status_err)
        if interrupted:
            log.warning("interrupted; continue the run with: %s resume=%s", PROG, run_dir)
            raise KeyboardInterrupt from err  # stops a sweep too; main() summarizes it
        if not isinstance(err, Exception):
            raise
        if multirun:
            log.exception("job failed (recorded in %s); the sweep goes on", run_dir / "status.json")
            return float("nan")  # a search sweeper records the trial as failed and goes on
        if is_write_error(err):
            fail(PROG, err)
        raise
    write_status(run_dir, "completed", started, overrides)
    return metrics.get(f"best/{cfg.eval.monitor}", metrics.get(cfg.eval.monitor))


def _holds_nothing_yet(run_dir: Path) -> bool:
    """Whether ``run_dir`` is missing or holds only the empty log Hydra opened for this job:
    a folder this job may remove when its config is refused."""
    if not run_dir.exists():
        return True
    entries = list(run_dir.iterdir())
    return all(p.name == "train.log" and p.is_file() and p.stat().st_size == 0 for p in entries)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    return run_task(cfg)


def main() -> None:
    load_dotenv_file()
    torchrun_rank = "TORCHELASTIC_RUN_ID" in os.environ
    if torchrun_rank and not os.environ.get("TWOTOWER_RUN_ID") and not any(a.startswith("hydra.run.dir=") for a in sys.argv):
        # Each rank resolves its own run directory from the time: they must agree on one.
        fail(PROG, ConfigError(
            "under torchrun set TWOTOWER_RUN_ID (the same on every node), e.g. "
            "TWOTOWER_RUN_ID=$(date +%Y-%m-%d_%H-%M-%S) torchrun ..., or pass hydra.run.dir=DIR"
        ))  # fmt: skip
    register_resolvers()
    # Hydra prints its errors over several lines with advice; raised instead, each becomes one line below.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.argv[1:] = prepared_arguments(sys.argv[1:])
    stop_on_signals()
    try:
        _hydra_main()
    except KeyboardInterrupt:
        finish_sweep(interrupted=True)
        print(f"{PROG}: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except (*USER_ERRORS, HydraException, OSError) as err:
        if isinstance(err, OSError) and not isinstance(err, HydraException) and not is_write_error(err):
            raise  # a missing data file is a DataError; another OSError is not the user's input
        discard_refused_sweep()
        fail(PROG, err)
    if LAST_SWEEP["failed"]:
        # The exit status says how many jobs of the sweep failed (capped to stay a valid status).
        sys.exit(min(LAST_SWEEP["failed"], 100))


if __name__ == "__main__":
    main()
