"""A trained run's model ranking a split again, in a fresh Trainer that logs and checkpoints
nothing: its metrics as they are, or once per weight of the co-visitation score
(:mod:`twotower.covisit`), to choose that weight on validation (``twotower-evaluate
--covisit-weight``, and a run's ``eval.covisit_search`` at its end)."""

from __future__ import annotations

import lightning as L

from twotower.loggers import quiet_lightning
from twotower.wiring import Run


def rank(run: Run, split: str) -> dict[str, float]:
    """The metrics of ``run``'s model ranking ``split``'s users (the run's own test-batch limit,
    e.g. debug=fast's, on test, so the same users are evaluated)."""
    if len(run.data.eval_sets[split].users) == 0:
        raise ValueError(f"{run.data.name} has no {split} users in this run (data.split.val_ratio=0?): expected a run with a {split} split")
    limit = run.cfg.trainer.get("limit_test_batches", None) if split == "test" else None
    quiet_lightning()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu",
                        enable_model_summary=False, **({"limit_test_batches": limit} if limit is not None else {}))  # fmt: skip
    if split == "test":
        trainer.test(run.module, datamodule=run.datamodule, verbose=False)
        return dict(run.module.test_metrics)
    trainer.validate(run.module, datamodule=run.datamodule, verbose=False)
    return dict(run.module.val_metrics)


def tested_batches(num_batches: int, limit) -> int:
    """How many of ``num_batches`` test batches a run with ``trainer.limit_test_batches=limit``
    ranks, as Lightning counts them: all (null), a number of batches, or a fraction of them."""
    if limit is None or isinstance(limit, bool):
        return num_batches
    return int(limit * num_batches) if isinstance(limit, float) else min(limit, num_batches)


def tested_user_count(run: Run) -> int:
    """How many test users (the first ones) the run's test ranked."""
    loader, total = run.datamodule.test_dataloader(), len(run.data.eval_sets["test"].users)
    return min(total, tested_batches(len(loader), run.cfg.trainer.get("limit_test_batches")) * loader.dataset.chunk)


def rank_by_covisit_weight(run: Run, split: str, weights: list[float]) -> dict[float, dict[str, float]]:
    """``split``'s metrics of ``run``'s model ranking with each co-visitation weight, exactly
    (as a run with that ``model.covisit_weight`` ranks, whatever its ``eval.backend``)."""
    run.module.eval_backend = "torch"
    ranked = {}
    for weight in weights:
        run.module.covisit_weight = weight
        ranked[weight] = rank(run, split)
    return ranked


def covisit_table(ranked: dict[float, dict[str, float]], split: str, ks: list[int]) -> str:
    """One row per weight: Recall and NDCG at each cut-off."""
    columns = [f"{name}@{k}" for name in ("recall", "ndcg") for k in ks]
    lines = ["covisit_weight" + "".join(c.rjust(12) for c in columns)]
    lines += [f"{w:<14g}" + "".join(f"{m[f'{split}/{c}']:12.4f}" for c in columns) for w, m in ranked.items()]
    return "\n".join(lines)
