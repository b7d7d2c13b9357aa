"""Multi-device training equals single-device training with the same global batch.

The 2-process runs happen in a subprocess with a timeout (tests/ddp_equivalence.py,
Lightning's ddp_fork over gloo): a hung rank fails the test instead of stalling the suite.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from twotower.config import compose_config
from twotower.launch import configured_world_size, relaunches_command, split_evenly
from twotower.training import train
from brute_force import assert_matches_brute_force

SCRIPT = Path(__file__).with_name("ddp_equivalence.py")


# Per-rank batch B = 32 on 2 ranks against one process with 2B = 64; the two-tower model with
# features and MLPs, listwise loss, in-batch negatives: logQ from counts, from the streaming
# estimator, with walk labels (drawn for the global batch), and (to show the comparison can fail)
# without cross-device negatives.
VARIANTS = {
    "counts": "data.batch_size=64,sampler.logq=counts",
    "walk": "data.batch_size=64,sampler.logq=counts,loss.walk_label_weight=0.3",
    "streaming": "data.batch_size=64,sampler.logq=streaming",
    "local": "data.batch_size=64,distributed.cross_device_negatives=false",
}


@pytest.fixture(scope="module")
def first_steps(tmp_path_factory) -> dict[str, tuple[dict, dict, dict]]:
    """One subprocess (with a timeout) runs every variant: one process, then 2 DDP ranks."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), *VARIANTS.values()], env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    names = ("single", "ddp_rank0", "ddp_rank1")
    return {v: tuple(torch.load(out / str(n) / f"{name}.pt") for name in names) for n, v in enumerate(VARIANTS)}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["counts", "streaming", "walk"])
def test_two_ranks_equal_one_process_with_the_global_batch(first_steps, variant):
    single, rank0, rank1 = first_steps[variant]
    # The loss of the global batch is the mean of the ranks' losses (equal shares).
    torch.testing.assert_close((rank0["loss"] + rank1["loss"]) / 2, single["loss"], rtol=0, atol=1e-5)
    assert single["grads"].keys() == rank0["grads"].keys() and len(single["grads"]) > 10
    for name, grad in single["grads"].items():
        torch.testing.assert_close(rank0["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(rank1["grads"][name], rank0["grads"][name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_local_negatives_differ_from_the_global_batch(first_steps):
    """Without cross-device negatives each rank sees half the negatives: not the same training."""
    single, rank0, rank1 = first_steps["local"]
    assert abs(float((rank0["loss"] + rank1["loss"]) / 2 - single["loss"])) > 1e-3


def test_batch_size_is_global_and_must_divide_evenly():
    assert split_evenly(256, 4) == 64
    with pytest.raises(ValueError, match=r"data.batch_size=250 is the global batch .* \(4: devices x nodes\)"):
        split_evenly(250, 4)


def test_configured_world_size(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert configured_world_size(2, num_nodes=3) == 6
    assert configured_world_size([0, 1]) == 2
    assert configured_world_size("4") == 4
    assert configured_world_size("auto") is None and configured_world_size(-1) is None
    monkeypatch.setenv("WORLD_SIZE", "8")  # set by torchrun: authoritative
    assert configured_world_size("auto") == 8


def test_a_batch_that_cannot_be_split_is_refused_before_any_file(tmp_path, tiny_overrides):
    cfg = compose_config(tiny_overrides + ["trainer=ddp_cpu", "data.batch_size=255"], output_dir=tmp_path / "run")
    with pytest.raises(ValueError, match="data.batch_size=255 is the global batch"):
        train(cfg)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_which_strategies_rerun_the_command(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert relaunches_command("ddp") and relaunches_command("ddp_find_unused_parameters_true")
    assert not relaunches_command("ddp_spawn") and not relaunches_command("auto")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    assert relaunches_command("auto")  # every rank started by torchrun runs the command


@pytest.mark.slow
def test_ddp_cpu_run_writes_one_result_and_keeps_the_estimator(tmp_path):
    """`twotower-train trainer=ddp_cpu` end to end (2 spawned processes, gloo), streaming
    logQ: one run directory, the test metrics come back to the main process, and the
    checkpoint holds the estimator's state. In a subprocess with a timeout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TWOTOWER_LOG_DIR": str(tmp_path), "WANDB_MODE": "disabled"}
    command = [
        sys.executable, "-m", "twotower.train", "trainer=ddp_cpu", "sampler.logq=streaming", "data.batch_size=64",
        "debug=fast", "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (run_dir,) = tmp_path.glob("train/runs/*")
    assert_matches_brute_force(json.loads((run_dir / "results.json").read_text()), run_dir)
    # The test runs in the main process after the spawned fit; the CSV log keeps both.
    header, *rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    columns = header.split(",")
    logged = [{columns[i] for i, value in enumerate(row.split(",")) if value} for row in rows]
    assert any("val/ndcg@20" in row for row in logged) and any("train/loss" in row for row in logged)
    assert any("test/recall@10" in row for row in logged)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["frequency_estimator"]
    assert state["step"] == 3  # debug=fast: 3 training steps, each fed to the estimator once


@pytest.mark.slow
def test_plain_ddp_sweeps_are_refused(tmp_path):
    env = {**os.environ, "TWOTOWER_LOG_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "twotower.train", "-m", "trainer.strategy=ddp", "trainer.devices=2", "seed=1,2", "debug=fast"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "for sweeps use trainer=ddp_spawn (GPUs) or trainer=ddp_cpu" in done.stderr
    assert not list(tmp_path.rglob("results.json"))
