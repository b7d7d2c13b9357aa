"""The one build path: a composed config -> the prepared data, the model, the loss and the
LightningModule. Training, evaluation, export, the benchmarks and the tests build a run
only through :func:`build_run` (or, for the data alone, :func:`build_datamodule`), so what
they measure is what ``twotower-train`` trains.

Every refusal a config can earn once its data is known (batch split over devices, sparse
gradients under DDP, loss/sampler pair, monitored groups, the memory of one step) is raised
here, before anything is written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from twotower.config import build, check_eval_ks, check_loss_sampler, check_monitor_groups, check_training_step
from twotower.covisit import is_weight
from twotower.data.datamodule import RetrievalDataModule
from twotower.data.prepare import PreparedData
from twotower.errors import ConfigError
from twotower.frequency import StreamingFrequencyEstimator
from twotower.launch import configured_world_size, split_evenly
from twotower.metrics import BANDS
from twotower.models.two_tower import TwoTowerModel
from twotower.module import RetrievalModule
from twotower.prior import AUTO, PopularityPrior, WeightSearch, monitored_ranking_metric
from twotower.runs import run_labels
from twotower.topk import choose_backend

log = logging.getLogger("twotower")


@dataclass
class Run:
    """A built run: ``loss`` is ``None`` for a model that is not trained (popularity)."""

    cfg: DictConfig
    datamodule: RetrievalDataModule
    model: torch.nn.Module
    loss: Any | None
    module: RetrievalModule

    @property
    def data(self) -> PreparedData:
        return self.datamodule.data

    @property
    def trainable(self) -> bool:
        return self.loss is not None


def is_trainable(cfg: DictConfig) -> bool:
    return cfg.model.optimizer is not None


def build_datamodule(cfg: DictConfig, train_on: str, source: Callable | None = None) -> RetrievalDataModule:
    """The DataModule of ``cfg`` (not yet set up). ``train_on``: the loss's ``trains_on``;
    ``source``: a callable returning the interactions, instead of ``cfg.data.source``
    (the benchmarks time or cache it)."""
    data = cfg.data
    return RetrievalDataModule(
        source=source or build(data.source, _partial_=True),
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
        # How the loss weighs each user's examples: the batches carry the weights.
        user_weight_exponent=(cfg.get("loss") or {}).get("user_weight_exponent", 0.0) if is_trainable(cfg) else 0.0,
        walk_labels=bool((cfg.get("loss") or {}).get("walk_label_weight", 0.0)) if is_trainable(cfg) else False,
    )


def check_devices(cfg: DictConfig) -> None:
    """The global batch divides over the processes; sparse gradients only on one device."""
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


def check_first_step(cfg: DictConfig, datamodule: RetrievalDataModule, model: torch.nn.Module, loss: Any) -> None:
    """The loss/sampler pair, the monitored groups and the memory of one training step."""
    data = datamodule.data
    check_loss_sampler(loss, datamodule.sampler, run_labels(cfg))
    if cfg.eval.monitor is not None:
        check_monitor_groups(cfg.eval.monitor, data.eval_sets["val"].warm)
    examples = datamodule.train_examples  # what the sampler gives one example: the sizes of a step
    one = datamodule.sampler.sample(examples.user[:1], examples.item[:1], torch.Generator().manual_seed(0))
    tower = getattr(model, "item_tower", None)
    check_training_step(cfg, one, data.num_items, len(examples.user), tower.row_floats if tower is not None else 0)


def build_run(
    cfg: DictConfig,
    config: dict | None = None,
    fitted_features: dict | None = None,
    source: Callable | None = None,
    for_training: bool = True,
) -> Run:
    """Seed, prepare the data, build the model, the loss and the LightningModule of ``cfg``.

    ``config`` / ``fitted_features``: what the module stores in its checkpoints (the
    resolved run config; the data's fitted features by default). ``source``: see
    :func:`build_datamodule`. ``for_training=False`` (evaluating a trained checkpoint)
    skips the checks of a training step."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    trainable = is_trainable(cfg)
    if for_training:
        check_devices(cfg)
    loss = build(cfg.loss) if trainable else None
    datamodule = build_datamodule(cfg, train_on=loss.trains_on if trainable else "positives", source=source)
    datamodule.setup("fit")
    data = datamodule.data
    check_eval_ks(cfg.eval.ks, data.num_items)
    model = build(cfg.model.net)(data)
    if trainable and for_training:
        check_first_step(cfg, datamodule, model, loss)
    if hasattr(model, "read_features"):
        datamodule.read_only(model.read_features)
    on_gpu = cfg.trainer.accelerator in ("gpu", "cuda") or (cfg.trainer.accelerator == "auto" and torch.cuda.is_available())
    covisit_weight = check_covisit_weight(cfg.model.get("covisit_weight", 0.0), cfg.eval.backend)
    if for_training:
        check_covisit_search(cfg.eval.get("covisit_search"), cfg.eval.monitor, len(data.eval_sets["val"].users), trainable)
    # The co-visitation score is added to the exact scores: auto means torch then.
    requested = "torch" if covisit_weight and cfg.eval.backend == "auto" else cfg.eval.backend
    eval_backend = choose_backend(requested, getattr(model, "factorizes", False), data.num_items, on_gpu)
    if eval_backend == "faiss":
        datamodule.max_eval_scores = None  # FAISS never holds users x items scores: larger user chunks
    prior, weight_search = build_prior(cfg, model, data)
    module = RetrievalModule(
        model=model,
        loss=loss,
        optimizer=build(cfg.model.optimizer) if trainable else None,
        ks=list(cfg.eval.ks),
        item_counts=data.item_counts,
        config=config,
        fitted_features=data.fitted if fitted_features is None else fitted_features,
        frequency_estimator=StreamingFrequencyEstimator(**cfg.frequency_estimator) if cfg.sampler.get("logq") == "streaming" else None,
        eval_backend=eval_backend,
        scheduler=build(cfg.model.scheduler) if trainable and cfg.model.get("scheduler") else None,
        monitor=cfg.eval.monitor,
        popularity_bands=tuple(cfg.eval.get("popularity_bands", BANDS)),
        popularity_prior=prior,
        weight_search=weight_search,
        covisit_weight=covisit_weight,
    )
    return Run(cfg=cfg, datamodule=datamodule, model=model, loss=loss, module=module)


def check_covisit_weight(weight, eval_backend: str) -> float:
    """``model.covisit_weight`` as a float: a number >= 0, and 0 with ``eval.backend=faiss``."""
    if not is_weight(weight):
        raise ConfigError(f"model.covisit_weight={weight!r}: expected a number >= 0 (0: no co-visitation score)")
    if weight and eval_backend == "faiss":
        raise ConfigError("model.covisit_weight adds a score that FAISS does not index: expected eval.backend=torch, or model.covisit_weight=0")
    return float(weight)


def check_covisit_search(weights, monitor: str | None, val_users: int, trainable: bool = True) -> tuple[float, ...] | None:
    """``eval.covisit_search`` as sorted distinct floats (or None): numbers >= 0, compared on a
    monitored per-user ranking metric over validation users, with a trained model's best checkpoint."""
    if weights is None:
        return None
    values = list(weights) if OmegaConf.is_list(weights) or isinstance(weights, (list, tuple)) else None
    if not values or not all(is_weight(w) for w in values):
        raise ConfigError(f"eval.covisit_search={weights!r}: expected a list of co-visitation weights >= 0 (e.g. [0, 0.1, 0.3]), or null")
    if not trainable:
        raise ConfigError("eval.covisit_search ranks the best checkpoint of a trained model and this model does not train "
                          "(model.optimizer=null): expected eval.covisit_search=null")  # fmt: skip
    if val_users == 0:
        raise ConfigError("eval.covisit_search compares weights on validation and this run has no validation users: "
                          "expected data.split.val_ratio > 0, or eval.covisit_search=null")  # fmt: skip
    try:
        monitored_ranking_metric(monitor)
    except ValueError:
        raise ConfigError(f"eval.covisit_search picks the weight with the best eval.monitor={monitor}: expected "
                          "eval.monitor=val/<recall|ndcg|hit_rate|mrr|precision>@K") from None  # fmt: skip
    return tuple(sorted({float(w) for w in values}))


def build_prior(cfg: DictConfig, model: torch.nn.Module, data: PreparedData) -> tuple[PopularityPrior | None, WeightSearch | None]:
    """``model.popularity_prior`` (null: none) and, for weights set to ``auto``, their search on
    validation. Only for a model whose score is the inner product of its two encodings; ``auto``
    needs a monitored per-user ranking metric. Two cases the default config meets on some data
    are not refusals but a logged notice: without timestamps every click counts alike (the
    LightGCN files), and without validation users nothing can be chosen, so no prior."""
    values = cfg.model.get("popularity_prior")
    if values is None:
        return None, None
    if not isinstance(model, TwoTowerModel):
        raise ConfigError(f"model.popularity_prior is set for model {cfg.model.name}: expected a two-tower model (its scores are inner products), or model.popularity_prior=null")
    values = dict(OmegaConf.to_container(values, resolve=True))
    candidates = tuple(values.pop("candidates", None) or ())
    searched = {group: values.get(f"{group}_weight") == AUTO for group in ("warm", "cold")}
    try:
        prior = PopularityPrior(**{**values, **{f"{g}_weight": 0.0 for g, auto in searched.items() if auto}})
        search = WeightSearch(candidates, **searched) if any(searched.values()) else None
        if search is not None and len(data.eval_sets["val"].users) == 0:
            log.warning("no popularity prior: its weights are chosen on validation and %s has no validation users "
                        "(set model.popularity_prior.warm_weight / cold_weight to numbers to use one)", data.name)  # fmt: skip
            return None, None
        if search is not None:
            monitored_ranking_metric(cfg.eval.monitor)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    except TypeError as err:
        raise ConfigError(f"model.popularity_prior: {err}; expected half_life_days, warm_weight, cold_weight and candidates") from None
    if prior.half_life_days is not None and data.clicks_before("val")[1] is None:
        log.warning("popularity prior: %s has no timestamps, so every click counts alike (half_life_days ignored)", data.name)
        prior = replace(prior, half_life_days=None)
    return prior, search
