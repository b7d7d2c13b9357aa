"""``train(cfg)``: the recipe of one run. Build it (:func:`twotower.wiring.build_run`), write
its config and fitted features, fit, test the best checkpoint (the last epoch when nothing
is validated), write ``results.json`` and return the metrics. The ``twotower-train``
command around it is :mod:`twotower.train`.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from twotower.checkpoints import AtomicCheckpointIO, checkpoint_step, resume_checkpoint
from twotower.cli import redact_secrets
from twotower.config import build, resolved_config
from twotower.errors import ConfigError
from twotower.fsutil import write_json_atomic
from twotower.launch import is_main_process
from twotower.loggers import build_loggers, drop_metrics_after, quiet_lightning
from twotower.metrics import RankingAccumulator, popularity_ranking
from twotower.per_user import write_per_user
from twotower.report import format_table, write_results
from twotower.rerank import covisit_table, rank_by_covisit_weight, tested_batches
from twotower.runs import run_labels, sweep_name
from twotower.wandb_runs import finish_wandb, log_summary
from twotower.wiring import Run, build_run, check_covisit_search

COVISIT_SEARCH_FILE = "covisit_search.json"
log = logging.getLogger("twotower")


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
    writes_files = is_main_process()  # under DDP, rank 0 alone writes the run's files
    run = build_run(cfg, config=config)  # everything that can be refused is checked before any file is written
    resume_from = resume_checkpoint(run_dir) if cfg.get("resume") else None
    if writes_files:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(config))
        run.datamodule.save_artifacts(run_dir)
        if resume_from is not None:
            drop_metrics_after(run_dir, checkpoint_step(resume_from))  # the resumed run logs those again
    data = run.data
    log.info(
        "data %s: %d users, %d items, %d training examples; val %d users, test %d users",
        data.name, data.num_users, data.num_items, len(run.datamodule.train_examples.user),
        len(data.eval_sets["val"].users), len(data.eval_sets["test"].users),
    )  # fmt: skip
    exit_code = 1
    try:
        loggers = run_loggers(cfg, run_dir, config)
        trainer = build(
            cfg.trainer,
            logger=loggers,
            callbacks=list(callbacks or []) + run_callbacks(cfg, run, run_dir, logging=bool(loggers)),
            default_root_dir=str(run_dir),
            plugins=[AtomicCheckpointIO()],
            # No validation users (all training pairs trained on, eval.monitor=null): no validation loop.
            **({"limit_val_batches": 0} if len(data.eval_sets["val"].users) == 0 else {}),
        )
        metrics = fit_and_test(trainer, run, resume_from)
        reference = popularity_reference(run)
        metrics.update(reference.compute("popularity/test"))
        if writes_files:
            searched = ""
            if cfg.eval.get("covisit_search") is not None:
                metrics["val/covisit/best_weight"], searched = search_covisit_weight(run, run_dir)
            write_results(metrics, run_dir)
            write_test_per_user(run, run_dir, reference.per_user("popularity/test"))
            log_summary(metrics)
            print(f"\nTest metrics ({data.name}, {cfg.model.name}):\n{format_table(metrics, 'test')}\n{prior_line(run)}{covisit_line(run)}{searched}run directory: {run_dir}")
        exit_code = 0
        return metrics
    finally:
        finish_wandb(exit_code)


def prior_line(run: Run) -> str:
    """What the popularity prior added to the model's scores, for the end-of-run printout."""
    prior, search = run.module.popularity_prior, run.module.weight_search
    if prior is None:
        return ""
    how = lambda searched: " (chosen on validation)" if searched else ""  # noqa: E731
    age = "every click alike" if prior.half_life_days is None else f"half-life {prior.half_life_days:g} days"
    return (f"popularity prior: warm weight {prior.warm_weight:g}{how(search and search.warm)}, cold weight "
            f"{prior.cold_weight:g}{how(search and search.cold)}, {age}\n")


def covisit_line(run: Run) -> str:
    """What the co-visitation score added to the model's scores, for the end-of-run printout."""
    weight = run.module.covisit_weight
    return f"co-visitation score: weight {weight:g} (twotower.covisit)\n" if weight else ""


def search_covisit_weight(run: Run, run_dir: Path) -> tuple[float, str]:
    """Rank the validation users with the best checkpoint once per weight of ``eval.covisit_search``
    (:func:`twotower.rerank.rank_by_covisit_weight`), write ``covisit_search.json`` (every
    weight's validation metrics, the best on ``eval.monitor``; ties to the smaller weight);
    ``(the best weight, the lines the end-of-run printout shows)``."""
    from twotower.restore import load_run

    cfg = run.cfg
    weights = check_covisit_search(cfg.eval.covisit_search, cfg.eval.monitor, len(run.data.eval_sets["val"].users))
    _, best_run, _ = load_run(run_dir, "best")
    ranked = rank_by_covisit_weight(best_run, "val", list(weights))
    best = max(ranked, key=lambda w: ranked[w][cfg.eval.monitor])  # the first of equals: the smaller weight
    write_json_atomic(run_dir / COVISIT_SEARCH_FILE,
                      {"monitor": cfg.eval.monitor, "best_weight": best, "metrics": {f"{w:g}": ranked[w] for w in weights}})  # fmt: skip
    return best, (f"co-visitation weight on validation (best checkpoint; eval.covisit_search):\n{covisit_table(ranked, 'val', list(cfg.eval.ks))}\n"
            f"best {cfg.eval.monitor}: covisit_weight={best:g} (the model.covisit_weight for the final run)\n")


def run_loggers(cfg: DictConfig, run_dir: Path, config: dict) -> list:
    """The CSV and W&B loggers, tagged with what the run is; a sweep's runs share a W&B
    group (the sweep), so the dashboard compares them side by side."""
    labels = run_labels(cfg)
    tags = redact_secrets([f"{k}:{v}" for k, v in labels.items()] + list(cfg.tags))
    group = cfg.logger.wandb.group or sweep_name() or labels.get("experiment")
    quiet_lightning()
    return build_loggers(OmegaConf.to_container(cfg.logger, resolve=True), run_dir, config, group, tags)


def run_callbacks(cfg: DictConfig, run: Run, run_dir: Path, logging: bool) -> list[L.Callback]:
    """The callbacks of ``cfg.callbacks`` that apply to this run (``conf/callbacks``), built
    with the run's own values, then the sampler's own (the miner of ``sampler=hard``)."""
    if "callbacks" not in cfg:
        raise ConfigError("the config has no callbacks group (a run folder written by an older twotower?); expected callbacks=default")
    applies = {
        "progress_bar": cfg.trainer.get("enable_progress_bar", True),
        "non_finite_loss": run.trainable,
        "best_checkpoint": run.trainable,
        "last_checkpoint": run.trainable,
        "early_stopping": run.trainable and cfg.eval.patience is not None and cfg.eval.monitor is not None,
        "learning_rate": run.module.scheduler_factory is not None and logging,
    }
    checkpoints = {"dirpath": str(run_dir / "checkpoints")}  # the run's folder now, also when it was moved and resumed
    values = {
        "progress_bar": {"refresh_rate": cfg.progress_bar_refresh_steps},
        "non_finite_loss": {"temperature": cfg.loss.get("temperature"), "lr": (cfg.model.optimizer or {}).get("lr")},
        "best_checkpoint": checkpoints,
        "last_checkpoint": checkpoints,
    }
    built = [build(node, **values.get(name, {})) for name, node in cfg.callbacks.items() if node is not None and applies.get(name, True)]
    if run.trainable:
        built += getattr(run.datamodule.sampler, "callbacks", lambda: [])()
    return built


def fit_and_test(trainer: L.Trainer, run: Run, resume_from: str | None) -> dict[str, float]:
    """Fit (a trained model), then test the best checkpoint (the last epoch when nothing is
    monitored); the last validation metrics and the test metrics."""
    cfg, module, datamodule = run.cfg, run.module, run.datamodule
    metrics: dict[str, float] = {}
    if not run.trainable:
        tester(trainer, cfg).test(module, datamodule=datamodule, verbose=False)
        return {**metrics, **module.test_metrics}
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
    best = next((c for c in trainer.checkpoint_callbacks if c.filename == "best"), None)
    if best is not None and best.best_model_score is not None:
        # The checkpoint that is tested; what a hyper-parameter search should optimize.
        metrics[f"best/{cfg.eval.monitor}"] = float(best.best_model_score)
    best_path = (best.best_model_path or None) if best is not None else None
    tester(trainer, cfg).test(module, datamodule=datamodule, ckpt_path=best_path, weights_only=True, verbose=False)
    return {**metrics, **module.test_metrics}


def popularity_reference(run: Run) -> RankingAccumulator:
    """The most-popular baseline's rankings of the test users the model was tested on (the
    run's own ``limit_test_batches``): ``popularity/test/...`` beside the model in the table,
    in ``results.json`` and in ``per_user.npz``."""
    loader = run.datamodule.test_dataloader()
    batches = itertools.islice(loader, tested_batches(len(loader), run.cfg.trainer.get("limit_test_batches")))  # built one at a time, only those the model was tested on
    return popularity_ranking(run.data.item_counts, batches, list(run.cfg.eval.ks), run.module.popularity_bands)


def write_test_per_user(run: Run, run_dir: Path, reference: dict[str, torch.Tensor]) -> None:
    """``per_user.npz``: the model's and the popularity reference's metrics for each test user
    (raw ids; the tested users are the first ones of the test set, in order)."""
    model = run.module.test_per_user
    if not model:
        return
    tested = run.data.eval_sets["test"].users[: len(model["warm"])]
    users = run.data.user_ids[tested.numpy()].tolist()
    write_per_user(run_dir, users, model["warm"], {**model, **reference})


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


