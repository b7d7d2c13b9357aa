"""``train(cfg)``: build the data, model, loss and Trainer from a composed config,
fit, test the best checkpoint, and return the metrics. ``main`` is the
``twotower-train`` console script (Hydra command-line overrides as arguments).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from twotower.callbacks import StopOnNonFiniteLoss
from twotower.checkpoints import AtomicCheckpointIO, checkpoint_step, resume_checkpoint
from twotower.config import CONFIG_DIR, ConfigError, build, check_eval_ks, check_loss_sampler, load_dotenv_file, resolved_config, resumed_config
from twotower.data.datamodule import RetrievalDataModule
from twotower.data.schema import DataError
from twotower.distributed import configured_world_size, is_main_process, relaunches_command, split_evenly
from twotower.loggers import build_loggers, drop_metrics_after, finish_wandb, log_summary, redact_secrets
from twotower.module import RetrievalModule
from twotower.report import format_table, write_results
from twotower.runs import LAST_SWEEP, read_status, register_resolvers, run_labels, sweep_name, write_status
from twotower.topk import choose_backend

log = logging.getLogger("twotower")

# Two warnings Lightning raises on every run that say nothing about the user's run: a torch 2.13
# deprecation inside Lightning, and a note about worker processes (batches are built in-process).
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")


def build_datamodule(cfg: DictConfig, train_on: str) -> RetrievalDataModule:
    data = cfg.data
    return RetrievalDataModule(
        source=build(data.source, _partial_=True),
        sampler=build(cfg.sampler),
        user_features=OmegaConf.to_container(data.user_features, resolve=True),
        item_features=OmegaConf.to_container(data.item_features, resolve=True),
        positive_threshold=data.positive_threshold,
        split=OmegaConf.to_container(data.split, resolve=True),
        batch_size=data.batch_size,
        eval_batch_size=data.eval_batch_size,
        train_on=train_on,
        seed=cfg.seed,
        cross_device_negatives=cfg.distributed.cross_device_negatives,
    )


def train(cfg: DictConfig, callbacks: list[L.Callback] | None = None) -> dict[str, float]:
    """Train and test one configuration; returns the test (and last validation) metrics.

    Everything the run writes goes under ``cfg.paths.output_dir``: the resolved
    config, ``features.json``, checkpoints, CSV/W&B logs and ``results.json``.
    With ``cfg.resume`` set, training continues from that directory's last complete
    checkpoint (or from the start when it has none). ``callbacks``: extra Lightning
    callbacks (tests inject faults with them).
    """
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = redact_secrets(resolved_config(cfg))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    writes_files = is_main_process()  # under DDP, rank 0 alone writes the run's files

    # Everything that can be refused is checked before any file is written.
    world_size = configured_world_size(OmegaConf.to_container(cfg.trainer).get("devices", 1), cfg.trainer.get("num_nodes", 1))
    if world_size:
        split_evenly(cfg.data.batch_size, world_size)
    several_devices = (world_size or 1) > 1 or "ddp" in str(cfg.trainer.get("strategy"))
    if several_devices and (cfg.model.get("net") or {}).get("sparse_embeddings"):
        raise ConfigError(
            f"model.net.sparse_embeddings=true with trainer.strategy={cfg.trainer.get('strategy')}, "
            f"trainer.devices={cfg.trainer.get('devices')}: sparse gradients are supported on one device only "
            "(NCCL all-reduces no sparse tensors); expected one device, or model.net.sparse_embeddings=false"
        )
    loss = build(cfg.loss)
    model_trainable = cfg.model.optimizer is not None
    datamodule = build_datamodule(cfg, train_on=loss.trains_on if model_trainable else "positives")
    datamodule.setup("fit")
    check_eval_ks(cfg.eval.ks, datamodule.data.num_items)
    labels = run_labels(cfg)
    if model_trainable:
        check_loss_sampler(loss, datamodule.sampler, labels)

    if writes_files:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(config))
        datamodule.save_artifacts(run_dir)
    data = datamodule.data
    model = build(cfg.model.net)(data)
    if hasattr(model, "read_features"):
        datamodule.read_only(model.read_features)
    on_gpu = cfg.trainer.accelerator in ("gpu", "cuda") or (cfg.trainer.accelerator == "auto" and torch.cuda.is_available())
    eval_backend = choose_backend(cfg.eval.backend, getattr(model, "factorizes", False), data.num_items, on_gpu)
    if eval_backend == "faiss":
        datamodule.max_eval_scores = None  # FAISS never holds users x items scores: larger user chunks
    module = RetrievalModule(
        model=model,
        loss=loss if model_trainable else None,
        optimizer=build(cfg.model.optimizer) if model_trainable else None,
        ks=list(cfg.eval.ks),
        item_counts=data.item_counts,
        config=config,
        fitted_features=data.fitted,
        frequency_estimator=getattr(datamodule.sampler, "frequency_estimator", None),
        eval_backend=eval_backend,
        scheduler=build(cfg.model.scheduler) if model_trainable and cfg.model.get("scheduler") else None,
        monitor=cfg.eval.monitor,
    )
    log.info(
        "data %s: %d users, %d items, %d training examples; val %d users, test %d users",
        data.name, data.num_users, data.num_items, len(datamodule.train_examples.user),
        len(data.eval_sets["val"].users), len(data.eval_sets["test"].users),
    )  # fmt: skip

    callbacks = list(callbacks or [])
    if cfg.trainer.get("enable_progress_bar", True):
        # Lightning's default bar updates at every step: about 1.5 ms each on a CPU (docs/BENCHMARKS.md).
        callbacks.append(L.pytorch.callbacks.TQDMProgressBar(refresh_rate=cfg.get("progress_bar_refresh_steps", 1)))
    checkpoint = None
    resume_from = resume_checkpoint(run_dir) if cfg.get("resume") else None
    if resume_from is not None and writes_files:
        drop_metrics_after(run_dir, checkpoint_step(resume_from))  # the resumed run logs those again
    if model_trainable:
        callbacks.append(StopOnNonFiniteLoss(cfg.loss.get("temperature"), cfg.model.optimizer.get("lr")))
        checkpoint = L.pytorch.callbacks.ModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"),
            filename="best",
            monitor=cfg.eval.monitor,
            mode=cfg.eval.mode,
        )
        # last.ckpt after every validation, improved or not: what a killed run resumes from.
        # After `checkpoint` in the list, so it holds that callback's update of the same epoch.
        latest = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="last", monitor=None)
        callbacks += [checkpoint, latest]
        if cfg.eval.patience is not None:
            callbacks.append(
                L.pytorch.callbacks.EarlyStopping(monitor=cfg.eval.monitor, mode=cfg.eval.mode, patience=cfg.eval.patience)
            )
        # A sampler that mines negatives with the model (sampler=hard) runs as a callback.
        callbacks += getattr(datamodule.sampler, "callbacks", lambda: [])()
    tags = redact_secrets([f"{k}:{v}" for k, v in labels.items()] + list(cfg.tags))
    # A sweep's runs share a W&B group (the sweep), so the dashboard compares them side by side.
    group = cfg.logger.wandb.group or sweep_name() or labels.get("experiment")
    exit_code = 1
    try:
        loggers = build_loggers(OmegaConf.to_container(cfg.logger, resolve=True), run_dir, config, group, tags)
        if module.scheduler_factory is not None and loggers:
            callbacks.append(L.pytorch.callbacks.LearningRateMonitor(logging_interval="epoch"))  # lr per epoch in the logs
        trainer = build(
            cfg.trainer,
            logger=loggers,
            callbacks=callbacks,
            default_root_dir=str(run_dir),
            plugins=[AtomicCheckpointIO()],
        )
        metrics: dict[str, float] = {}
        if model_trainable:
            if resume_from is not None:
                log.info("resuming from %s", resume_from)
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
            if checkpoint.best_model_score is not None:
                # The checkpoint that is tested; what a hyper-parameter search should optimize.
                metrics[f"best/{cfg.eval.monitor}"] = float(checkpoint.best_model_score)
            best = checkpoint.best_model_path or None
            tester(trainer, cfg).test(module, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False)
        else:
            tester(trainer, cfg).test(module, datamodule=datamodule, verbose=False)
        metrics.update(module.test_metrics)
        if not writes_files:
            return metrics
        write_results(metrics, run_dir)
        log_summary(metrics)
        print(f"\nTest metrics ({data.name}, {cfg.model.name}):\n{format_table(metrics, 'test')}\nrun directory: {run_dir}")
        exit_code = 0
        return metrics
    finally:
        finish_wandb(exit_code)


def tester(trainer: L.Trainer, cfg: DictConfig) -> L.Trainer:
    """The Trainer that tests: ``trainer`` itself, except after a spawned fit. Its workers
    are gone then, and testing in new ones costs their start-up again (10-20 s on a CPU)
    for metrics that every rank computes identically, so this process tests, on one device."""
    if getattr(trainer.strategy, "_start_method", None) != "spawn":
        return trainer
    return build(
        cfg.trainer, devices=1, num_nodes=1, strategy="auto", logger=trainer.loggers, callbacks=[],
        default_root_dir=trainer.default_root_dir, plugins=[AtomicCheckpointIO()],
    )  # fmt: skip


def run_task(cfg: DictConfig) -> float | None:
    """One job as Hydra runs it: ``train`` with a ``status.json`` beside the results.

    In a multirun a failing job is recorded (status, error, traceback) and the
    sweep goes on with the next job; the sweep summary counts the failures.
    Returns the best value of the monitored validation metric, for hyper-parameter sweepers.
    """
    run_dir = Path(cfg.paths.output_dir)
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    multirun = hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN
    if multirun and relaunches_command(cfg.trainer.get("strategy", "auto")):
        # Raised, not recorded: every job of the sweep would fail the same way.
        raise ConfigError(
            f"trainer.strategy={cfg.trainer.get('strategy')} runs the whole command once per rank, so each rank "
            "would run its own copy of the sweep; for sweeps use trainer=ddp_spawn (GPUs) or trainer=ddp_cpu, one "
            "multi-device job at a time, or launch single runs with trainer=ddp"
        )
    overrides = list(hydra_cfg.overrides.task) if hydra_cfg else []
    if cfg.get("resume"):
        if multirun:
            raise ConfigError("resume= continues one run; it cannot be part of a sweep (-m)")
        cfg = resumed_config(cfg.resume, overrides)
        run_dir = Path(cfg.paths.output_dir)
        overrides = read_status(run_dir).get("overrides", overrides)  # the run's own, not "resume=..."
    if not is_main_process():  # rank 0 keeps the status; the other ranks only train
        train(cfg)
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    write_status(run_dir, "running", started, overrides)
    try:
        metrics = train(cfg)
    except Exception as err:
        write_status(run_dir, "failed", started, overrides, err)
        if multirun:
            log.exception("job failed (recorded in %s); the sweep goes on", run_dir / "status.json")
            return float("nan")  # a search sweeper records the trial as failed and goes on
        if isinstance(err, (ConfigError, DataError)):
            # Bad input: the message says what to fix; a traceback would only bury it.
            print(f"twotower-train: error: {err}", file=sys.stderr)
            sys.exit(2)
        raise
    write_status(run_dir, "completed", started, overrides)
    return metrics.get(f"best/{cfg.eval.monitor}", metrics.get(cfg.eval.monitor))


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    return run_task(cfg)


def main() -> None:
    load_dotenv_file()
    torchrun_rank = "TORCHELASTIC_RUN_ID" in os.environ
    if torchrun_rank and not os.environ.get("TWOTOWER_RUN_ID") and not any(a.startswith("hydra.run.dir=") for a in sys.argv):
        # Each rank resolves its own run directory from the time: they must agree on one.
        sys.exit(
            "twotower-train under torchrun: set TWOTOWER_RUN_ID (the same on every node), e.g. "
            "TWOTOWER_RUN_ID=$(date +%Y-%m-%d_%H-%M-%S) torchrun ..., or pass hydra.run.dir=DIR"
        )
    register_resolvers()
    _hydra_main()
    if LAST_SWEEP["failed"]:
        # The exit status says how many jobs of the sweep failed (capped to stay a valid status).
        sys.exit(min(LAST_SWEEP["failed"], 100))


if __name__ == "__main__":
    main()
