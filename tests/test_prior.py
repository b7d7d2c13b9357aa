"""The popularity prior: decayed click counts, per-user weights and the augmented inner
product, against values computed by hand."""

import math

import pytest
import torch

from twotower.prior import PopularityPrior, append_column

DAY = 86_400.0


def test_item_log_prior_by_hand():
    # Clicks on items 0, 0, 1, 2 at days 0, 14, 14, 7; the latest click is at day 14, so the ages are
    # 14, 0, 0 and 7 days. With a half-life of 14 days they weigh 0.5, 1, 1 and 0.5 ** 0.5.
    items = torch.tensor([0, 0, 1, 2])
    times = torch.tensor([0.0, 14 * DAY, 14 * DAY, 7 * DAY], dtype=torch.float64)
    decayed = PopularityPrior(warm_weight=1.0, cold_weight=2.0, half_life_days=14).item_log_prior(items, times, 4)
    assert decayed.tolist() == pytest.approx([math.log(2.5), math.log(2.0), math.log(1 + 0.5**0.5), 0.0], rel=1e-6)
    counted = PopularityPrior(warm_weight=1.0, cold_weight=2.0).item_log_prior(items, None, 4)  # no half-life: counts
    assert counted.tolist() == pytest.approx([math.log(3), math.log(2), math.log(2), 0.0], rel=1e-6)
    with pytest.raises(ValueError, match="needs the clicks' timestamps"):
        PopularityPrior(1.0, 2.0, 14).item_log_prior(items, None, 4)


def test_user_weights_and_the_augmented_inner_product():
    prior = PopularityPrior(warm_weight=0.5, cold_weight=3.0)
    weights = prior.user_weights(torch.tensor([True, False]))
    assert weights.tolist() == [0.5, 3.0]
    users, items = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.2, 0.4], [0.6, -0.2]])
    log_prior = torch.tensor([1.0, 2.0])
    scores = append_column(users, weights) @ append_column(items, log_prior).T
    # user 0 (warm): 0.2 + 0.5 * 1, 0.6 + 0.5 * 2; user 1 (cold): 0.4 + 3 * 1, -0.2 + 3 * 2
    assert scores.flatten().tolist() == pytest.approx([0.7, 1.6, 3.4, 5.8])


@pytest.mark.parametrize(
    "values, message",
    [
        ({"warm_weight": -1.0, "cold_weight": 1.0}, "warm_weight=-1.0: expected a number >= 0"),
        ({"warm_weight": 1.0, "cold_weight": math.inf}, "cold_weight=inf: expected a number >= 0"),
        ({"warm_weight": 1.0, "cold_weight": 1.0, "half_life_days": 0}, "half_life_days=0: expected a number of days > 0, or null"),
    ],
)
def test_bad_values_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        PopularityPrior(**values)


def test_without_timestamps_every_click_counts_alike(caplog):
    from types import SimpleNamespace
    from unittest.mock import create_autospec

    from omegaconf import OmegaConf

    from twotower.models import TwoTowerModel
    from twotower.wiring import build_prior

    model = create_autospec(TwoTowerModel, instance=True)
    untimed = SimpleNamespace(name="gowalla", clicks_before=lambda split: (torch.tensor([0, 1]), None))
    cfg = OmegaConf.create({"model": {"name": "two_tower", "popularity_prior": {"warm_weight": 1.0, "cold_weight": 2.0, "half_life_days": 14}}})
    assert build_prior(cfg, model, untimed) == (PopularityPrior(1.0, 2.0, None), None)
    assert "gowalla has no timestamps, so every click counts alike (half_life_days ignored)" in caplog.text
    cfg.model.popularity_prior = None
    assert build_prior(cfg, model, untimed) == (None, None)


def test_auto_weights_need_a_monitored_ranking_metric_and_validation_users(caplog):
    from types import SimpleNamespace
    from unittest.mock import create_autospec

    from omegaconf import OmegaConf

    from twotower.errors import ConfigError
    from twotower.models import TwoTowerModel
    from twotower.prior import WeightSearch
    from twotower.wiring import build_prior

    model = create_autospec(TwoTowerModel, instance=True)
    values = {"warm_weight": 2.0, "cold_weight": "auto", "half_life_days": None, "candidates": [0, 1, 3]}
    cfg = OmegaConf.create({"model": {"name": "two_tower", "popularity_prior": values}, "eval": {"monitor": "val/ndcg@20"}})
    data = SimpleNamespace(name="d", clicks_before=lambda split: (torch.tensor([0]), None),
                           eval_sets={"val": SimpleNamespace(users=torch.tensor([3, 4]))})  # fmt: skip
    prior, search = build_prior(cfg, model, data)
    assert prior == PopularityPrior(2.0, 0.0, None) and search == WeightSearch((0, 1, 3), warm=False, cold=True)
    cfg.eval.monitor = "val/coverage@10"
    with pytest.raises(ConfigError, match="eval.monitor=val/coverage@10: a weight of the popularity prior set to auto is chosen on the monitored"):
        build_prior(cfg, model, data)
    cfg.model.popularity_prior.candidates = []
    with pytest.raises(ConfigError, match=r"candidates=\[\]: expected a non-empty list of numbers >= 0"):
        build_prior(cfg, model, data)
    # Nothing to choose on (no validation users, e.g. the final training on every pair): no prior, said once.
    data.eval_sets["val"].users = torch.tensor([], dtype=torch.long)
    cfg.model.popularity_prior.candidates = [0, 1]
    assert build_prior(cfg, model, data) == (None, None)
    assert "no popularity prior: its weights are chosen on validation and d has no validation users" in caplog.text


def test_choose_weights_by_hand():
    from twotower.prior import choose_weights

    # Candidates 0, 1, 3 (rows) for users 0-1 (warm) and 2-3 (cold).
    metric = torch.tensor([[0.1, 0.3, 0.0, 0.2],
                           [0.3, 0.3, 0.1, 0.1],
                           [0.2, 0.4, 0.1, 0.3]])  # fmt: skip
    warm = torch.tensor([True, True, False, False])
    # warm means 0.2, 0.3, 0.3 -> a tie between 1 and 3 goes to the smaller; cold means 0.1, 0.1, 0.2 -> 3
    assert choose_weights(metric, warm, [0.0, 1.0, 3.0], (9.0, 9.0)) == (1.0, 3.0)
    # No cold user: the cold weight stays what it was.
    assert choose_weights(metric[:, :2], warm[:2], [0.0, 1.0, 3.0], (9.0, 7.0)) == (1.0, 7.0)
