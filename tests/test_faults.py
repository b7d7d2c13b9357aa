"""Fault injection: a run killed at any point resumes to the result of an uninterrupted
run; a non-finite loss stops training and keeps the last good checkpoint; checkpoints
are never left half-written.

Kills are real SIGKILLs of a subprocess (tests/fault_injection.py); every subprocess has
a timeout, so a hang fails the test instead of stalling the suite.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from twotower.callbacks import NonFiniteLossError
from twotower.config import ConfigError, compose_config
from twotower.runs import resumed_config
from twotower.train import run_task
from twotower.training import train

HERE = Path(__file__).parent
# 3 epochs of 6 steps; dropout and the streaming frequency estimator make the resumed run
# depend on the random state and the estimator state restored from the checkpoint.
RUN = [
    "trainer.max_epochs=3", "trainer.limit_train_batches=6", "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=2", "eval.patience=null", "data.batch_size=128",
    "model.net.dropout=0.2", "sampler.logq=streaming",
    "logger.wandb.mode=disabled", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
TIMEOUT = 180


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=ENV, capture_output=True, text=True, timeout=TIMEOUT, **kwargs)


def test_metrics(run_dir: Path) -> dict[str, float]:
    results = json.loads((run_dir / "results.json").read_text())
    return {k: v for k, v in results.items() if k.startswith("test/")}


test_metrics.__test__ = False  # a helper, not a test


def validation_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(epoch, val/ndcg@20) of every validation row of the run's CSV log, in order."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        return [(int(row["epoch"]), float(row["val/ndcg@20"])) for row in csv.DictReader(file) if row.get("val/ndcg@20")]


# Hard negatives mined once, at the start of epoch 1: a run killed in epoch 2's validation
# resumes at epoch 2 and must sample from the window kept in the checkpoint (no mining then).
HARD = ["sampler=hard", "sampler.warmup_epochs=1", "sampler.refresh_every=5", "sampler.lo=5", "sampler.hi=50"]
CONFIGS = {"streaming": RUN, "hard": [o for o in RUN if not o.startswith("sampler.")] + HARD}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Test metrics and validation curve of the uninterrupted run of each config, computed once."""
    cache: dict[str, tuple[dict[str, float], list]] = {}

    def metrics(config: str) -> tuple[dict[str, float], list]:
        if config not in cache:
            run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
            done = run(["-m", "twotower.train", f"hydra.run.dir={run_dir}", *CONFIGS[config]])
            assert done.returncode == 0, done.stderr[-2000:]
            cache[config] = test_metrics(run_dir), validation_curve(run_dir)
        return cache[config]

    return metrics


@pytest.mark.slow
@pytest.mark.parametrize(
    "config,fault",
    [("streaming", "train_step:8"), ("streaming", "checkpoint:3"), ("hard", "validation:2")],
)
@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted, config, fault):
    run_dir = tmp_path / "run"
    killed = run([str(HERE / "fault_injection.py"), str(run_dir), fault, *CONFIGS[config]])
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL: no clean-up ran
    assert not (run_dir / "results.json").exists()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "running"
    last = run_dir / "checkpoints" / "last.ckpt"
    expected_epoch = 1 if fault == "validation:2" else 0  # the last complete checkpoint
    assert torch.load(last, weights_only=True)["epoch"] == expected_epoch
    if fault.startswith("checkpoint"):
        assert list((run_dir / "checkpoints").glob(".*.tmp-*"))  # the killed write's leftover

    resumed = run(["-m", "twotower.train", f"resume={run_dir}"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr + resumed.stdout
    assert not list((run_dir / "checkpoints").glob(".*.tmp-*"))
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "completed" and "resume=" not in " ".join(status["overrides"])
    # Same machine, same threads: equal to float precision (tolerance 1e-6).
    (expected, expected_curve), got = uninterrupted(config), test_metrics(run_dir)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name
    # The CSV log continues the killed run's: every epoch's validation once, as uninterrupted.
    curve = validation_curve(run_dir)
    assert [epoch for epoch, _ in curve] == [epoch for epoch, _ in expected_curve] == [0, 1, 2]
    assert [value for _, value in curve] == pytest.approx([value for _, value in expected_curve], abs=1e-6)


class PoisonAt(L.Callback):
    """Turns the item tower's weights to NaN as global step ``step`` starts."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                for p in pl_module.model.item_tower.parameters():
                    p.fill_(float("nan"))



@pytest.mark.slow
def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_config(RUN, output_dir=run_dir)
    with pytest.raises(NonFiniteLossError, match=r"at step 8 \(epoch 1, batch 2\).*loss.temperature=0.2.*model.optimizer.lr"):
        train(cfg, callbacks=[PoisonAt(8)])
    assert not (run_dir / "results.json").exists()
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["epoch"] == 0 and all(torch.isfinite(t).all() for t in state["state_dict"].values())


def test_a_too_low_temperature_is_caught_at_the_first_step(tmp_path, tiny_overrides):
    cfg = compose_config(tiny_overrides + ["loss.temperature=1e-40"], output_dir=tmp_path / "run")
    with pytest.raises(NonFiniteLossError, match=r"at step 0 \(epoch 0, batch 0\).*temperature too low"):
        train(cfg)


@pytest.mark.slow
def test_same_seed_same_metrics(tmp_path, tiny_overrides):
    first = train(compose_config(tiny_overrides + ["model.net.dropout=0.2"], output_dir=tmp_path / "a"))
    second = train(compose_config(tiny_overrides + ["model.net.dropout=0.2"], output_dir=tmp_path / "b"))
    assert first == second


@pytest.mark.slow
def test_resume_refuses_a_changed_config_and_a_directory_that_is_not_a_run(tmp_path, tiny_overrides):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="no such directory"):
        resumed_config(run_dir, [])
    run_dir.mkdir()
    with pytest.raises(ConfigError, match="no config.yaml there"):
        resumed_config(run_dir, [])
    run_task(compose_config(tiny_overrides, output_dir=run_dir))
    with pytest.raises(ConfigError, match=r"refusing the override\(s\) \['model=two_tower_ids'\]"):
        resumed_config(run_dir, [f"resume={run_dir}", "model=two_tower_ids"])
    with pytest.raises(ConfigError, match="the run has completed"):
        resumed_config(run_dir, [f"resume={run_dir}"])
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps({**status, "status": "interrupted"}))  # as a stopped run's
    cfg = resumed_config(run_dir, [f"resume={run_dir}", "logger.wandb.mode=offline"])
    assert cfg.logger.wandb.mode == "offline" and cfg.paths.output_dir == str(run_dir.resolve())
