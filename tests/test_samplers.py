"""Negative samplers: collisions with the positive, the popularity distribution, zero-count items,
in-batch logQ, shapes and determinism."""

from __future__ import annotations

import math

import pytest
import torch

from twotower.samplers import (
    CorpusSampler,
    InBatchSampler,
    Negatives,
    batch_probabilities,
    in_batch_sampler,
    no_negatives,
    popularity_sampler,
    TrainingStats,
    exposed_unclicked_sampler,
    mixed_sampler,
    resample_collisions,
    uniform_sampler,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_uniform_per_example_negatives_never_equal_the_positive():
    counts = torch.tensor([3.0, 1.0, 2.0])  # a 3-item catalogue: a collision every third draw
    sampler = uniform_sampler(TrainingStats(counts), num_negatives=8)
    g = gen(0)
    positives = torch.randint(3, (2000,), generator=g)
    neg = sampler.sample(torch.arange(2000), positives, g)
    assert neg.items.shape == (2000, 8)
    assert not neg.in_batch and neg.items_logq is None
    assert (neg.items != positives[:, None]).all()
    assert ((neg.items >= 0) & (neg.items < 3)).all()
    # With 3 items and one excluded, both other items show up for every positive.
    for p in range(3):
        drawn = set(neg.items[positives == p].unique().tolist())
        assert drawn == {0, 1, 2} - {p}


def test_popularity_per_example_negatives_never_equal_the_positive():
    counts = torch.tensor([100.0, 1.0, 5.0, 0.0])  # item 0 is drawn ~ 80% of the time
    sampler = popularity_sampler(TrainingStats(counts), num_negatives=4)
    g = gen(1)
    positives = torch.zeros(3000, dtype=torch.long)  # everybody's positive is the most popular item
    neg = sampler.sample(torch.arange(3000), positives, g)
    assert (neg.items != 0).all()
    assert (neg.items != 3).all()  # zero count: never drawn


def test_popularity_distribution_matches_count_pow_alpha():
    counts = torch.tensor([0.0, 1.0, 4.0, 9.0, 16.0, 100.0, 0.0, 3.0, 50.0, 7.0])
    n = 200_000
    sampler = popularity_sampler(TrainingStats(counts), num_negatives=n, alpha=0.75, shared=True)
    items = sampler.sample(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), gen(42)).items
    assert items.shape == (n,)
    empirical = torch.bincount(items, minlength=len(counts)).double() / n
    target = counts.double() ** 0.75
    target = target / target.sum()
    tv = 0.5 * (empirical - target).abs().sum().item()
    assert tv < 0.01, f"total variation {tv}"
    # Proportional to count ** 0.75, not to count: with counts the TV would be far larger.
    by_count = counts.double() / counts.sum()
    assert 0.5 * (empirical - by_count).abs().sum().item() > 0.05
    # Zero-count items (0 and 6) are never drawn.
    assert empirical[0] == 0 and empirical[6] == 0


def test_popularity_alpha_changes_probabilities_and_logq():
    counts = torch.tensor([1.0, 16.0, 0.0])
    s = popularity_sampler(TrainingStats(counts), num_negatives=2, alpha=0.5, logq="counts", shared=True)
    # weights 1, 4, 0 -> probabilities 0.2, 0.8, 0
    torch.testing.assert_close(s.probs, torch.tensor([0.2, 0.8, 0.0]))
    neg = s.sample(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), gen(0))
    torch.testing.assert_close(neg.items_logq, torch.log(s.probs[neg.items]))


def test_in_batch_sampler_logq_is_log_count_over_sum():
    counts = torch.tensor([1.0, 3.0, 0.0, 4.0])  # sum 8
    positives = torch.tensor([0, 1, 3, 1])
    neg = InBatchSampler(counts).sample(torch.arange(4), positives, gen())
    assert neg.in_batch and neg.items is None
    # log(1/8), log(3/8), log(4/8), log(3/8)
    expected = torch.tensor([math.log(1 / 8), math.log(3 / 8), math.log(4 / 8), math.log(3 / 8)])
    torch.testing.assert_close(neg.positives_logq, expected)
    torch.testing.assert_close(batch_probabilities(counts), torch.tensor([0.125, 0.375, 0.0, 0.5]))
    off = in_batch_sampler(TrainingStats(counts), logq="none").sample(torch.arange(4), positives, gen())
    assert off.in_batch and off.positives_logq is None


def test_batch_probabilities_zero_total_raises():
    with pytest.raises(ValueError):
        batch_probabilities(torch.zeros(3))


@pytest.mark.parametrize("make", [uniform_sampler, popularity_sampler])
def test_shared_negatives_shape(make):
    counts = torch.tensor([2.0, 5.0, 1.0, 9.0, 3.0])
    s = make(TrainingStats(counts), num_negatives=7, shared=True, logq="counts")
    neg = s.sample(torch.arange(16), torch.randint(5, (16,), generator=gen()), gen(1))
    assert neg.items.shape == (7,)
    assert neg.items_logq.shape == (7,)
    torch.testing.assert_close(neg.items_logq, s.log_q[neg.items])


def test_uniform_logq_is_minus_log_catalogue_size():
    s = uniform_sampler(TrainingStats(torch.tensor([0.0, 5.0, 1.0, 9.0])), num_negatives=3, logq="counts")
    neg = s.sample(torch.arange(2), torch.tensor([1, 2]), gen())
    assert neg.items.shape == (2, 3)
    torch.testing.assert_close(neg.items_logq, torch.full((2, 3), -math.log(4)))


@pytest.mark.parametrize("make", [uniform_sampler, popularity_sampler])
@pytest.mark.parametrize("shared", [False, True])
def test_determinism_with_same_generator_seed(make, shared):
    counts = torch.tensor([2.0, 5.0, 1.0, 9.0, 3.0, 0.0, 12.0])
    s = make(TrainingStats(counts), num_negatives=10, shared=shared)
    positives = torch.tensor([0, 3, 6, 3, 1, 2])
    a = s.sample(torch.arange(6), positives, gen(123)).items
    b = s.sample(torch.arange(6), positives, gen(123)).items
    c = s.sample(torch.arange(6), positives, gen(124)).items
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_resample_collisions_redraws_only_collisions():
    negatives = torch.tensor([[1, 0, 1], [2, 2, 3]])
    positives = torch.tensor([1, 2])
    calls = []

    def draw(k, generator):
        calls.append(k)
        return torch.full((k,), 9)

    out = resample_collisions(negatives, positives, draw, gen())
    assert torch.equal(out, torch.tensor([[9, 0, 9], [9, 9, 3]]))
    assert calls == [4]
    assert torch.equal(negatives, torch.tensor([[1, 0, 1], [2, 2, 3]]))  # input untouched


def test_corpus_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError):
        CorpusSampler(torch.ones(3), num_negatives=0)
    with pytest.raises(ValueError):
        CorpusSampler(torch.tensor([1.0, -1.0, 1.0]), num_negatives=1)
    with pytest.raises(ValueError):
        popularity_sampler(TrainingStats(torch.zeros(4)), num_negatives=2)


def test_no_negatives():
    s = no_negatives(TrainingStats(torch.ones(3)))
    assert not s.provides_negatives
    assert s.sample(torch.arange(2), torch.tensor([0, 1]), gen()) == Negatives()


def test_mixed_sampler_corrects_each_source_by_its_expected_occurrences():
    """In-batch candidate i: log(B * count_i / total); sampled j: log(M * q_j).
    counts [1, 3, 0, 4] -> p = [1/8, 3/8, 0, 1/2]; uniform q = 1/4; B = 2, M = 3."""
    counts = torch.tensor([1.0, 3.0, 0.0, 4.0])
    s = mixed_sampler(TrainingStats(counts), num_negatives=3, alpha=0.0)
    neg = s.sample(torch.tensor([0, 1]), torch.tensor([1, 3]), gen())
    assert neg.in_batch and neg.items.shape == (3,)
    assert torch.allclose(neg.positives_logq, torch.log(torch.tensor([2 * 3 / 8, 2 * 1 / 2])))
    assert torch.allclose(neg.items_logq, torch.full((3,), math.log(3 * 0.25)))
    off = mixed_sampler(TrainingStats(counts), num_negatives=3, logq="none").sample(
        torch.tensor([0, 1]), torch.tensor([1, 3]), gen()
    )
    assert off.positives_logq is None and off.items_logq is None


def test_exposed_unclicked_draws_only_that_users_low_rated_items():
    # user 0 rated item 1 -> 1 star, item 2 -> 5 stars, item 3 -> 2 stars; user 1 only liked things.
    stats = TrainingStats(
        item_counts=torch.ones(5),
        users=torch.tensor([0, 0, 0, 1, 1]),
        items=torch.tensor([1, 2, 3, 0, 4]),
        ratings=torch.tensor([1.0, 5.0, 2.0, 4.0, 5.0]),
        num_users=2,
    )
    s = exposed_unclicked_sampler(stats, num_negatives=50, max_rating=2)
    neg = s.sample(torch.tensor([0, 1]), torch.tensor([2, 0]), gen())
    assert set(neg.items[0].tolist()) == {1, 3}  # both low-rated items, nothing else
    assert neg.items_valid[0].all() and not neg.items_valid[1].any()  # user 1 has none: masked


def test_exposed_unclicked_needs_ratings():
    stats = TrainingStats(torch.ones(3), torch.tensor([0]), torch.tensor([1]), torch.tensor([float("nan")]), 1)
    with pytest.raises(ValueError, match="needs ratings"):
        exposed_unclicked_sampler(stats, num_negatives=2)


def test_one_logq_switch_for_every_sampler():
    """``sampler.logq``: counts | none everywhere, streaming for in-batch only, refused by name."""
    stats = TrainingStats(torch.tensor([1.0, 3.0, 0.0, 4.0]))
    assert in_batch_sampler(stats, logq="streaming").sample(torch.arange(2), torch.tensor([0, 1]), torch.Generator()).streaming_logq
    for make in (uniform_sampler, popularity_sampler, mixed_sampler):
        assert make(stats, num_negatives=2, logq="counts").logq_correction
        assert not make(stats, num_negatives=2, logq="none").logq_correction
        with pytest.raises(ValueError, match=r"sampler.logq='streaming': expected one of counts, none \(only sampler=in_batch"):
            make(stats, num_negatives=2, logq="streaming")
    with pytest.raises(ValueError, match="sampler.logq='yes': expected one of counts, streaming, none"):
        in_batch_sampler(stats, logq="yes")
