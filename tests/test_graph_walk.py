"""Two-step walk labels: the walk's distribution against a hand-computed transition matrix,
the loss with a walk label against hand values on both listwise paths, and a real run's
batches carrying labels the walk can reach."""

from __future__ import annotations

import math

import pytest
import torch

from twotower.config import compose_config
from twotower.graph_walk import TwoStepWalk
from twotower.losses import ListwiseLoss, ScoredBatch, with_walk_label
from conftest import TINY

# Users 0: items {0, 1}; 1: {1, 2}; 2: {1}.
USERS = torch.tensor([0, 0, 1, 1, 2])
ITEMS = torch.tensor([0, 1, 1, 2, 1])
# From item 0: user 0, then item 0 or 1. From item 1: user 0 (-> 0 or 1), user 1 (-> 1 or 2) or
# user 2 (-> 1), each a third. From item 2: user 1, then item 1 or 2.
TRANSITIONS = [[1 / 2, 1 / 2, 0.0], [1 / 6, 2 / 3, 1 / 6], [0.0, 1 / 2, 1 / 2]]


def dense_transition_matrix(users: torch.Tensor, items: torch.Tensor, num_users: int, num_items: int) -> torch.Tensor:
    """``[N, N]`` ``P(j | i)`` of the two-step walk, from the dense pair matrix: the brute-force
    reference the sampler's frequencies are held to."""
    pairs = torch.zeros(num_users, num_items, dtype=torch.float64)
    pairs[users, items] = 1.0
    by_user = pairs / pairs.sum(1, keepdim=True).clamp_min(1)
    by_item = pairs.T / pairs.T.sum(1, keepdim=True).clamp_min(1)
    return by_item @ by_user


def test_the_walks_transition_matrix_by_hand():
    torch.testing.assert_close(dense_transition_matrix(USERS, ITEMS, 3, 3), torch.tensor(TRANSITIONS, dtype=torch.float64))


def test_walks_end_as_the_transition_matrix_says():
    walk = TwoStepWalk(USERS, ITEMS, num_users=3, num_items=3)
    generator = torch.Generator().manual_seed(0)
    n = 60_000  # per start: binomial standard error <= 0.002, so 0.01 is five of them
    for start, row in enumerate(TRANSITIONS):
        ends = walk.sample(torch.full((n,), start), generator)
        frequencies = torch.bincount(ends, minlength=3).double() / n
        torch.testing.assert_close(frequencies, torch.tensor(row, dtype=torch.float64), atol=0.01, rtol=0)
        assert all(frequencies[j] == 0 for j in range(3) if row[j] == 0)  # never where no user leads


def test_with_walk_label_by_hand():
    # Row 0: columns [2, 1, 0], label column 0, walk logit 1.5:
    #   CE(label) = log(1 + e^-1 + e^-2) = 0.4076059644
    #   CE(walk) = log(e^1.5 + e^2 + e^1 + e^0) - 1.5 = log(e^2 + e^1 + e^0 + e^1.5) - 1.5
    # Row 1: the walk ended at the label itself: both terms are CE(label) = log(1 + 2e).
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    label_terms = torch.tensor([math.log(1 + math.exp(-1) + math.exp(-2)), math.log(1 + 2 * math.e)])
    walk_ce = math.log(math.exp(2) + math.exp(1) + 1 + math.exp(1.5)) - 1.5
    out = with_walk_label(label_terms, logits, torch.tensor([1.5, 9.0]), torch.tensor([False, True]), 0.25)
    expected = [0.75 * label_terms[0].item() + 0.25 * walk_ce, label_terms[1].item()]
    torch.testing.assert_close(out, torch.tensor(expected), atol=1e-6, rtol=0)
    assert walk_ce > 0  # the walk's own column is in its softmax: never rewarded without bound


@pytest.mark.parametrize("in_batch", [False, True])
def test_listwise_loss_with_a_walk_label_by_hand(in_batch):
    # tau 0.5; one row: positive cosine 0.5, negatives 0.25 and 0 (logits 1, 0.5, 0), walk cosine
    # 0.75 (logit 1.5); log q: positive -1, negatives -2 and -3, walk -2 (in-batch) or none.
    pos, neg = torch.tensor([0.5]), torch.tensor([[0.25, 0.0]])
    columns = [1 + 1, 0.5 + 2, 0 + 3] if in_batch else [1, 0.5, 0]
    walk_logit = 1.5 + 2 if in_batch else 1.5
    log_z = math.log(sum(math.exp(c) for c in columns))
    label_ce, walk_ce = log_z - columns[0], math.log(math.exp(log_z) + math.exp(walk_logit)) - walk_logit
    if in_batch:  # the positive is column 0 of the columns, with its own log q
        batch = ScoredBatch(pos=pos, neg=torch.tensor([[0.5, 0.25, 0.0]]), pos_logq=torch.tensor([-1.0]),
                            neg_logq=torch.tensor([[-1.0, -2.0, -3.0]]), pos_column=torch.tensor([0]),
                            neg_valid=torch.tensor([[False, True, True]]), walk_logq=torch.tensor([-2.0]))  # fmt: skip
    else:
        batch = ScoredBatch(pos=pos, neg=neg)
    batch.walk, batch.walk_same = torch.tensor([0.75]), torch.tensor([False])
    loss = ListwiseLoss(temperature=0.5, walk_label_weight=0.2)(batch)
    assert loss.item() == pytest.approx(0.8 * label_ce + 0.2 * walk_ce, abs=1e-5)
    # Without the option the walk is ignored: the plain softmax.
    assert ListwiseLoss(temperature=0.5)(batch).item() == pytest.approx(label_ce, abs=1e-5)


@pytest.mark.parametrize("share", [-0.1, 1.0, float("nan")])
def test_a_walk_label_weight_outside_0_1_is_refused(share):
    with pytest.raises(ValueError, match=r"loss\.walk_label_weight="):
        ListwiseLoss(walk_label_weight=share)


def test_a_runs_batches_carry_walk_labels_the_walk_can_reach(tmp_path):
    from twotower.wiring import build_run

    cfg = compose_config([*TINY, "loss=listwise", "loss.walk_label_weight=0.2", "data.batch_size=64"], output_dir=tmp_path)
    run = build_run(cfg)
    dm = run.datamodule
    ex = dm.train_examples
    rows = torch.arange(10, 74)
    batch = dm.train_batch(rows, torch.Generator().manual_seed(0))
    starts, ends = ex.item[rows], batch.walk["index"]
    users_of = lambda item: set(ex.user[ex.item == item].tolist())  # noqa: E731
    # Every end shares a user with its start: one step to a user of the positive, one to an item of theirs.
    assert all(users_of(int(s)) & users_of(int(e)) for s, e in zip(starts, ends))
    assert torch.equal(batch.walk_same, ends == starts)
    torch.testing.assert_close(batch.walk_logq, dm.sampler.log_p[ends])  # as the in-batch positive's log q
    loss = run.module.batch_loss(batch)
    assert torch.isfinite(loss)
    loss.backward()
    # Without the option the batches carry no walk.
    plain = build_run(compose_config([*TINY, "loss=listwise", "data.batch_size=64"], output_dir=tmp_path / "plain"))
    assert plain.datamodule.train_batch(rows, torch.Generator().manual_seed(0)).walk is None
