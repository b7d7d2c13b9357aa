"""Model builders named by ``conf/model/*.yaml`` (``_target_`` with ``_partial_``):
each takes the prepared data, which supplies the data-derived sizes."""

from __future__ import annotations

from twotower.data.prepare import PreparedData
from twotower.models.early_fusion import EarlyFusionModel
from twotower.models.two_tower import PopularityModel, TwoTowerModel


def two_tower(data: PreparedData, **hparams) -> TwoTowerModel:
    return TwoTowerModel(data.fitted, **hparams)


def early_fusion(data: PreparedData, **hparams) -> EarlyFusionModel:
    """Not for retrieval (its score does not factorize): the measured counter-example."""
    return EarlyFusionModel(data.fitted, **hparams)


def popularity(data: PreparedData) -> PopularityModel:
    return PopularityModel(data.item_counts)
