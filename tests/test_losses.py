"""Losses: the listwise softmax cross-entropy, its temperature and logQ correction,
masking of invalid negatives, mean reduction, and the MSE baseline, against hand values;
then the pointwise (BCE) and pairwise (hinge, logistic) modes."""

from __future__ import annotations

import math

import pytest
import torch

from twotower.losses import (
    CosineContrastiveLoss,
    ListwiseLoss,
    MSELoss,
    PairwiseHingeLoss,
    PairwiseLogisticLoss,
    PointwiseLoss,
    ScoredBatch,
    corrected_logits,
    listwise_softmax_loss,
    mask_value,
    pairwise_hinge_loss,
    pairwise_logistic_loss,
    pointwise_bce_loss,
    select_negatives,
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


def test_listwise_with_the_positive_as_a_column_equals_a_separate_positive():
    """In-batch: with ``pos_column`` the softmax runs over the columns with the positive's own
    column as the label; the loss and its gradients equal those of the positive scored apart
    and its column masked (logQ correction and accidental hits included)."""
    torch.manual_seed(0)
    users = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    items = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    logq = torch.log(torch.tensor([0.1, 0.3, 0.2, 0.25, 0.15]))
    valid = ~torch.eye(5, dtype=torch.bool)
    valid[1, 3] = valid[4, 0] = False  # accidental hits
    results = []
    for as_column in (False, True):
        u, v = users.clone().requires_grad_(), items.clone().requires_grad_()
        batch = ScoredBatch(pos=(u * v).sum(-1), neg=u @ v.T, neg_valid=valid, pos_logq=logq,
                            neg_logq=logq.expand(5, 5), pos_column=torch.arange(5) if as_column else None)  # fmt: skip
        loss = ListwiseLoss(temperature=0.2)(batch)
        loss.backward()
        results.append((loss, u.grad, v.grad))
    for separate, column in zip(*results):
        torch.testing.assert_close(separate, column)
    # By hand for row 1: logits s/tau - log q over columns 0, 1 (label), 2, 4 (3 is masked).
    s = users @ items.T / 0.2 - logq
    row1 = -(s[1, 1] - torch.logsumexp(s[1, [0, 1, 2, 4]], 0))
    rows = [-(s[b, b] - torch.logsumexp(s[b][valid[b] | (torch.arange(5) == b)], 0)) for b in range(5)]
    torch.testing.assert_close(rows[1], row1)
    torch.testing.assert_close(results[1][0], torch.stack(rows).mean())


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


# ---- pointwise, pairwise ---------------------------------------------------------


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_pointwise_bce_hand_value_with_mask():
    # tau = 1, k = 3 >= C = 2, so every valid column enters (deterministic).
    # Row 0: pos 0 -> -log sigmoid(0) = log 2 = 0.6931472; negs 0, 1 -> log 2, log(1 + e) = 1.3132617
    # Row 1: pos 2 -> log(1 + e^-2) = 0.1269280; neg -1 -> log(1 + e^-1) = 0.3132617; neg 100 masked.
    # 2 positive + 3 negative terms: (0.6931472 + 1.3132617 + 0.6931472 + 0.1269280 + 0.3132617) / 5 = 0.6279491
    pos = torch.tensor([0.0, 2.0])
    neg = torch.tensor([[0.0, 1.0], [-1.0, 100.0]])
    valid = torch.tensor([[True, True], [True, False]])
    expected = (softplus(0) + softplus(1) + softplus(-2) + softplus(-1) + softplus(0)) / 5
    assert expected == pytest.approx(0.6279491494, abs=1e-9)
    loss_fn = PointwiseLoss(temperature=1.0, negatives_per_positive=3)
    assert loss_fn(ScoredBatch(pos=pos, neg=neg, neg_valid=valid)).item() == pytest.approx(expected, abs=1e-6)
    # The pure function with the mask as the selection: same value.
    assert pointwise_bce_loss(pos, neg, valid).item() == pytest.approx(expected, abs=1e-6)
    # Halved similarities with tau = 0.5 give the same logits.
    half = ScoredBatch(pos=pos / 2, neg=neg / 2, neg_valid=valid)
    assert PointwiseLoss(temperature=0.5)(half).item() == pytest.approx(expected, abs=1e-6)


def test_pointwise_applies_logq_correction():
    # s(pos) = s(neg) = 0, tau = 1, q(pos) = .5, q(neg) = .25: logits log 2 (label 1), log 4 (label 0).
    # BCE: log(1 + 1/2) = 0.4054651, log(1 + 4) = 1.6094379; mean 1.0074515
    batch = ScoredBatch(
        pos=torch.tensor([0.0]),
        neg=torch.tensor([[0.0]]),
        pos_logq=torch.log(torch.tensor([0.5])),
        neg_logq=torch.log(torch.tensor([[0.25]])),
    )
    assert PointwiseLoss(temperature=1.0)(batch).item() == pytest.approx((math.log(1.5) + math.log(5)) / 2, abs=1e-6)
    assert PointwiseLoss(temperature=1.0)(batch).item() == pytest.approx(1.0074515103, abs=1e-6)


def test_pointwise_ratio_uses_at_most_k_negatives_per_row():
    # Every negative logit is 1 and every positive 0 (tau = 1), so the value only depends on how many
    # terms enter: (n_pos log 2 + n_neg log(1 + e)) / (n_pos + n_neg).
    # Row 0: 5 valid negatives, k = 3 -> 3 enter. Row 1: 2 valid of 5 -> both enter.
    # (2 * 0.6931472 + 5 * 1.3132617) / 7 = 1.1360861  (all 5 + 2 would give (2 log 2 + 7 * 1.3132617) / 9)
    pos = torch.zeros(2)
    neg = torch.ones(2, 5)
    valid = torch.tensor([[True] * 5, [False, True, False, True, False]])
    loss_fn = PointwiseLoss(temperature=1.0, negatives_per_positive=3)
    expected = (2 * softplus(0) + 5 * softplus(1)) / 7
    assert expected == pytest.approx(1.1360861142, abs=1e-9)
    torch.manual_seed(0)
    for _ in range(5):  # whatever columns are drawn
        assert loss_fn(ScoredBatch(pos=pos, neg=neg, neg_valid=valid)).item() == pytest.approx(expected, abs=1e-6)
    # One row of 5 valid negatives alone: (log 2 + 3 * 1.3132617) / 4 = 1.1582331, not (log 2 + 5 * ...) / 6 = 1.2099
    one = loss_fn(ScoredBatch(pos=pos[:1], neg=neg[:1]))
    assert one.item() == pytest.approx((softplus(0) + 3 * softplus(1)) / 4, abs=1e-6)
    assert one.item() == pytest.approx(1.1582330608, abs=1e-6)
    # k = 1: positives to negatives 1:1.
    assert PointwiseLoss(temperature=1.0, negatives_per_positive=1)(ScoredBatch(pos=pos[:1], neg=neg[:1])).item() == pytest.approx(
        (softplus(0) + softplus(1)) / 2, abs=1e-6
    )


def test_select_negatives_draws_k_valid_columns_at_random():
    valid = torch.tensor([[True, True, False, True, True, True], [False, True, False, False, True, False], [False] * 6])
    torch.manual_seed(0)
    counts = torch.zeros(3, 6)
    draws = 400
    for _ in range(draws):
        chosen = select_negatives(valid, 3)
        assert not (chosen & ~valid).any()  # never an invalid column
        assert chosen.sum(1).tolist() == [3, 2, 0]  # min(k, number valid)
        counts += chosen
    # Row 0: each of the 5 valid columns chosen with probability 3/5.
    freq = counts[0, valid[0]] / draws
    assert ((freq - 0.6).abs() < 0.1).all(), freq
    assert (counts[1, [1, 4]] == draws).all()
    # k larger than the number of columns: every valid column.
    assert torch.equal(select_negatives(valid, 10), valid)


def test_pointwise_gradient_signs_and_values():
    torch.manual_seed(4)
    pos = torch.randn(4, requires_grad=True)
    neg = torch.randn(4, 6, requires_grad=True)
    valid = torch.rand(4, 6) > 0.3
    tau = 0.5
    torch.manual_seed(5)
    PointwiseLoss(temperature=tau, negatives_per_positive=2)(ScoredBatch(pos=pos, neg=neg, neg_valid=valid)).backward()
    # Replay the same draw to know which columns entered.
    torch.manual_seed(5)
    chosen = select_negatives(valid, 2)
    n_terms = 4 + chosen.sum().item()
    assert (pos.grad < 0).all()  # d BCE(label 1) / d logit = sigmoid - 1 < 0
    assert (neg.grad[chosen] > 0).all()  # d BCE(label 0) / d logit = sigmoid > 0
    assert (neg.grad[~chosen] == 0).all()  # unchosen and masked columns: nothing
    with torch.no_grad():
        torch.testing.assert_close(pos.grad, (torch.sigmoid(pos / tau) - 1) / (tau * n_terms))
        torch.testing.assert_close(neg.grad[chosen], torch.sigmoid(neg[chosen] / tau) / (tau * n_terms))


def test_pairwise_hinge_hand_value_with_mask():
    # m = 0.5. Row 0: pos .8, negs .5, .2, .9 -> max(0, neg + .5 - .8) = .2, 0 (satisfied), .6
    # Row 1: pos .1, negs .3, .9 (masked), 0 -> .7, (1.3 ignored), .4
    # Mean over the 5 valid pairs: (.2 + 0 + .6 + .7 + .4) / 5 = 1.9 / 5 = 0.38
    # (not the mean of row means (.8/3 + 1.1/2) / 2 = 0.4083; unmasked it would be 3.2 / 6 = 0.5333)
    pos = torch.tensor([0.8, 0.1], requires_grad=True)
    neg = torch.tensor([[0.5, 0.2, 0.9], [0.3, 0.9, 0.0]], requires_grad=True)
    valid = torch.tensor([[True, True, True], [True, False, True]])
    loss = PairwiseHingeLoss(margin=0.5)(ScoredBatch(pos=pos, neg=neg, neg_valid=valid))
    assert loss.item() == pytest.approx(0.38, abs=1e-6)
    assert PairwiseHingeLoss(margin=0.5)(ScoredBatch(pos=pos, neg=neg)).item() == pytest.approx(3.2 / 6, abs=1e-6)
    loss.backward()
    # Each active pair: d/d neg = +1/5, d/d pos = -1/5; row 0 and row 1 each have 2 active pairs.
    torch.testing.assert_close(pos.grad, torch.tensor([-0.4, -0.4]))
    torch.testing.assert_close(neg.grad, torch.tensor([[0.2, 0.0, 0.2], [0.2, 0.0, 0.2]]))
    # neg[0, 1]: margin satisfied -> zero gradient; neg[1, 1]: masked -> zero gradient.


def test_pairwise_hinge_ignores_temperature_and_logq_and_zero_when_satisfied():
    pos = torch.tensor([0.9], requires_grad=True)
    neg = torch.tensor([[0.1, -0.5]], requires_grad=True)
    # 0.1 + 0.3 - 0.9 < 0 and -0.5 + 0.3 - 0.9 < 0: every margin satisfied, loss 0, no gradient.
    batch = ScoredBatch(pos=pos, neg=neg, pos_logq=torch.tensor([-5.0]), neg_logq=torch.tensor([[-1.0, -9.0]]))
    loss = PairwiseHingeLoss(margin=0.3)(batch)
    assert loss.item() == 0.0
    loss.backward()
    assert pos.grad.item() == 0.0 and (neg.grad == 0).all()
    # Margin 0: plain ranking violation count; margin 1: (.1 + 1 - .9) + 0 = .2 -> mean .1
    assert PairwiseHingeLoss(margin=1.0)(batch).item() == pytest.approx(0.1, abs=1e-6)
    assert pairwise_hinge_loss(pos, neg, torch.ones(1, 2, dtype=torch.bool), 1.0).item() == pytest.approx(0.1, abs=1e-6)


def test_pairwise_logistic_hand_value_with_mask():
    # sigma = 2. Row 0: pos .5, negs 0, .5 -> softplus(2 (0 - .5)) = log(1 + e^-1) = 0.3132617,
    #   softplus(0) = log 2 = 0.6931472. Row 1: pos 0, negs .25, 9 (masked) -> softplus(.5) = 0.9740770.
    # Mean over 3 valid pairs: 1.9804859 / 3 = 0.6601620
    pos = torch.tensor([0.5, 0.0], requires_grad=True)
    neg = torch.tensor([[0.0, 0.5], [0.25, 9.0]], requires_grad=True)
    valid = torch.tensor([[True, True], [True, False]])
    loss = PairwiseLogisticLoss(sigma=2.0)(ScoredBatch(pos=pos, neg=neg, neg_valid=valid))
    expected = (softplus(-1) + softplus(0) + softplus(0.5)) / 3
    assert expected == pytest.approx(0.6601619508, abs=1e-9)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    # d/d neg_bj = sigma * sigmoid(sigma (neg - pos)) / 3 > 0; d/d pos_b = - sum_j of those < 0.
    sig = lambda x: 1 / (1 + math.exp(-x))
    g = [[2 * sig(-1) / 3, 2 * sig(0) / 3], [2 * sig(0.5) / 3, 0.0]]
    torch.testing.assert_close(neg.grad, torch.tensor(g))
    torch.testing.assert_close(pos.grad, torch.tensor([-(g[0][0] + g[0][1]), -g[1][0]]))
    assert (pos.grad < 0).all() and (neg.grad[valid] > 0).all() and neg.grad[1, 1] == 0


def test_pairwise_logistic_with_one_negative_equals_listwise_at_tau_one_over_sigma():
    torch.manual_seed(6)
    pos, neg = torch.randn(5), torch.randn(5, 1)
    batch = ScoredBatch(pos=pos, neg=neg)
    torch.testing.assert_close(PairwiseLogisticLoss(sigma=5.0)(batch), ListwiseLoss(temperature=0.2)(batch))


def test_pairwise_logistic_is_stable_for_large_gaps():
    # sigma (neg - pos) = 1000 * 2 = 2000: log(1 + exp(2000)) overflows naively; softplus gives 2000.
    pos = torch.tensor([-1.0, 1.0], requires_grad=True)
    neg = torch.tensor([[1.0], [-1.0]], requires_grad=True)
    loss = pairwise_logistic_loss(pos, neg, torch.ones(2, 1, dtype=torch.bool), 1000.0)
    assert loss.item() == pytest.approx(1000.0, rel=1e-6)  # (2000 + ~0) / 2
    loss.backward()
    assert torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()
    torch.testing.assert_close(pos.grad, torch.tensor([-500.0, 0.0]))


NEW_LOSSES = [
    PointwiseLoss(temperature=0.05, negatives_per_positive=2),
    PairwiseHingeLoss(margin=0.5),
    PairwiseLogisticLoss(sigma=10.0),
]


@pytest.mark.parametrize("loss_fn", NEW_LOSSES, ids=lambda f: type(f).__name__)
def test_new_losses_rows_fully_masked_are_finite(loss_fn):
    pos = torch.tensor([0.3, -0.2], requires_grad=True)
    neg = torch.tensor([[0.9, 0.1, -0.4], [0.5, 0.2, 0.8]], requires_grad=True)
    valid = torch.tensor([[False, False, False], [True, False, True]])
    batch = ScoredBatch(pos=pos, neg=neg, neg_valid=valid, pos_logq=torch.tensor([-1.0, -2.0]), neg_logq=torch.full((2, 3), -3.0))
    loss = loss_fn(batch)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()
    assert (neg.grad[~valid] == 0).all()  # masked columns get nothing
    # Row 0 without a valid negative: the same loss as the batch of row 1 alone (pairwise), or row 1
    # plus row 0's positive term only (pointwise).
    if isinstance(loss_fn, PointwiseLoss):
        assert pos.grad[0] < 0  # its positive label still counts
    else:
        assert pos.grad[0] == 0.0
        row1 = ScoredBatch(pos=pos[1:], neg=neg[1:], neg_valid=valid[1:])
        torch.testing.assert_close(loss, loss_fn(row1))
    # Everything masked: the pairwise losses are 0 (not 0/0), pointwise is the positives' BCE.
    none_valid = torch.zeros(2, 3, dtype=torch.bool)
    all_masked = loss_fn(ScoredBatch(pos=pos, neg=neg, neg_valid=none_valid))
    assert torch.isfinite(all_masked)
    if isinstance(loss_fn, PointwiseLoss):
        expected = torch.nn.functional.softplus(-pos / loss_fn.temperature).mean()
        torch.testing.assert_close(all_masked, expected)
    else:
        assert all_masked.item() == 0.0


@pytest.mark.parametrize("loss_fn", NEW_LOSSES, ids=lambda f: type(f).__name__)
def test_new_losses_masked_value_does_not_matter(loss_fn):
    torch.manual_seed(7)
    pos, neg = torch.randn(4), torch.randn(4, 5)
    valid = torch.rand(4, 5) > 0.4
    neg2 = neg.masked_fill(~valid, 50.0)
    torch.manual_seed(8)
    a = loss_fn(ScoredBatch(pos=pos, neg=neg, neg_valid=valid))
    torch.manual_seed(8)
    b = loss_fn(ScoredBatch(pos=pos, neg=neg2, neg_valid=valid))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "loss_fn",
    [PointwiseLoss(temperature=0.1, negatives_per_positive=4), PairwiseHingeLoss(margin=0.3), PairwiseLogisticLoss(sigma=5.0)],
    ids=lambda f: type(f).__name__,
)
def test_new_losses_mean_reduction_duplicated_batch_same_loss(loss_fn):
    torch.manual_seed(9)
    pos, neg = torch.randn(6), torch.randn(6, 4)
    valid = torch.rand(6, 4) > 0.3
    logq = torch.log(torch.rand(6, 4) + 0.1)
    # k = 4 = C: every valid column enters, so the pointwise loss is deterministic too.
    one = loss_fn(ScoredBatch(pos=pos, neg=neg, neg_valid=valid, neg_logq=logq))
    two = loss_fn(ScoredBatch(pos=pos.repeat(2), neg=neg.repeat(2, 1), neg_valid=valid.repeat(2, 1), neg_logq=logq.repeat(2, 1)))
    torch.testing.assert_close(one, two)


def test_pointwise_mean_reduction_with_random_selection():
    # k = 2 < 5 valid negatives, but all negatives of a row are equal, so the draw does not matter.
    pos = torch.tensor([0.5, -0.5, 0.0])
    neg = torch.tensor([0.2, -0.3, 0.7])[:, None].expand(3, 5)
    loss_fn = PointwiseLoss(temperature=0.5, negatives_per_positive=2)
    one = loss_fn(ScoredBatch(pos=pos, neg=neg))
    three = loss_fn(ScoredBatch(pos=pos.repeat(3), neg=neg.repeat(3, 1)))
    torch.testing.assert_close(one, three)
    # Hand: logits pos [1, -1, 0], negs [.4, -.6, 1.4]; (sum softplus(-pos) + 2 sum softplus(neg)) / 9
    expected = (softplus(-1) + softplus(1) + softplus(0) + 2 * (softplus(0.4) + softplus(-0.6) + softplus(1.4))) / 9
    assert one.item() == pytest.approx(expected, abs=1e-6)


def test_new_losses_need_negatives_and_train_on_positives():
    for cls in (PointwiseLoss, PairwiseHingeLoss, PairwiseLogisticLoss):
        assert cls.needs_negatives is True
        assert cls.trains_on == "positives"


@pytest.mark.parametrize(
    "make,key",
    [
        (lambda: PointwiseLoss(temperature=0.0), "loss.temperature=0.0: expected > 0"),
        (lambda: PointwiseLoss(temperature=-1.0), "loss.temperature=-1.0: expected > 0"),
        (lambda: PointwiseLoss(negatives_per_positive=0), "loss.negatives_per_positive=0: expected an integer >= 1"),
        (lambda: PointwiseLoss(negatives_per_positive=-2), "loss.negatives_per_positive=-2"),
        (lambda: PointwiseLoss(negatives_per_positive=2.5), "loss.negatives_per_positive=2.5"),
        (lambda: PairwiseHingeLoss(margin=-1), "loss.margin=-1: expected >= 0"),
        (lambda: PairwiseHingeLoss(margin=float("nan")), "loss.margin=nan"),
        (lambda: PairwiseLogisticLoss(sigma=0.0), "loss.sigma=0.0: expected > 0"),
        (lambda: PairwiseLogisticLoss(sigma=-3), "loss.sigma=-3: expected > 0"),
    ],
)
def test_new_losses_invalid_hyperparameters_raise(make, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.").replace("+", r"\+")):
        make()


def test_new_losses_valid_edge_hyperparameters():
    assert PairwiseHingeLoss(margin=0).margin == 0
    assert PointwiseLoss(negatives_per_positive=1).negatives_per_positive == 1


@pytest.mark.parametrize(
    "name,cls,values",
    [
        ("pointwise", PointwiseLoss, {"temperature": 0.2, "negatives_per_positive": 3}),
        ("pairwise_hinge", PairwiseHingeLoss, {"margin": 0.5}),
        ("pairwise_logistic", PairwiseLogisticLoss, {"sigma": 5.0}),
        ("ccl", CosineContrastiveLoss, {"margin": 0.9, "negative_weight": 150.0}),
    ],
)
def test_loss_config_files_build_the_loss(name, cls, values):
    from omegaconf import OmegaConf

    from twotower.config import CONFIG_DIR, build

    loss = build(OmegaConf.load(CONFIG_DIR / "loss" / f"{name}.yaml"))
    assert type(loss) is cls
    for key, value in values.items():
        assert getattr(loss, key) == value
        assert getattr(cls(), key) == value  # the dataclass default is the config's


def test_cosine_contrastive_loss_by_hand():
    """Row 0: (1 - 0.8) + 2 * mean(max(0, [0.5, 0.1, 0.35] - 0.3)) = 0.2 + 2 * (0.2 + 0 + 0.05) / 3;
    row 1 (its middle column masked): (1 - 0.4) + 2 * mean(max(0, [0.9, 0.2] - 0.3)) = 0.6 + 2 * 0.6 / 2."""
    pos = torch.tensor([0.8, 0.4], requires_grad=True)
    neg = torch.tensor([[0.5, 0.1, 0.35], [0.9, 0.99, 0.2]], requires_grad=True)
    valid = torch.tensor([[True, True, True], [True, False, True]])
    loss = CosineContrastiveLoss(margin=0.3, negative_weight=2.0)(ScoredBatch(pos=pos, neg=neg, neg_valid=valid))
    row0, row1 = 0.2 + 2 * 0.25 / 3, 0.6 + 2 * 0.6 / 2
    assert loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)
    loss.backward()
    # d/dpos = -1 / B; d/dneg = w / (B * valid in the row) above the margin, 0 below it or masked.
    torch.testing.assert_close(pos.grad, torch.tensor([-0.5, -0.5]))
    torch.testing.assert_close(neg.grad, torch.tensor([[1 / 3, 0.0, 1 / 3], [0.5, 0.0, 0.0]]))


def test_cosine_contrastive_loss_rows_without_negatives_and_mean_reduction():
    pos, neg = torch.tensor([0.5, 0.9]), torch.tensor([[0.95, 0.2], [0.97, 0.99]])
    none_valid = torch.tensor([[True, False], [False, False]])
    loss_fn = CosineContrastiveLoss(margin=0.9, negative_weight=10.0)
    # Row 1 has no valid negative: only 1 - 0.9 counts; row 0: 0.5 + 10 * 0.05.
    assert loss_fn(ScoredBatch(pos=pos, neg=neg, neg_valid=none_valid)).item() == pytest.approx((1.0 + 0.1) / 2, abs=1e-6)
    one = loss_fn(ScoredBatch(pos=pos, neg=neg))
    two = loss_fn(ScoredBatch(pos=pos.repeat(3), neg=neg.repeat(3, 1)))
    torch.testing.assert_close(one, two)


@pytest.mark.parametrize("kwargs,message", [
    ({"margin": 1.5}, "loss.margin=1.5: expected a cosine in"),
    ({"margin": float("nan")}, "loss.margin=nan"),
    ({"negative_weight": 0.0}, "loss.negative_weight=0.0: expected > 0"),
])  # fmt: skip
def test_cosine_contrastive_loss_refuses_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        CosineContrastiveLoss(**kwargs)
