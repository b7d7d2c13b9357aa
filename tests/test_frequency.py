"""Streaming frequency estimation against a simulated stream with known probabilities."""

import math

import pytest
import torch

from twotower.frequency import StreamingFrequencyEstimator

NUM_ITEMS, BATCH, STEPS, ALPHA = 100, 32, 10_000, 0.01


def zipf(num_items: int) -> torch.Tensor:
    weights = 1.0 / torch.arange(1, num_items + 1, dtype=torch.float64)
    return weights / weights.sum()


def in_batch_probability(draw_probs: torch.Tensor, batch: int) -> torch.Tensor:
    """The true probability that an item appears in a batch of ``batch`` iid draws."""
    return 1 - (1 - draw_probs) ** batch


def run_stream(estimator: StreamingFrequencyEstimator, draw_probs: torch.Tensor, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    draws = torch.multinomial(draw_probs.float(), steps * BATCH, replacement=True, generator=generator).view(steps, BATCH)
    for batch in draws:
        estimator.update(batch)


# The relative standard deviation of the moving average of geometric gaps, at its largest (p -> 0).
SIGMA = math.sqrt(ALPHA / (2 - ALPHA))  # 0.071


def relative_errors(estimator: StreamingFrequencyEstimator, truth: torch.Tensor) -> torch.Tensor:
    estimate = estimator.probabilities(torch.arange(NUM_ITEMS)).double()
    return (estimate - truth).abs() / truth


def test_converges_to_true_probabilities_and_follows_a_change():
    """Bound: every item within 4 sigma (28 %), the median within 1.5 sigma, where sigma is
    the stated steady-state relative deviation; each item is seen >= 600 times per phase
    (the rarest has p = 0.06 per step), far more than 1 / alpha = 100."""
    estimator = StreamingFrequencyEstimator(num_buckets=4096, num_hashes=2, alpha=ALPHA, seed=0)
    before = zipf(NUM_ITEMS)
    run_stream(estimator, before, STEPS, seed=1)
    truth_before = in_batch_probability(before, BATCH)
    errors = relative_errors(estimator, truth_before)
    assert errors.max() < 4 * SIGMA and errors.median() < 1.5 * SIGMA

    # The distribution flips: the most popular item becomes the rarest and vice versa.
    after = before.flip(0)
    run_stream(estimator, after, STEPS, seed=2)
    truth_after = in_batch_probability(after, BATCH)
    errors = relative_errors(estimator, truth_after)
    assert errors.max() < 4 * SIGMA and errors.median() < 1.5 * SIGMA
    # It followed the change: item 0 fell from 0.999 to 0.060 per step, item 99 rose the other way.
    estimate = estimator.probabilities(torch.tensor([0, 99]))
    assert estimate[0] < 0.08 and estimate[1] > 0.9


def test_first_sighting_and_update_by_hand():
    estimator = StreamingFrequencyEstimator(num_buckets=1 << 20, num_hashes=1, alpha=0.5)
    item = torch.tensor([7])
    estimator.update(torch.tensor([1]))  # t = 1: item 7 not seen
    estimator.update(torch.tensor([7, 7]))  # t = 2: first sighting takes the gap as it is (2 - 0)
    assert estimator.probabilities(item).item() == pytest.approx(1 / 2)
    estimator.update(torch.tensor([3]))  # t = 3
    estimator.update(torch.tensor([7]))  # t = 4: B = 0.5 * 2 + 0.5 * (4 - 2) = 2
    assert estimator.probabilities(item).item() == pytest.approx(1 / 2)
    estimator.update(torch.tensor([7]))  # t = 5: B = 0.5 * 2 + 0.5 * 1 = 1.5
    assert estimator.probabilities(item).item() == pytest.approx(1 / 1.5)
    assert estimator.probabilities(torch.tensor([123])).item() == 1.0  # never seen


def test_several_hashes_take_the_largest_gap_against_collisions():
    """With 64 buckets for 100 items many slots are shared: one hash sees a slot's
    combined frequency; the largest gap over several hashes is much closer to the truth."""
    probs = zipf(NUM_ITEMS)
    truth = in_batch_probability(probs, BATCH)
    errors = {}
    for hashes in (1, 8):
        estimator = StreamingFrequencyEstimator(num_buckets=64, num_hashes=hashes, alpha=ALPHA, seed=3)
        run_stream(estimator, probs, 2000, seed=4)
        errors[hashes] = relative_errors(estimator, truth).mean()
    assert errors[1] > 1.0  # collisions inflate the estimate (measured: 1.64)
    assert errors[8] < errors[1] / 4  # (measured: 0.25)


def test_state_round_trips_and_refuses_a_different_shape():
    estimator = StreamingFrequencyEstimator(num_buckets=64, num_hashes=2, alpha=0.1)
    for step in range(5):
        estimator.update(torch.tensor([step, 1]))
    restored = StreamingFrequencyEstimator(num_buckets=64, num_hashes=2, alpha=0.1, seed=99)
    restored.load_state_dict(estimator.state_dict())
    items = torch.arange(6)
    assert torch.equal(restored.probabilities(items), estimator.probabilities(items))
    restored.update(torch.tensor([1]))
    estimator.update(torch.tensor([1]))
    assert torch.equal(restored.probabilities(items), estimator.probabilities(items))
    with pytest.raises(ValueError, match="num_hashes, num_buckets"):
        StreamingFrequencyEstimator(num_buckets=32, num_hashes=2).load_state_dict(estimator.state_dict())


@pytest.mark.parametrize("kwargs", [{"alpha": 0.0}, {"alpha": 1.5}, {"num_buckets": 0}, {"num_hashes": 0}])
def test_refuses_bad_settings(kwargs):
    with pytest.raises(ValueError):
        StreamingFrequencyEstimator(**kwargs)
