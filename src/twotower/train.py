"""``train(cfg)``: build the data, model, loss and Trainer from a composed config,
fit, test the best checkpoint, and return the metrics. ``main`` is the
``twotower-train`` console script (Hydra command-line overrides as arguments).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from twotower.config import CONFIG_DIR, build, check_loss_sampler, load_dotenv_file, resolved_config
from twotower.data.datamodule import RetrievalDataModule
from twotower.loggers import build_loggers, finish_wandb
from twotower.module import RetrievalModule
from twotower.report import format_table, write_results

log = logging.getLogger("twotower")


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
    )


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and test one configuration; returns the test (and last validation) metrics.

    Everything the run writes goes under ``cfg.paths.output_dir``: the resolved
    config, ``features.json``, checkpoints, CSV/W&B logs and ``results.json``.
    """
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = resolved_config(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    # Everything that can be refused is checked before any data is loaded or file written.
    loss = build(cfg.loss)
    model_trainable = cfg.model.optimizer is not None
    datamodule = build_datamodule(cfg, train_on=loss.trains_on if model_trainable else "positives")
    datamodule.setup("fit")
    if model_trainable:
        check_loss_sampler(loss, datamodule.sampler, cfg)

    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(config))
    datamodule.save_artifacts(run_dir)
    data = datamodule.data
    model = build(cfg.model.net)(data)
    module = RetrievalModule(
        model=model,
        loss=loss if model_trainable else None,
        optimizer=build(cfg.model.optimizer) if model_trainable else None,
        ks=list(cfg.eval.ks),
        item_counts=data.item_counts,
        config=config,
        fitted_features=data.fitted,
    )
    log.info(
        "data %s: %d users, %d items, %d training examples; val %d users, test %d users",
        data.name, data.num_users, data.num_items, len(datamodule.train_examples.user),
        len(data.eval_sets["val"].users), len(data.eval_sets["test"].users),
    )  # fmt: skip

    callbacks = []
    checkpoint = None
    if model_trainable:
        checkpoint = L.pytorch.callbacks.ModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"),
            filename="best",
            monitor=cfg.eval.monitor,
            mode=cfg.eval.mode,
            save_last=True,
        )
        callbacks.append(checkpoint)
    try:
        trainer = build(
            cfg.trainer,
            logger=build_loggers(OmegaConf.to_container(cfg.logger, resolve=True), run_dir, config),
            callbacks=callbacks,
            default_root_dir=str(run_dir),
        )
        metrics: dict[str, float] = {}
        if model_trainable:
            trainer.fit(module, datamodule=datamodule)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
            best = checkpoint.best_model_path or None
            trainer.test(module, datamodule=datamodule, ckpt_path=best, weights_only=False, verbose=False)
        else:
            trainer.test(module, datamodule=datamodule, verbose=False)
        metrics.update(module.test_metrics)
        write_results(metrics, run_dir)
        print(f"\nTest metrics ({data.name}, {cfg.model.name}):\n{format_table(metrics, 'test')}\nrun directory: {run_dir}")
        return metrics
    finally:
        finish_wandb()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    # Returned to Hydra sweepers (hparams_search) as the value to optimize.
    return metrics.get(cfg.eval.monitor)


def main() -> None:
    load_dotenv_file()
    torch.set_float32_matmul_precision("high")
    _hydra_main()


if __name__ == "__main__":
    main()
