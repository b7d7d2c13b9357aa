"""End-to-end runs through the real Hydra config, every output in tmp_path."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from twotower.config import CONFIG_DIR, ConfigError, compose_config
from twotower.per_user import read_per_user
from twotower.training import train
from brute_force import assert_matches_brute_force, brute_force_test_metrics
from conftest import TINY

GROUPS = {
    group: sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
    for group in ("data", "model", "loss", "sampler", "scheduler", "trainer", "callbacks", "logger")
}


def target_nodes(node, path: str = ""):
    """``(path, node)`` of every mapping with a ``_target_`` in a plain (unresolved) config."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for key, value in node.items():
            yield from target_nodes(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from target_nodes(value, f"{path}[{i}]")


@pytest.fixture(scope="module")
def ml100k_data(tmp_path_factory):
    from twotower.wiring import build_datamodule

    dm = build_datamodule(compose_config(list(TINY), output_dir=tmp_path_factory.mktemp("data")), train_on="positives")
    dm.setup("fit")
    return dm.data


def build_option(cfg, group: str, data, tmp_path):
    """What the option builds, as a run would build it."""
    from omegaconf import OmegaConf

    from twotower.config import build
    from twotower.loggers import build_loggers
    from twotower.samplers import Negatives, TrainingStats

    if group == "loss":
        return build(cfg.loss)
    if group == "sampler":
        train = data.splits["train"]
        sampler = build(cfg.sampler)(TrainingStats(data.item_counts, train.user, train.item, train.rating, data.num_users))
        positives = train.positives()
        negatives = sampler.sample(positives.user[:8], positives.item[:8], torch.Generator().manual_seed(0))
        assert isinstance(negatives, Negatives)
        return sampler
    if group == "model":
        model = build(cfg.model.net)(data)
        if cfg.model.optimizer is not None:
            build(cfg.model.optimizer)(params=model.parameters())
        return model
    if group == "scheduler":
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        return None if cfg.model.scheduler is None else build(cfg.model.scheduler)(optimizer)
    if group == "trainer":
        if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
            return None  # its _target_ is checked above; a GPU Trainer cannot be built on a CPU machine
        return build(cfg.trainer, logger=False, enable_checkpointing=False, default_root_dir=str(tmp_path))
    if group == "callbacks":
        return [type(build(node)).__name__ for node in cfg.callbacks.values()]
    if group == "logger":
        return build_loggers(OmegaConf.to_container(cfg.logger, resolve=True), tmp_path, {})
    return build(cfg.data.source, _partial_=True)  # data: the loader, not called (some download)


EXPECTED_TYPES = {
    ("loss", "ccl"): "CosineContrastiveLoss", ("loss", "listwise"): "ListwiseLoss", ("loss", "mse"): "MSELoss",
    ("loss", "pairwise_hinge"): "PairwiseHingeLoss", ("loss", "pairwise_logistic"): "PairwiseLogisticLoss",
    ("loss", "pointwise"): "PointwiseLoss",
    ("model", "early_fusion"): "EarlyFusionModel", ("model", "matrix_completion"): "TwoTowerModel",
    ("model", "popularity"): "PopularityModel", ("model", "two_tower"): "TwoTowerModel",
    ("model", "two_tower_ids"): "TwoTowerModel", ("model", "two_tower_ids_dot"): "TwoTowerModel",
    ("scheduler", "cosine"): "CosineAnnealingLR", ("scheduler", "none"): "NoneType", ("scheduler", "plateau"): "ReduceLROnPlateau",
    ("trainer", "cpu"): "Trainer", ("trainer", "ddp"): "Trainer", ("trainer", "ddp_cpu"): "Trainer",
    ("trainer", "ddp_spawn"): "Trainer", ("trainer", "default"): "Trainer", ("trainer", "gpu"): "Trainer",
    ("logger", "csv"): "list", ("logger", "default"): "list", ("callbacks", "default"): "list",
    ("sampler", "exposed_unclicked"): "ExposedUnclickedSampler", ("sampler", "hard"): "HardNegativeSampler",
    ("sampler", "in_batch"): "InBatchSampler", ("sampler", "in_batch_no_logq"): "InBatchSampler",
    ("sampler", "mixed"): "MixedSampler", ("sampler", "none"): "NoNegatives", ("sampler", "popularity"): "CorpusSampler",
    ("sampler", "uniform"): "CorpusSampler",
}  # fmt: skip


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_of_every_group_builds(group, option, tmp_path, ml100k_data):
    """Composed, every ``_target_`` it names resolves (a misspelled one fails here), and what
    the option builds is built: the loss, the sampler drawing a batch's negatives, the model
    on ML-100K with its optimizer, the scheduler, the Trainer (CPU ones), the loggers."""
    import hydra.utils
    from omegaconf import OmegaConf

    overrides = [f"{group}={option}", "logger.wandb.mode=disabled"]
    if option == "custom":
        overrides.append("data.source.interactions=x.csv")
    cfg = compose_config(overrides, output_dir=tmp_path)
    assert cfg.paths.output_dir == str(tmp_path.resolve())
    for path, node in target_nodes(OmegaConf.to_container(cfg, resolve=False)):
        assert callable(hydra.utils.get_object(node["_target_"])), path
    built = build_option(cfg, group, ml100k_data, tmp_path)
    if group == "trainer" and built is None:
        assert cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available()
    elif group != "data":
        assert type(built).__name__ == EXPECTED_TYPES[group, option]  # a new option: add what it builds
    if group == "logger":
        assert [type(logger).__name__ for logger in built] == ["RunCSVLogger"]  # W&B disabled in tests
    if group == "callbacks":
        assert built == ["TQDMProgressBar", "StopOnNonFiniteLoss", "ModelCheckpoint", "ModelCheckpoint", "EarlyStopping",
                         "LearningRateMonitor"]  # fmt: skip
    if group == "data":
        assert callable(built)


@pytest.mark.slow
def test_tiny_two_tower_run_end_to_end(tmp_path, tiny_overrides):
    cfg = compose_config(tiny_overrides + ["seed=3"], output_dir=tmp_path)
    metrics = train(cfg)
    assert_matches_brute_force(metrics, tmp_path, k=10)
    assert_matches_brute_force(metrics, tmp_path, k=50)
    # The temporal split has cold test users: their metrics are reported apart.
    assert "test/cold/recall@10" in metrics and "test/warm/recall@10" in metrics
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["test/recall@10"] == pytest.approx(metrics["test/recall@10"])
    assert saved["popularity/test/recall@10"] == pytest.approx(0.0716, abs=1e-4)  # the figure on this split
    # Each test user's metrics, for twotower-compare's paired tests: their means are the results.
    per_user = read_per_user(tmp_path / "per_user.npz")
    assert len(per_user.users) == saved["test/num_users"] and per_user.warm.sum() == saved["test/num_warm_users"]
    for name in ("test/recall@10", "test/ndcg@50", "popularity/test/recall@10", "popularity/test/mrr@20"):
        assert per_user.metrics[name].mean() == pytest.approx(saved[name], abs=1e-6)
    assert per_user.metrics["test/recall@10"][~per_user.warm].mean() == pytest.approx(saved["test/cold/recall@10"], abs=1e-6)
    # The popularity prior's weights, chosen on validation (candidates 0 ... 30), kept by the
    # checkpoint and used for test; the validation metric is that of the chosen weights.
    ckpt = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=False)
    assert ckpt["twotower_prior_weights"] == [saved["test/prior/warm_weight"], saved["test/prior/cold_weight"]]
    assert set(ckpt["twotower_prior_weights"]) <= {0.0, 0.3, 1.0, 3.0, 10.0, 30.0}
    assert saved["best/val/ndcg@20"] == pytest.approx(brute_force_test_metrics(tmp_path, 20, "val")["val/ndcg@20"], abs=1e-6)
    features = json.loads((tmp_path / "features.json").read_text())
    assert [f["name"] for f in features["user"]] == ["user_id", "age", "gender", "occupation", "zip_prefix"]
    assert "seed: 3" in (tmp_path / "config.yaml").read_text()
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["twotower_config"]["seed"] == 3
    assert ckpt["twotower_features"]["item"][0]["name"] == "item_id"
    assert (tmp_path / "csv" / "metrics.csv").exists()


@pytest.mark.slow
def test_matrix_completion_baseline_runs(tmp_path, tiny_overrides):
    cfg = compose_config(tiny_overrides + ["model=matrix_completion"], output_dir=tmp_path)
    assert cfg.loss._target_.endswith("MSELoss") and cfg.sampler._target_.endswith("no_negatives")
    metrics = train(cfg)
    assert_matches_brute_force(metrics, tmp_path)


@pytest.mark.slow
def test_popularity_baseline_matches_brute_force(tmp_path, tiny_overrides):
    """The evaluation pipeline, checked end to end against a pandas brute force on the
    random split: recommend the most-clicked unseen training items to every test user."""
    overrides = tiny_overrides + ["model=popularity", "experiment=recbole_protocol", "seed=0"]
    metrics = train(compose_config(overrides, output_dir=tmp_path))

    from twotower.data.movielens import load_ml100k
    from twotower.data.splits import random_split

    parts = random_split(load_ml100k().interactions, 0.1, 0.1, seed=0)
    counts = parts["train"]["item_id"].value_counts()
    # Ties in count are broken arbitrarily by both sides, so compare recall@100 loosely and
    # check the no-tie part exactly: the top of the ranking has distinct counts.
    ranked = list(counts.index)
    seen = pd_groups(parts["train"])
    seen_val = pd_groups(parts["val"])
    recalls = []
    for user, targets in pd_groups(parts["test"]).items():
        exclude = seen.get(user, set()) | seen_val.get(user, set())
        top = [i for i in ranked if i not in exclude][:10]
        recalls.append(len(set(top) & targets) / len(targets))
    expected = sum(recalls) / len(recalls)
    assert metrics["test/recall@10"] == pytest.approx(expected, abs=2e-3)
    # The popularity reference every run reports: the same baseline (ties aside).
    assert metrics["popularity/test/recall@10"] == pytest.approx(metrics["test/recall@10"], abs=1e-3)


def pd_groups(df):
    return {u: set(g) for u, g in df.groupby("user_id")["item_id"]}


def test_bad_loss_sampler_pair_is_refused_before_any_output(tmp_path, tiny_overrides):
    cfg = compose_config(tiny_overrides + ["loss=mse", "sampler=in_batch"], output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="sampler=none"):
        train(cfg)
    assert not (tmp_path / "run" / "results.json").exists()
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.slow
def test_console_script_prints_the_table(tmp_path):
    """`twotower-train` as a user runs it (one subprocess: importing Lightning costs seconds)."""
    exe = Path(sys.executable).with_name("twotower-train")
    env = dict(os.environ, TWOTOWER_LOG_DIR=str(tmp_path), WANDB_MODE="disabled")
    out = subprocess.run(
        [str(exe), "debug=fast", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "recall@10" in out.stdout and "ndcg@10" in out.stdout
    assert "popularity all" in out.stdout  # the reference beside the model
    results = list(tmp_path.glob("train/runs/*/results.json"))
    assert len(results) == 1


@pytest.mark.slow
def test_evaluation_does_not_depend_on_the_user_chunk_size(tmp_path, tiny_overrides):
    """Scoring users in chunks of 7 or all at once gives the same metrics."""
    base = tiny_overrides + ["model=popularity", "seed=0", "trainer.limit_test_batches=1.0"]
    whole = train(compose_config(base, output_dir=tmp_path / "whole"))
    chunked = train(compose_config(base + ["data.eval_batch_size=7"], output_dir=tmp_path / "chunked"))
    for key in ("test/recall@10", "test/ndcg@20", "test/mrr@100", "test/coverage@50", "test/cold/precision@10"):
        assert chunked[key] == pytest.approx(whole[key]), key


@pytest.mark.slow
def test_cosine_schedule_steps_the_learning_rate_every_epoch(tmp_path, tiny_overrides):
    """scheduler=cosine: epoch e trains at eta_min + (lr - eta_min) (1 + cos(pi e / T)) / 2, logged per epoch."""
    overrides = tiny_overrides + ["scheduler=cosine", "trainer.max_epochs=3", "model.optimizer.lr=0.01", "eval.patience=null"]
    train(compose_config(overrides, output_dir=tmp_path / "run"))
    rows = list(csv.DictReader(open(tmp_path / "run" / "csv" / "metrics.csv", newline="")))
    logged = [float(row["lr-Adam"]) for row in rows if row.get("lr-Adam")]
    expected = [0.01 * (1 + math.cos(math.pi * epoch / 3)) / 2 for epoch in range(3)]  # 0.01, 0.0075, 0.0025
    assert logged == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_plateau_schedule_cuts_the_learning_rate_when_validation_stalls(tmp_path, tiny_overrides):
    """scheduler=plateau, patience 0, and an improvement threshold no NDCG can pass (+1): every
    validation after the first stalls, so each later epoch trains at `factor` times the one before."""
    overrides = tiny_overrides + ["scheduler=plateau", "model.scheduler.patience=0", "model.scheduler.factor=0.5",
                                  "+model.scheduler.threshold_mode=abs", "+model.scheduler.threshold=1",
                                  "trainer.max_epochs=4", "model.optimizer.lr=0.01", "eval.patience=null"]  # fmt: skip
    train(compose_config(overrides, output_dir=tmp_path / "run"))
    rows = list(csv.DictReader(open(tmp_path / "run" / "csv" / "metrics.csv", newline="")))
    logged = [float(row["lr-Adam"]) for row in rows if row.get("lr-Adam")]
    assert logged == pytest.approx([0.01, 0.01, 0.005, 0.0025], rel=1e-6)


@pytest.mark.parametrize("model", ["two_tower_ids", "two_tower"])
def test_batches_carry_only_the_features_the_towers_read(model, tiny_overrides):
    from twotower.wiring import build_run

    run = build_run(compose_config(tiny_overrides + [f"model={model}"]))
    dm, net = run.datamodule, run.model
    batch = dm.train_batch(torch.arange(16), torch.Generator().manual_seed(0))
    assert set(batch.user) == {*net.user_tower.input_names, "index"}
    assert set(batch.pos) == {*net.item_tower.input_names, "index"}
    if model == "two_tower_ids":
        assert net.read_features == {"user": ["user_id"], "item": ["item_id"]}
    else:  # every declared feature, a bucketized one under its bucket name
        assert {"age", "age__bucket", "occupation"} <= set(net.read_features["user"])
    assert net.encode_users(batch.user).shape == (16, 64) and net.encode_items(batch.pos).shape == (16, 64)


@pytest.mark.slow
def test_progress_bar_updates_every_configured_number_of_steps(tmp_path, tiny_overrides, capsys):
    """With the bar on, train() gives Lightning a TQDM bar that refreshes every
    `progress_bar_refresh_steps` steps (each update costs ~1.5 ms on a CPU), not at every step."""
    import lightning as L

    seen = {}

    class RecordBar(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            seen["refresh"] = trainer.progress_bar_callback.refresh_rate

    overrides = [o for o in tiny_overrides if not o.startswith("trainer.enable_progress_bar")]
    train(compose_config(overrides + ["progress_bar_refresh_steps=3"], output_dir=tmp_path / "run"), callbacks=[RecordBar()])
    assert seen == {"refresh": 3}
