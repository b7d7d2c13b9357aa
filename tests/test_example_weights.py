"""Per-user example weights: the weights against hand values, the weighted losses against hand
values, and a real run's batches carrying them."""

from __future__ import annotations

import math

import pytest
import torch

from twotower.config import compose_config
from twotower.example_weights import user_count_weights, weighted_mean
from twotower.losses import CosineContrastiveLoss, ListwiseLoss, ScoredBatch, listwise_softmax_loss
from conftest import TINY


def test_user_count_weights_by_hand():
    # User 0 has 3 examples, user 1 one, user 2 two, user 3 none (absent from the examples).
    users = torch.tensor([0, 2, 0, 1, 2, 0])
    expected = [3**-0.5, 2**-0.5, 3**-0.5, 1.0, 2**-0.5, 3**-0.5]
    torch.testing.assert_close(user_count_weights(users, 4, 0.5), torch.tensor(expected))
    torch.testing.assert_close(user_count_weights(users, 4, 1.0), torch.tensor([1 / 3, 1 / 2, 1 / 3, 1.0, 1 / 2, 1 / 3]))
    torch.testing.assert_close(user_count_weights(users, 4, 0.0), torch.ones(6))
    # Exponent 1: every user's examples weigh 1 in all.
    w = user_count_weights(users, 4, 1.0)
    assert [w[users == u].sum().item() for u in range(3)] == pytest.approx([1.0, 1.0, 1.0])


def test_weighted_mean_by_hand_and_scale_free():
    terms, weight = torch.tensor([1.0, 4.0, 10.0]), torch.tensor([1.0, 0.5, 0.5])
    assert weighted_mean(terms, weight).item() == pytest.approx((1 + 2 + 5) / 2)
    assert weighted_mean(terms, 7 * weight).item() == pytest.approx((1 + 2 + 5) / 2)
    assert weighted_mean(terms, None).item() == pytest.approx(5.0)


def test_weighted_listwise_loss_by_hand():
    # Row losses (as in test_losses): log(1 + e^-1 + e^-2) and log(1 + 2e); weights 3 and 1.
    pos, neg = torch.tensor([2.0, 0.0]), torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    rows = [math.log(1 + math.exp(-1) + math.exp(-2)), math.log(1 + 2 * math.e)]
    expected = (3 * rows[0] + 1 * rows[1]) / 4
    assert listwise_softmax_loss(pos, neg, torch.tensor([3.0, 1.0])).item() == pytest.approx(expected, abs=1e-6)
    # The in-batch path (the positive is column b of its row) gives the same weighted value.
    columns = torch.tensor([[2.0, 1.0, 0.0], [1.0, 0.0, 1.0]])  # row 0's positive in column 0, row 1's in column 1
    batch = ScoredBatch(pos=torch.tensor([2.0, 0.0]), neg=columns, pos_column=torch.tensor([0, 1]), weight=torch.tensor([3.0, 1.0]))
    assert ListwiseLoss(temperature=1.0)(batch).item() == pytest.approx(expected, abs=1e-6)
    batch.weight = None
    assert ListwiseLoss(temperature=1.0)(batch).item() == pytest.approx(sum(rows) / 2, abs=1e-6)


def test_weighted_cosine_contrastive_loss_by_hand():
    # Rows as in test_losses: 0.2 + 2 * 0.25 / 3 and 0.6 + 2 * 0.6 / 2; weights 1 and 3.
    pos = torch.tensor([0.8, 0.4])
    neg = torch.tensor([[0.5, 0.1, 0.35], [0.9, 0.99, 0.2]])
    valid = torch.tensor([[True, True, True], [True, False, True]])
    batch = ScoredBatch(pos=pos, neg=neg, neg_valid=valid, weight=torch.tensor([1.0, 3.0]))
    row0, row1 = 0.2 + 2 * 0.25 / 3, 0.6 + 2 * 0.6 / 2
    loss = CosineContrastiveLoss(margin=0.3, negative_weight=2.0)(batch)
    assert loss.item() == pytest.approx((row0 + 3 * row1) / 4, abs=1e-6)


@pytest.mark.parametrize("make", [ListwiseLoss, CosineContrastiveLoss])
def test_negative_user_weight_exponent_is_refused(make):
    with pytest.raises(ValueError, match=r"loss\.user_weight_exponent=-0\.5: expected >= 0"):
        make(user_weight_exponent=-0.5)


def test_a_runs_batches_carry_each_users_weight(tmp_path):
    from twotower.wiring import build_run

    cfg = compose_config([*TINY, "loss=listwise", "loss.user_weight_exponent=0.5", "data.batch_size=64"], output_dir=tmp_path)
    run = build_run(cfg)
    dm = run.datamodule
    examples = dm.train_examples.user
    counts = torch.bincount(examples)
    rows = torch.arange(10, 74)
    batch = dm.train_batch(rows, torch.Generator().manual_seed(0))
    torch.testing.assert_close(batch.weight, counts[examples[rows]].float().pow(-0.5))
    assert torch.isfinite(run.module.batch_loss(batch))
    # Without the option the batches carry no weight: the plain mean.
    plain = build_run(compose_config([*TINY, "loss=listwise", "data.batch_size=64"], output_dir=tmp_path / "plain"))
    assert plain.datamodule.train_batch(rows, torch.Generator().manual_seed(0)).weight is None
