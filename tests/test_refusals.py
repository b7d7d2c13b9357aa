"""Every user error of ``twotower-train`` exits with status 2 and one line on stderr (no
traceback, no Hydra report), and leaves no new folder and no changed file behind; a
folder that cannot be written is named with the cause; an interrupted sweep still writes
its summary and exits 130, and its jobs can be resumed by pasting their path.

Each case runs the console script in a subprocess, as a user would, with
``TWOTOWER_LOG_DIR`` in a temporary folder whose whole content is compared before and after.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tiny_data import custom, tiny_interactions, write_csv
from twotower.config import compose_config
from twotower.train import run_task

HERE = Path(__file__).parent
TINY = ["debug=fast", "logger.wandb.mode=disabled", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]
HYDRA_NOISE = ("Traceback", "Error executing job", "HYDRA_FULL_ERROR", "Set the environment variable")


def listing(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def train_command(tmp_path: Path, args: list[str], script: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "TWOTOWER_LOG_DIR": str(tmp_path / "out")}
    command = [sys.executable, *(script or ["-m", "twotower.train"]), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)


def assert_refused(done: subprocess.CompletedProcess, *parts: str) -> str:
    """Exit status 2 and one line naming ``parts``; returns the line."""
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("twotower-train: error: "), lines[0]
    assert not any(noise in done.stderr for noise in HYDRA_NOISE), done.stderr
    for part in parts:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    """A real tiny run whose status says it was interrupted: a run that ``resume=`` continues."""
    root = tmp_path_factory.mktemp("stopped")
    run = root / "run"
    run_task(compose_config([*TINY, "trainer.max_epochs=2", *custom(write_csv(root / "data", tiny_interactions()))], output_dir=run))
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "status": "interrupted"}))
    return run


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# Config values refused before any data is read, or once the data is prepared (ML-100K: 1,682 items).
CONFIG_CASES = {
    "misspelled_key": (["loss.temprature=0.1"], ["loss.temprature", "not in struct"]),
    "unknown_option": (["loss=listwse"], ["Could not find 'loss/listwse'", "listwise, mse"]),
    "seed_text": (["seed=abc"], ["seed=abc: expected an integer"]),
    "lr_nan": (["model.optimizer.lr=nan"], ["model.optimizer.lr=nan: expected a finite number > 0"]),
    "lr_negative": (["model.optimizer.lr=-1"], ["model.optimizer.lr=-1: expected a finite number > 0"]),
    "negatives_zero": (["sampler=uniform", "sampler.num_negatives=0"], ["sampler.num_negatives=0: expected a positive integer"]),
    "negatives_negative": (["sampler=uniform", "sampler.num_negatives=-3"], ["sampler.num_negatives=-3"]),
    "negatives_beyond_catalogue": (["sampler=uniform", "sampler.num_negatives=1000000"],
                                   ["sampler.num_negatives=1000000 exceeds the catalogue of 1682 items"]),
    "step_memory": (["sampler=uniform", "sampler.num_negatives=1500", "data.batch_size=4096", "limits.step_memory_gb=0.1"],
                    ["a training step needs at least", "1500 negatives per example", "limits.step_memory_gb"]),
    "monitor_val_loss": (["eval.monitor=val/loss"], ["eval.monitor=val/loss: not a metric logged at validation"]),
    "monitor_train_loss": (["eval.monitor=train/loss"], ["eval.monitor=train/loss: not a metric logged at validation"]),
    "monitor_wrong_mode": (["eval.mode=min"], ["expected eval.mode=max"]),
    "prior_negative_weight": (["model.popularity_prior.cold_weight=-1"], ["model.popularity_prior.cold_weight=-1: expected a number >= 0"]),
    "prior_on_early_fusion": (["model=early_fusion", "+model.popularity_prior.warm_weight=1", "+model.popularity_prior.cold_weight=1"],
                              ["model.popularity_prior is set for model early_fusion: expected a two-tower model"]),
    # Sweeps: a value every job shares is refused before the sweep folder exists; a misspelled swept
    # key when Hydra composes the first job, and the sweep folder it had created is removed.
    "sweep_shared_bad_value": (["-m", "seed=abc", "loss.temperature=0.1,0.2"], ["seed=abc: expected an integer"]),
    "sweep_misspelled_key": (["-m", "loss.temprature=0.1,0.2"], ["loss.temprature"]),
}  # fmt: skip


def _case(tmp_path: Path, stopped_run: Path, name: str) -> tuple[list[str], list[str]]:
    """``(arguments, parts of the message)`` of one refused command, its files in place."""
    if name in CONFIG_CASES:
        args, parts = CONFIG_CASES[name]
        return (["-m", *TINY, *args[1:]] if args[0] == "-m" else [*TINY, *args]), parts
    if name == "exposed_unclicked_without_ratings":
        interactions = write_csv(tmp_path / "data", tiny_interactions().drop(columns="rating"))
        return [*TINY, "sampler=exposed_unclicked", *custom(interactions)], ["needs ratings"]
    if name == "resume_missing_folder":
        return [f"resume={tmp_path / 'nothere'}"], ["no such directory"]
    if name == "resume_folder_not_a_run":
        (tmp_path / "notes").mkdir()
        (tmp_path / "notes" / "todo.txt").write_text("not a run")
        return [f"resume={tmp_path / 'notes'}"], ["no config.yaml there"]
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    if name == "resume_with_overrides":
        return [f"resume={run}", "model=two_tower_ids"], ["refusing the override(s) ['model=two_tower_ids']"]
    if name == "resume_no_intact_checkpoint":
        truncate(run / "checkpoints" / "last.ckpt")
        truncate(run / "checkpoints" / "best.ckpt")
        return [f"resume={run}"], ["no intact checkpoint to resume from", "last.ckpt", "best.ckpt"]
    assert name == "resume_completed_run"
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "status": "completed"}))
    truncate(run / "checkpoints" / "last.ckpt")
    return [f"resume={run}"], ["the run has completed"]


CASES = [*CONFIG_CASES, "exposed_unclicked_without_ratings", "resume_with_overrides", "resume_missing_folder",
         "resume_folder_not_a_run", "resume_no_intact_checkpoint", "resume_completed_run"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(tmp_path, stopped_run, name):
    args, parts = _case(tmp_path, stopped_run, name)
    (tmp_path / "out").mkdir()
    before = listing(tmp_path)
    assert_refused(train_command(tmp_path, args), *parts)
    assert listing(tmp_path) == before  # no run folder, no train.log, no status.json changed


@pytest.mark.slow
def test_resume_with_a_damaged_last_checkpoint_continues_from_the_intact_one(tmp_path, stopped_run):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    expected = json.loads((stopped_run / "results.json").read_text())
    (run / "results.json").unlink()
    truncate(run / "checkpoints" / "last.ckpt")
    done = train_command(tmp_path, [f"resume={run}"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stdout + done.stderr and "best.ckpt" in done.stdout + done.stderr
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    results = json.loads((run / "results.json").read_text())
    assert set(results) == set(expected)


@pytest.mark.slow
def test_a_read_only_output_folder_is_named_with_the_cause(tmp_path):
    (tmp_path / "out").mkdir()
    done = train_command(tmp_path, [str(tmp_path / "out"), *TINY], script=[str(HERE / "io_faults.py"), "read_only"])
    assert_refused(done, str(tmp_path / "out" / "train"), "Read-only file system", "expected a folder that can be written")
    assert listing(tmp_path / "out") == {}


@pytest.mark.slow
def test_a_full_disk_is_named_with_the_cause_and_recorded(tmp_path):
    (tmp_path / "out").mkdir()
    done = train_command(tmp_path, [str(tmp_path / "out"), *TINY], script=[str(HERE / "io_faults.py"), "disk_full"])
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("twotower-train: error: ") and ".ckpt: No space left on device" in last, last
    assert "Traceback" not in done.stderr
    (run,) = (tmp_path / "out" / "train" / "runs").iterdir()
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "No space left on device" in status["error"]
    assert not [p for p in run.rglob(".*") if ".tmp-" in p.name]  # the half-written checkpoint is gone
    assert not (run / "results.json").exists()


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def job_status(sweep: Path, prefix: str) -> str | None:
    found = list(sweep.glob(f"{prefix}_*/status.json"))
    try:
        return json.loads(found[0].read_text())["status"] if found else None
    except ValueError:
        return None


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_an_interrupted_sweep_keeps_its_summary_and_its_jobs_resume_from_their_pasted_path(tmp_path, signum):
    """Job 0 is short, job 1 long: the signal arrives while job 1 trains. Job 1 is recorded as
    interrupted, the sweep summary and the comparison of job 0 are written, the exit status is
    130; then job 1 continues with its folder's path pasted unquoted, ``=`` and ``,`` included."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "TWOTOWER_LOG_DIR": str(tmp_path / "out")}
    args = [*TINY, "trainer.limit_train_batches=10", "eval.patience=null", "trainer.max_epochs=1,30"]
    proc = subprocess.Popen([sys.executable, "-m", "twotower.train", "-m", *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(lambda: list((tmp_path / "out").glob("train/multiruns/*")))
        (sweep,) = (tmp_path / "out").glob("train/multiruns/*")
        wait_for(lambda: job_status(sweep, "1") == "running" and list(sweep.glob("1_*/checkpoints/last.ckpt")))
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "twotower-train: interrupted"
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert summary["interrupted"] is True and summary["jobs"] == 2 and summary["failed"] == 1
    assert job_status(sweep, "0") == "completed" and job_status(sweep, "1") == "interrupted"
    (job,) = sweep.glob("1_*")
    assert json.loads((job / "status.json").read_text())["error"] == f"KeyboardInterrupt: {signal.Signals(signum).name}"
    table = (sweep / "comparison" / "comparison.md").read_text()
    assert "\n| all runs | 1 | " in table and f"{job.name}`: interrupted" in table  # job 0 compared, job 1 listed apart

    assert "=" in job.name and "," in job.name
    resumed = subprocess.run([sys.executable, "-m", "twotower.train", f"resume={job}"],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert job_status(sweep, "1") == "completed" and (job / "results.json").exists()
