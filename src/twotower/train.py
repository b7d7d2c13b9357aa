"""``train(cfg)``: build the data, model, loss and Trainer from a composed config,
fit, test the best checkpoint, and return the metrics. ``main`` is the
``twotower-train`` console script (Hydra command-line overrides as arguments).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from twotower import CONFIG_DIR
from twotower.callbacks import StopOnNonFiniteLoss
from twotower.checkpoints import AtomicCheckpointIO, checkpoint_step, resume_checkpoint
from twotower.cli import (
    EXIT_INTERRUPTED, USER_ERRORS, fail, interruption, is_write_error, prepared_arguments, stop_on_signals, was_interrupted,
)  # fmt: skip
from twotower.config import (
    build, check_eval_ks, check_loss_sampler, check_monitor_groups, check_training_step, load_dotenv_file, resolved_config,
    resumed_config,
)  # fmt: skip
from twotower.data.datamodule import RetrievalDataModule
from twotower.distributed import configured_world_size, is_main_process, split_evenly
from twotower.errors import ConfigError
from twotower.fsutil import write_bytes_atomic
from twotower.loggers import build_loggers, drop_metrics_after, finish_wandb, log_summary, quiet_lightning, redact_secrets
from twotower.module import RetrievalModule
from twotower.report import format_table, write_results
from twotower.runs import (
    LAST_SWEEP, discard_refused_sweep, finish_sweep, read_status, register_resolvers, remove_empty_folders, run_labels,
    sweep_name, write_status,
)  # fmt: skip
from twotower.topk import choose_backend

PROG = "twotower-train"

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
    data = datamodule.data
    check_eval_ks(cfg.eval.ks, data.num_items)
    labels = run_labels(cfg)
    model = build(cfg.model.net)(data)
    if model_trainable:
        check_loss_sampler(loss, datamodule.sampler, labels)
        if cfg.eval.monitor is not None:
            check_monitor_groups(cfg.eval.monitor, data.eval_sets["val"].warm)
        ex = datamodule.train_examples  # what the sampler gives one example: the sizes of a step
        one = datamodule.sampler.sample(ex.user[:1], ex.item[:1], torch.Generator().manual_seed(0))
        tower = getattr(model, "item_tower", None)
        check_training_step(cfg, one, data.num_items, len(ex.user), tower.row_floats if tower is not None else 0)

    resume_from = resume_checkpoint(run_dir) if cfg.get("resume") else None

    if writes_files:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(config))
        datamodule.save_artifacts(run_dir)
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
        if cfg.eval.patience is not None and cfg.eval.monitor is not None:
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
        # No validation users (all training pairs trained on, eval.monitor=null): no validation loop.
        no_validation = {"limit_val_batches": 0} if len(data.eval_sets["val"].users) == 0 else {}
        quiet_lightning()
        trainer = build(
            cfg.trainer,
            logger=loggers,
            callbacks=callbacks,
            default_root_dir=str(run_dir),
            plugins=[AtomicCheckpointIO()],
            **no_validation,
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
