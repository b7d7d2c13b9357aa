"""Losses: the listwise softmax cross-entropy, its temperature and logQ correction,
masking of invalid negatives, mean reduction, and the MSE baseline, against hand values."""

from __future__ import annotations

import math

import pytest
import torch

from twotower.candidates import mask_value
from twotower.losses import (
    ListwiseLoss,
    MSELoss,
    ScoredBatch,
    corrected_logits,
    listwise_softmax_loss,
    squared_error_loss,
)


def test_listwise_softmax_loss_matches_hand_computed_2x3():
    # Row 0: logits [pos, neg1, neg2] = [2, 1, 0]
    #   -log(e^2 / (e^2 + e^1 + e^0)) = log(1 + e^-1 + e^-2) = log(1.50321472) = 0.4076059644
    # Row 1: logits [0, 1, 1]
    #   -log(e^0 / (e^0 + 2 e^1)) = log(1 + 2e) = log(6.43656366) = 1.8619948041
    # Mean over the batch: (0.4076059644 + 1.8619948041) / 2 = 1.1348003843
    pos = torch.tensor([2.0, 0.0])
    neg = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    loss = listwise_softmax_loss(pos, neg)
    assert loss.item() == pytest.approx(1.1348003843, abs=1e-6)
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-1) + math.exp(-2)) + math.log(1 + 2 * math.e)) / 2, abs=1e-6)


def test_listwise_softmax_loss_2x2_single_negative():
    # One negative per row: -log sigmoid(pos - neg).
    # Row 0: pos=1, neg=0: log(1 + e^-1) = 0.3132616875; row 1: pos=0, neg=0: log 2 = 0.6931471806.
    # Mean: 0.5032044340
    loss = listwise_softmax_loss(torch.tensor([1.0, 0.0]), torch.tensor([[0.0], [0.0]]))
    assert loss.item() == pytest.approx(0.5032044340, abs=1e-6)


def test_listwise_loss_divides_by_temperature():
    # Similarities pos=[1.0, 0.0], neg=[[0.5, 0.0], [0.5, 0.5]] with tau=0.5 give the logits
    # [2, 1, 0] and [0, 1, 1] of the hand example above: loss 1.1348003843.
    batch = ScoredBatch(pos=torch.tensor([1.0, 0.0]), neg=torch.tensor([[0.5, 0.0], [0.5, 0.5]]))
    assert ListwiseLoss(temperature=0.5)(batch).item() == pytest.approx(1.1348003843, abs=1e-6)
    # tau=1 keeps the raw similarities: row 0 [1, .5, 0]: log(1 + e^-.5 + e^-1) = 0.6803; row 1 [0, .5, .5]:
    # log(1 + 2 e^.5) = 1.4580; mean 1.0691. A different value, so the temperature matters.
    expected_tau1 = (math.log(1 + math.exp(-0.5) + math.exp(-1)) + math.log(1 + 2 * math.exp(0.5))) / 2
    assert ListwiseLoss(temperature=1.0)(batch).item() == pytest.approx(expected_tau1, abs=1e-6)
    assert expected_tau1 == pytest.approx(1.0691, abs=1e-4)


def test_corrected_logits_shift_each_logit_by_minus_log_q():
    torch.manual_seed(0)
    pos, neg = torch.randn(3), torch.randn(3, 4)
    pos_logq = torch.log(torch.tensor([0.5, 0.1, 0.01]))
    neg_logq = torch.log(torch.rand(3, 4) * 0.9 + 0.05)
    tau = 0.2
    plain_pos, plain_neg = corrected_logits(ScoredBatch(pos=pos, neg=neg), tau)
    torch.testing.assert_close(plain_pos, pos / tau)
    torch.testing.assert_close(plain_neg, neg / tau)
    corr_pos, corr_neg = corrected_logits(ScoredBatch(pos=pos, neg=neg, pos_logq=pos_logq, neg_logq=neg_logq), tau)
    torch.testing.assert_close(corr_pos, plain_pos - pos_logq)
    torch.testing.assert_close(corr_neg, plain_neg - neg_logq)


def test_logq_corrected_listwise_loss_hand_value():
    # s(pos) = s(neg) = 0, tau = 1, q(pos) = 0.5, q(neg) = 0.25:
    # logits pos = 0 - log .5 = log 2, neg = 0 - log .25 = log 4,
    # loss = -log(2 / (2 + 4)) = log 3 = 1.0986122887
    batch = ScoredBatch(
        pos=torch.tensor([0.0]),
        neg=torch.tensor([[0.0]]),
        pos_logq=torch.log(torch.tensor([0.5])),
        neg_logq=torch.log(torch.tensor([[0.25]])),
    )
    assert ListwiseLoss(temperature=1.0)(batch).item() == pytest.approx(1.0986122887, abs=1e-6)


def test_masked_negative_acts_as_if_absent():
    torch.manual_seed(1)
    pos, neg = torch.randn(4), torch.randn(4, 5)
    valid = torch.ones(4, 5, dtype=torch.bool)
    valid[0, 1] = False
    valid[2, 4] = False
    loss_fn = ListwiseLoss(temperature=0.5)
    masked = loss_fn(ScoredBatch(pos=pos, neg=neg, neg_valid=valid))
    # Reference: each row on its valid columns only, with the loss computed directly.
    rows = []
    for b in range(4):
        logits = torch.cat([pos[b : b + 1], neg[b][valid[b]]]) / 0.5
        rows.append(-torch.log_softmax(logits, 0)[0])
    torch.testing.assert_close(masked, torch.stack(rows).mean())
    # The masked value itself must not matter: change it wildly, same loss.
    neg2 = neg.clone()
    neg2[0, 1], neg2[2, 4] = 100.0, -100.0
    torch.testing.assert_close(loss_fn(ScoredBatch(pos=pos, neg=neg2, neg_valid=valid)), masked)
    # And masking does change the loss compared with no mask at all.
    assert abs(loss_fn(ScoredBatch(pos=pos, neg=neg)).item() - masked.item()) > 1e-3


def test_masked_logits_use_large_finite_negative():
    pos, neg = torch.zeros(1), torch.zeros(1, 2)
    _, out = corrected_logits(ScoredBatch(pos=pos, neg=neg, neg_valid=torch.tensor([[True, False]])), 1.0)
    assert out[0, 0].item() == 0.0
    assert torch.isfinite(out).all()
    assert out[0, 1].item() == pytest.approx(torch.finfo(torch.float32).min / 100)
    assert mask_value(torch.float32) == torch.finfo(torch.float32).min / 100


def test_row_with_every_negative_masked_is_finite_with_finite_gradients():
    pos = torch.tensor([0.3, -0.2], requires_grad=True)
    neg = torch.tensor([[0.9, 0.1, -0.4], [0.5, 0.2, 0.8]], requires_grad=True)
    valid = torch.tensor([[False, False, False], [True, False, True]])
    loss = ListwiseLoss(temperature=0.05)(
        ScoredBatch(pos=pos, neg=neg, neg_valid=valid, pos_logq=torch.tensor([-1.0, -2.0]), neg_logq=torch.full((2, 3), -3.0))
    )
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()
    # Row 0 has nothing to contrast: its loss is -log 1 = 0, so it gets no gradient at all.
    assert pos.grad[0].item() == 0.0
    assert (neg.grad[0] == 0).all()
    # Masked columns of row 1 get no gradient either; valid ones do.
    assert neg.grad[1, 1].item() == 0.0
    assert (neg.grad[1, [0, 2]] != 0).all()
    # Whole loss = (0 + loss of row 1) / 2; row 1 logits: pos = -0.2/0.05 + 2 = -2, negs = 0.5/0.05 + 3 = 13,
    # 0.8/0.05 + 3 = 19: loss1 = log(e^-2 + e^13 + e^19) + 2 = 21.00248...
    loss1 = math.log(math.exp(-2) + math.exp(13) + math.exp(19)) + 2
    assert loss.item() == pytest.approx(loss1 / 2, rel=1e-5)


def test_all_masked_batch_loss_is_zero_not_nan():
    pos = torch.tensor([1.0, 2.0])
    neg = torch.zeros(2, 3)
    loss = ListwiseLoss(temperature=0.01)(ScoredBatch(pos=pos, neg=neg, neg_valid=torch.zeros(2, 3, dtype=torch.bool)))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_gradient_signs():
    torch.manual_seed(2)
    pos = torch.randn(5, requires_grad=True)
    neg = torch.randn(5, 3, requires_grad=True)
    ListwiseLoss(temperature=0.5)(ScoredBatch(pos=pos, neg=neg)).backward()
    assert (pos.grad < 0).all()  # raising the positive's score lowers the loss
    assert (neg.grad > 0).all()  # raising a negative's score raises it
    # Exact: d loss / d pos_b = (softmax_0 - 1) / (B tau); d loss / d neg_bj = softmax_j / (B tau).
    with torch.no_grad():
        p = torch.softmax(torch.cat([pos[:, None], neg], 1) / 0.5, 1)
    torch.testing.assert_close(pos.grad, (p[:, 0] - 1) / (5 * 0.5))
    torch.testing.assert_close(neg.grad, p[:, 1:] / (5 * 0.5))


def test_mean_reduction_duplicated_batch_same_loss():
    torch.manual_seed(3)
    pos, neg = torch.randn(6), torch.randn(6, 4)
    valid = torch.rand(6, 4) > 0.3
    logq = torch.log(torch.rand(6, 4) + 0.1)
    loss_fn = ListwiseLoss(temperature=0.1)
    one = loss_fn(ScoredBatch(pos=pos, neg=neg, neg_valid=valid, neg_logq=logq))
    two = loss_fn(
        ScoredBatch(pos=pos.repeat(2), neg=neg.repeat(2, 1), neg_valid=valid.repeat(2, 1), neg_logq=logq.repeat(2, 1))
    )
    torch.testing.assert_close(one, two)
    # And the mean, not the sum: equals the average of the single-row losses.
    rows = torch.stack(
        [loss_fn(ScoredBatch(pos=pos[i : i + 1], neg=neg[i : i + 1], neg_valid=valid[i : i + 1], neg_logq=logq[i : i + 1])) for i in range(6)]
    )
    torch.testing.assert_close(one, rows.mean())


def test_mse_hand_value():
    # ((1-1)^2 + (2-4)^2 + (3-0)^2) / 3 = (0 + 4 + 9) / 3 = 13/3
    pred, target = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 4.0, 0.0])
    assert squared_error_loss(pred, target).item() == pytest.approx(13 / 3)
    assert MSELoss()(ScoredBatch(pos=pred, rating=target)).item() == pytest.approx(13 / 3)
    # Mean-reduced: duplicating the batch does not change it.
    assert MSELoss()(ScoredBatch(pos=pred.repeat(3), rating=target.repeat(3))).item() == pytest.approx(13 / 3)


def test_mse_does_not_need_negatives_listwise_does():
    assert MSELoss.needs_negatives is False
    assert ListwiseLoss.needs_negatives is True


@pytest.mark.parametrize("tau", [0.0, -0.1])
def test_listwise_non_positive_temperature_raises(tau):
    with pytest.raises(ValueError, match="temperature"):
        ListwiseLoss(temperature=tau)
