from twotower.models.tower import Tower
from twotower.models.two_tower import PopularityModel, TwoTowerModel

__all__ = ["PopularityModel", "Tower", "TwoTowerModel"]
