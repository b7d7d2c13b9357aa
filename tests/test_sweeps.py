"""Sweeps and run bookkeeping: distinct run directories, failures recorded and
counted, W&B offline runs that hold config and summary and never a secret."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from twotower.config import CONFIG_DIR, compose_config, load_dotenv_file, new_run_id, register_resolvers, safe_dirname
from twotower.training import train
from brute_force import assert_matches_brute_force
from wandb_records import read_finished_run


def test_run_ids_never_collide_within_a_second():
    ids = [new_run_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)


@pytest.mark.slow
def test_two_runs_composed_in_the_same_second_get_distinct_directories(tmp_path, monkeypatch):
    monkeypatch.setenv("TWOTOWER_LOG_DIR", str(tmp_path))
    register_resolvers()
    dirs = []
    for _ in range(2):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="train", return_hydra_config=True)
        dirs.append(OmegaConf.select(cfg, "hydra.run.dir"))
    assert dirs[0] != dirs[1]
    assert all(d.startswith(f"{tmp_path}/train/runs/") for d in dirs)


def test_sweep_subdirectory_names_are_flat_and_readable():
    assert safe_dirname("data.source.interactions=/a/b.csv,loss.temperature=0.1") == (
        "data.source.interactions=_a_b.csv,loss.temperature=0.1"
    )
    assert "/" not in safe_dirname("x=" + "/" * 300) and len(safe_dirname("x" * 500)) == 180


@pytest.mark.slow
def test_multirun_records_a_failed_job_and_goes_on(tmp_path):
    """Two jobs, the second with an invalid temperature: the first completes, both are
    recorded, the sweep's exit status counts the failure (a real `-m` run)."""
    exe = Path(sys.executable).with_name("twotower-train")
    env = dict(os.environ, TWOTOWER_LOG_DIR=str(tmp_path), WANDB_MODE="disabled")
    out = subprocess.run(
        [str(exe), "-m", "debug=fast", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "loss.temperature=0.1,-1"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr[-3000:]  # one job failed
    (sweep,) = tmp_path.glob("train/multiruns/*")
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert summary["jobs"] == 2 and summary["failed"] == 1
    (ok,) = sweep.glob("0_*")
    (bad,) = sweep.glob("1_*")
    assert "loss.temperature=0.1" in ok.name and "seed" not in ok.name
    assert json.loads((ok / "status.json").read_text())["status"] == "completed"
    assert (ok / "results.json").exists()
    failed = json.loads((bad / "status.json").read_text())
    assert failed["status"] == "failed" and "temperature" in failed["error"]
    assert not (bad / "results.json").exists()
    assert "1 of 2 jobs failed" in out.stderr + out.stdout
    # The sweep's comparison report is written from the completed job.
    assert (sweep / "comparison" / "comparison.md").exists()


@pytest.mark.slow
def test_wandb_offline_run_holds_config_and_summary_and_no_secret(tmp_path, monkeypatch, tiny_overrides):
    """A key in .env and a token referenced by the config: the online start finds no
    server, falls back to offline, and no file the run wrote contains either secret."""
    api_key = "0123456789abcdef0123456789abcdef01234567"
    token = "planted-token-value-9f8e7d"
    (tmp_path / ".env").write_text(f"WANDB_API_KEY={api_key}\nMY_SERVICE_TOKEN={token}\n")
    for var in ("WANDB_MODE", "WANDB_API_KEY", "MY_SERVICE_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    load_dotenv_file(tmp_path / ".env")
    assert os.environ["WANDB_API_KEY"] == api_key

    run_dir = tmp_path / "run"
    overrides = [o for o in tiny_overrides if not o.startswith("logger.wandb.mode")]
    overrides += ["logger.wandb.mode=auto", "+debug_note=${oc.env:MY_SERVICE_TOKEN}", "logger.wandb.group=g1"]
    metrics = train(compose_config(overrides, output_dir=run_dir))

    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    records = read_finished_run(run_file)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["seed"] == 42 and config["model"]["name"] == "two_tower"
    assert config["debug_note"] == "<redacted>"
    assert run.run_group == "g1" and "loss:ListwiseLoss" in run.tags
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({i.key: json.loads(i.value_json) for i in r.summary.update if i.key})
    assert summary["test/recall@10"] == pytest.approx(metrics["test/recall@10"])

    for path in tmp_path.rglob("*"):
        if path.is_file() and path.name != ".env":
            content = path.read_bytes()
            assert api_key.encode() not in content, f"API key leaked into {path}"
            assert token.encode() not in content, f"token leaked into {path}"


EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_a_tiny_step(experiment, tmp_path, tiny_overrides):
    """Each experiment file composes and trains for a few batches (its sweep, if any, is
    Hydra's business: here the base configuration runs once)."""
    cfg = compose_config([f"experiment={experiment}", *tiny_overrides], output_dir=tmp_path)
    metrics = train(cfg)
    if cfg.model.optimizer is not None:  # a trained model: its checkpoint evaluated independently
        assert_matches_brute_force(metrics, tmp_path, k=min(cfg.eval.ks))
    else:
        assert metrics[f"test/recall@{min(cfg.eval.ks)}"] > 0  # popularity: a ranking with hits


def test_hparams_search_composes_with_the_optuna_sweeper(tmp_path):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hparams_search=optuna_tpe"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert set(sweeper.params) == {"loss.temperature", "model.optimizer.lr", "model.net.embedding_dim"}


@pytest.mark.slow
def test_hparams_search_runs_trials_and_reports_the_best(tmp_path):
    """A real 2-trial Optuna search: each trial returns the validation metric."""
    exe = Path(sys.executable).with_name("twotower-train")
    env = dict(os.environ, TWOTOWER_LOG_DIR=str(tmp_path), WANDB_MODE="disabled")
    out = subprocess.run(
        [str(exe), "hparams_search=optuna_tpe", "hydra.sweeper.n_trials=2", "debug=fast", "trainer.enable_progress_bar=false"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep,) = tmp_path.glob("train/multiruns/*")
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    trial_values = [json.loads((d / "results.json").read_text())["best/val/ndcg@20"] for d in sweep.glob("[0-9]*_*")]
    assert len(trial_values) == 2
    assert best.best_value == pytest.approx(max(trial_values))


@pytest.mark.slow
def test_a_secret_typed_on_the_command_line_reaches_no_file_and_no_folder_name(tmp_path):
    """A key given as an override value, in a sweep with W&B offline: not in any file the sweep
    wrote (configs, checkpoints, multirun.yaml, status, W&B's files and its copy of the command
    line) nor in a folder's name; the config holds ``<redacted>`` where it was."""
    secret = "sk-planted-9f8e7d6c5b4a"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    env.update(TWOTOWER_LOG_DIR=str(tmp_path / "out"), OMP_NUM_THREADS="1", WANDB_DIR=str(tmp_path / "wandb-home"))
    args = ["-m", "debug=fast", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "logger.wandb.mode=offline",
            "loss.temperature=0.1,0.2", f"+logger.wandb.api_key={secret}"]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "twotower.train", *args], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (tmp_path / "out").glob("train/multiruns/*")
    assert (sweep / "multirun.yaml").is_file() and len(list(sweep.glob("*/results.json"))) == 2
    assert list(tmp_path.rglob("offline-run-*")), "W&B ran offline"
    for path in tmp_path.rglob("*"):
        assert secret not in path.name, path
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"the secret leaked into {path}"
    for job in sweep.glob("*_*"):
        if job.is_dir() and job.name != "comparison":
            assert "api_key=redacted" in job.name
            assert OmegaConf.load(job / "config.yaml").logger.wandb.api_key == "<redacted>"
