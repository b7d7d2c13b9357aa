"""Candidate layout of a training batch: the positive lookup (dense and sparse), masking of the
diagonal and of accidental hits, column order and logQ of in-batch / shared / per-example
negatives, and the scores of every column against explicit dot products."""

from __future__ import annotations

import pytest
import torch

from twotower.data.batches import CandidateLayout, build_layout, distinct_ids
from twotower.data.positives import PositiveLookup
from twotower.losses import logit_bias, mask_value
from twotower.models.scoring import score_candidates
from twotower.samplers import Negatives

# A 4-user batch over a 15-item catalogue.
#   user 0: positive 10, training positives {10, 12}
#   user 1: positive 11, training positives {11}
#   user 2: positive 10, training positives {10}
#   user 3: positive 12, training positives {12, 11}
USERS = torch.tensor([0, 1, 2, 3])
POSITIVES = torch.tensor([10, 11, 10, 12])
TRAIN_PAIRS = [(0, 10), (0, 12), (1, 11), (2, 10), (3, 12), (3, 11)]
NUM_USERS, NUM_ITEMS = 4, 15


def lookup(pairs=TRAIN_PAIRS, max_dense=1 << 27):
    u = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    i = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    return PositiveLookup(u, i, NUM_USERS, NUM_ITEMS, max_dense=max_dense)


@pytest.mark.parametrize("max_dense", [1 << 27, 0])
def test_positive_lookup_matches_python_set(max_dense):
    gen = torch.Generator().manual_seed(0)
    num_users, num_items = 13, 17
    users = torch.randint(num_users, (60,), generator=gen)
    items = torch.randint(num_items, (60,), generator=gen)  # duplicates on purpose
    reference = set(zip(users.tolist(), items.tolist()))
    lk = PositiveLookup(users, items, num_users, num_items, max_dense=max_dense)
    assert (lk.dense is None) == (max_dense == 0)
    # Every (user, item) pair of the catalogue, as [U, N] candidates.
    q_users = torch.arange(num_users)
    q_items = torch.arange(num_items).expand(num_users, num_items)
    got = lk(q_users, q_items)
    expected = torch.tensor([[(u, i) in reference for i in range(num_items)] for u in range(num_users)])
    assert torch.equal(got, expected)
    # Random [B, C] queries (repeated users, shuffled items).
    qu = torch.randint(num_users, (20,), generator=gen)
    qi = torch.randint(num_items, (20, 9), generator=gen)
    expected = torch.tensor([[(u, i) in reference for i in row] for u, row in zip(qu.tolist(), qi.tolist())])
    assert torch.equal(lk(qu, qi), expected)


def test_positive_lookup_dense_and_sparse_agree_and_empty_sparse():
    gen = torch.Generator().manual_seed(1)
    users = torch.randint(50, (300,), generator=gen)
    items = torch.randint(40, (300,), generator=gen)
    dense, sparse = PositiveLookup(users, items, 50, 40), PositiveLookup(users, items, 50, 40, max_dense=0)
    qu, qi = torch.randint(50, (64,), generator=gen), torch.randint(40, (64, 40), generator=gen)
    assert torch.equal(dense(qu, qi), sparse(qu, qi))
    empty = PositiveLookup(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 5, 5, max_dense=0)
    assert not empty(torch.arange(5), torch.arange(5).expand(5, 5)).any()


@pytest.mark.parametrize("max_dense", [1 << 27, 0])
def test_shared_columns_match_python_set(max_dense):
    """Columns shared by the batch (repeated items, users with many or no positives)."""
    gen = torch.Generator().manual_seed(2)
    users = torch.randint(30, (400,), generator=gen)
    items = torch.randint(25, (400,), generator=gen)
    reference = set(zip(users.tolist(), items.tolist()))
    lk = PositiveLookup(users, items, 31, 25, max_dense=max_dense)  # user 30 has no positive
    batch_users = torch.cat([torch.randint(31, (40,), generator=gen), torch.tensor([30, 30])])
    for columns in (torch.randint(25, (33,), generator=gen), torch.randperm(25, generator=gen)[:20]):  # repeats; distinct
        expected = torch.tensor([[(u, i) in reference for i in columns.tolist()] for u in batch_users.tolist()])
        assert torch.equal(lk.shared(batch_users, columns), expected)
        own = torch.randint(25, (len(batch_users),), generator=gen)  # each row's own item counts as a hit too
        expected |= columns[None, :] == own[:, None]
        assert torch.equal(lk.shared(batch_users, columns, row_items=own), expected)
    empty = PositiveLookup(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 5, 5, max_dense=max_dense)
    assert not empty.shared(torch.arange(5), torch.arange(5)).any()


@pytest.mark.parametrize("max_dense", [1 << 27, 0])
def test_in_batch_masks_diagonal_and_accidental_hits(max_dense):
    layout = build_layout(USERS, POSITIVES, Negatives(in_batch=True), lookup(max_dense=max_dense))
    # Every row's columns are the batch positives [10, 11, 10, 12].
    # row 0 (pos 10, train {10,12}): 10 own -> F; 11 -> T; 10 duplicate of own -> F; 12 train positive -> F
    # row 1 (pos 11, train {11}):    10 -> T; 11 own -> F; 10 -> T; 12 -> T
    # row 2 (pos 10, train {10}):    10 -> F (another user's positive, same item); 11 -> T; 10 own -> F; 12 -> T
    # row 3 (pos 12, train {12,11}): 10 -> T; 11 accidental hit -> F; 10 -> T; 12 own -> F
    expected = torch.tensor(
        [
            [False, True, False, False],
            [True, False, True, True],
            [False, True, False, True],
            [True, False, True, False],
        ]
    )
    assert torch.equal(layout.valid, expected)
    assert layout.neg_logq is None and layout.pos_logq is None
    assert not layout.valid.diagonal().any()


def test_duplicate_item_in_batch_masked_even_without_lookup_hit():
    # The lookup knows nothing about these users' positives: only the "own positive" rule applies.
    empty = lookup(pairs=[(3, 0)])
    users = torch.tensor([0, 1, 2])
    positives = torch.tensor([5, 6, 5])
    layout = build_layout(users, positives, Negatives(in_batch=True), empty)
    # columns [5, 6, 5]: rows 0 and 2 share item 5, so for each of them both 5-columns are masked.
    expected = torch.tensor([[False, True, False], [True, False, True], [False, True, False]])
    assert torch.equal(layout.valid, expected)


def test_in_batch_logq_per_column():
    logq = torch.log(torch.tensor([0.4, 0.2, 0.4, 0.1]))  # log p of items [10, 11, 10, 12]
    layout = build_layout(USERS, POSITIVES, Negatives(in_batch=True, positives_logq=logq), lookup())
    # Column j carries the logQ of the batch positive j, in every row.
    assert layout.neg_logq.shape == (4, 4)
    for b in range(4):
        torch.testing.assert_close(layout.neg_logq[b], logq)
    torch.testing.assert_close(layout.pos_logq, logq)


def test_shared_extra_negatives_follow_in_batch_columns():
    extra = torch.tensor([3, 10, 12])  # [M], shared by the batch
    extra_logq = torch.tensor([-1.0, -2.0, -3.0])
    pos_logq = torch.tensor([-0.5, -0.6, -0.5, -0.7])
    neg = Negatives(items=extra, in_batch=True, items_logq=extra_logq, positives_logq=pos_logq)
    layout = build_layout(USERS, POSITIVES, neg, lookup())
    assert layout.valid.shape == (4, 7) and layout.neg_logq.shape == (4, 7)
    # First B columns: in-batch (as in the in-batch test); then [3, 10, 12] for every row.
    # item 3: nobody's positive -> valid everywhere.
    # item 10: user 0 and user 2 (positive / train positive) -> masked; users 1, 3 -> valid.
    # item 12: user 0 (train) and user 3 (own positive) -> masked; users 1, 2 -> valid.
    expected_extra = torch.tensor([[True, False, False], [True, True, True], [True, False, True], [True, True, False]])
    assert torch.equal(layout.valid[:, 4:], expected_extra)
    assert torch.equal(layout.valid[:, :4], build_layout(USERS, POSITIVES, Negatives(in_batch=True), lookup()).valid)
    for b in range(4):
        torch.testing.assert_close(layout.neg_logq[b, :4], pos_logq)
        torch.testing.assert_close(layout.neg_logq[b, 4:], extra_logq)
    torch.testing.assert_close(layout.pos_logq, pos_logq)


def test_logit_bias_by_hand():
    """-log q on valid cells, the mask value on invalid ones, except the positive's own column."""
    valid = torch.tensor([[False, True, False], [True, False, True]])
    logq = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -2.0, -3.0]])
    m = mask_value(torch.float32)
    assert torch.equal(logit_bias(valid, logq), torch.tensor([[m, 2.0, m], [1.0, m, 3.0]]))
    # Row 0's positive is column 0, row 1's column 1: they keep their -log q.
    assert torch.equal(logit_bias(valid, logq, torch.tensor([0, 1])), torch.tensor([[1.0, 2.0, m], [1.0, 2.0, 3.0]]))
    assert torch.equal(logit_bias(valid, None), torch.tensor([[m, 0.0, m], [0.0, m, 0.0]]))
    assert torch.equal(logit_bias(None, logq), -logq)
    assert logit_bias(None, None) is None


def test_layout_names_each_users_own_column_and_its_bias():
    pos_logq = torch.tensor([-0.5, -0.6, -0.5, -0.7])
    extra = torch.tensor([3, 10, 12])
    neg = Negatives(items=extra, in_batch=True, items_logq=torch.tensor([-1.0, -2.0, -3.0]), positives_logq=pos_logq)
    layout = build_layout(USERS, POSITIVES, neg, lookup())
    assert torch.equal(layout.pos_column, torch.arange(4))
    bias = logit_bias(layout.valid, layout.neg_logq, layout.pos_column)
    assert torch.equal(bias[:, :4].diagonal(), -pos_logq)  # not masked: the softmax's label
    assert build_layout(USERS, POSITIVES, Negatives(items=extra), lookup()).pos_column is None  # no in-batch columns


def test_shared_extra_without_in_batch_and_mixed_logq_zeros():
    extra = torch.tensor([3, 10])
    layout = build_layout(USERS, POSITIVES, Negatives(items=extra), lookup())
    assert layout.pos_logq is None and layout.neg_logq is None and layout.pos_column is None
    # item 3 valid for all; item 10 masked for users 0 and 2.
    assert torch.equal(layout.valid, torch.tensor([[True, False], [True, True], [True, False], [True, True]]))
    # In-batch with a logQ but extra negatives without one: the extra columns get 0 (no correction).
    pos_logq = torch.tensor([-0.5, -0.6, -0.5, -0.7])
    mixed = build_layout(USERS, POSITIVES, Negatives(items=extra, in_batch=True, positives_logq=pos_logq), lookup())
    assert torch.equal(mixed.neg_logq[:, 4:], torch.zeros(4, 2))
    torch.testing.assert_close(mixed.neg_logq[:, :4], pos_logq.expand(4, 4))
    # And the reverse: extra negatives with a logQ, in-batch without: in-batch columns 0.
    rev = build_layout(USERS, POSITIVES, Negatives(items=extra, in_batch=True, items_logq=torch.tensor([-1.0, -2.0])), lookup())
    assert torch.equal(rev.neg_logq[:, :4], torch.zeros(4, 4))
    assert torch.equal(rev.neg_logq[:, 4:], torch.tensor([[-1.0, -2.0]] * 4))
    assert rev.pos_logq is None


def test_per_example_extra_negatives():
    extra = torch.tensor([[1, 2], [3, 4], [5, 10], [11, 7]])  # [B, n]
    extra_logq = -torch.arange(8, dtype=torch.float).view(4, 2)
    layout = build_layout(USERS, POSITIVES, Negatives(items=extra, items_logq=extra_logq), lookup())
    assert layout.valid.shape == (4, 2)
    # row 2: item 10 is its own positive -> masked; row 3: item 11 is a training positive -> masked.
    assert torch.equal(layout.valid, torch.tensor([[True, True], [True, True], [True, False], [False, True]]))
    assert torch.equal(layout.neg_logq, extra_logq)
    # With in-batch too: [B, B + n], per-example columns after the in-batch ones, row by row.
    both = build_layout(USERS, POSITIVES, Negatives(items=extra, in_batch=True, items_logq=extra_logq), lookup())
    assert both.valid.shape == (4, 6)
    assert torch.equal(both.valid[:, 4:], layout.valid)
    assert torch.equal(both.neg_logq[:, 4:], extra_logq)
    assert torch.equal(both.neg_logq[:, :4], torch.zeros(4, 4))


def test_no_negatives_layout():
    layout = build_layout(USERS, POSITIVES, Negatives(), lookup())
    assert layout == CandidateLayout()  # nothing to mask, correct or point at


def _reference_scores(user_vecs, pos_vecs, extra_vecs, in_batch):
    B = len(user_vecs)
    pos = torch.stack([torch.dot(user_vecs[b], pos_vecs[b]) for b in range(B)])
    rows = []
    for b in range(B):
        cols = []
        if in_batch:
            cols += [torch.dot(user_vecs[b], pos_vecs[j]) for j in range(B)]
        if extra_vecs is not None:
            vecs = extra_vecs if extra_vecs.dim() == 2 else extra_vecs[b]
            cols += [torch.dot(user_vecs[b], v) for v in vecs]
        rows.append(torch.stack(cols) if cols else None)
    neg = None if rows[0] is None else torch.stack(rows)
    return pos, neg


@pytest.mark.parametrize(
    "in_batch,extra_shape",
    [(True, None), (False, (5, 8)), (False, (4, 3, 8)), (True, (5, 8)), (True, (4, 3, 8)), (False, None)],
)
def test_score_candidates_equals_explicit_dot_products(in_batch, extra_shape):
    gen = torch.Generator().manual_seed(7)
    user_vecs = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    pos_vecs = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    extra_vecs = None if extra_shape is None else torch.randn(*extra_shape, generator=gen, dtype=torch.float64)
    pos, neg = score_candidates(user_vecs, pos_vecs, extra_vecs, pos_vecs if in_batch else None)
    ref_pos, ref_neg = _reference_scores(user_vecs, pos_vecs, extra_vecs, in_batch)
    torch.testing.assert_close(pos, ref_pos)
    if ref_neg is None:
        assert neg is None
    else:
        torch.testing.assert_close(neg, ref_neg)


def test_scores_and_layout_columns_line_up():
    """neg[b, j] is the score of user b with the item the layout puts in column j."""
    gen = torch.Generator().manual_seed(3)
    item_table = torch.randn(NUM_ITEMS, 6, generator=gen, dtype=torch.float64)
    user_vecs = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    extra = torch.tensor([[1, 2], [3, 4], [5, 10], [11, 7]])
    layout = build_layout(USERS, POSITIVES, Negatives(items=extra, in_batch=True), lookup())
    pos, neg = score_candidates(user_vecs, item_table[POSITIVES], item_table[extra], item_table[POSITIVES])
    columns = torch.cat([POSITIVES.expand(4, 4), extra], dim=1)  # the documented column order
    assert neg.shape == layout.valid.shape
    for b in range(4):
        for j in range(columns.shape[1]):
            assert neg[b, j].item() == pytest.approx(torch.dot(user_vecs[b], item_table[columns[b, j]]).item())


def test_keep_hardest_keeps_each_rows_top_k_valid_negatives():
    from twotower.losses import keep_hardest

    scores = torch.tensor([[0.9, 0.1, 0.5, 0.7], [0.2, 0.8, 0.3, 0.1]])
    valid = torch.tensor([[False, True, True, True], [True, True, False, False]])
    kept = keep_hardest(scores, valid, 2)
    # row 0: valid scores 0.1, 0.5, 0.7 -> keep columns 2 and 3 (0.9 is not a valid negative)
    # row 1: only two valid (0.2, 0.8) -> both kept, the invalid ones stay out
    assert kept.tolist() == [[False, False, True, True], [True, True, False, False]]
    assert keep_hardest(scores, valid, 10).equal(valid)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_online_hard_mining_reaches_the_loss(tmp_path):
    """With sampler.online_hardest=k each training row scores against at most k negatives."""
    from twotower.config import compose_config
    from twotower.wiring import build_run

    run = build_run(compose_config(["sampler.online_hardest=3", "data.batch_size=32"], output_dir=tmp_path))
    seen = {}

    def capture(batch):
        seen["valid"] = batch.neg_valid
        return batch.pos.sum() * 0

    run.module.loss = capture
    run.module.training_step(next(iter(run.datamodule.train_dataloader())), 0)
    per_row = seen["valid"].sum(1)
    assert per_row.max() == 3 and per_row.min() >= 1


@pytest.mark.parametrize("size", [7, 1000])  # marking present ids, and sorting (range > 8x the ids)
def test_distinct_ids_match_torch_unique(size):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, size, (4, 6), generator=generator)
    unique, inverse = distinct_ids(ids, size)
    expected_unique, expected_inverse = torch.unique(ids, return_inverse=True)
    assert torch.equal(unique, expected_unique)
    assert torch.equal(inverse, expected_inverse)
    assert torch.equal(unique[inverse], ids)


def test_distinct_ids_by_hand():
    unique, inverse = distinct_ids(torch.tensor([3, 0, 3, 5]), 6)
    assert unique.tolist() == [0, 3, 5]
    assert inverse.tolist() == [1, 0, 1, 2]
