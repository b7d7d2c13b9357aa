from twotower.models.early_fusion import EarlyFusionModel, require_factorized
from twotower.models.tower import Tower
from twotower.models.two_tower import PopularityModel, TwoTowerModel

__all__ = ["EarlyFusionModel", "PopularityModel", "Tower", "TwoTowerModel", "require_factorized"]
