"""The synthetic data set (``data=synthetic``): schema, determinism, the planted structure
(Zipf popularity, factor-driven clicks, informative features), its guarantees, argument
checks, and real training runs through the platform."""

import json

import numpy as np
import pandas as pd
import pytest

from twotower.config import compose_config
from twotower.data.schema import INTERACTION_COLUMNS, MULTI_VALUE_SEPARATOR, InteractionData
from twotower.data.synthetic import (
    TopicCatalogue,
    generate_synthetic,
    load_synthetic,
    sample_topics,
    top_up,
    topic_bias,
    topic_probabilities,
)
from twotower.training import train
from brute_force import assert_matches_brute_force

SMALL = dict(num_users=600, num_items=300, num_interactions=12_000, seed=0)


@pytest.fixture(scope="module")
def world():
    """A mid-sized world, generated once for the structure tests (well under a second)."""
    return generate_synthetic(num_users=4_000, num_items=1_000, num_interactions=60_000, seed=0)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    return float(np.corrcoef(ra, rb)[0, 1])


def _zipf_slope(counts: np.ndarray, weights: np.ndarray, low: int = 5, high: int = 200) -> float:
    """Slope of log(count) against log(planted rank) over ranks low..high."""
    rank = np.argsort(np.argsort(-weights, kind="stable")) + 1
    keep = (rank >= low) & (rank <= high)
    return float(np.polyfit(np.log(rank[keep]), np.log(counts[keep] + 0.5), 1)[0])


# --- schema and determinism ----------------------------------------------------------------------


def test_schema_columns_and_dtypes():
    data = load_synthetic(**SMALL)
    assert isinstance(data, InteractionData) and data.name == "synthetic"
    inter = data.interactions
    assert tuple(inter.columns) == INTERACTION_COLUMNS
    assert [str(inter[c].dtype) for c in INTERACTION_COLUMNS] == ["int64", "int64", "int64", "float64"]
    assert data.users.index.name == "user_id" and data.users.index.is_unique
    assert data.items.index.name == "item_id" and data.items.index.is_unique
    assert list(data.users.columns) == ["top_genre", "age"]
    assert list(data.items.columns) == ["genres", "release_year"]
    assert data.users.index.tolist() == list(range(SMALL["num_users"]))
    assert data.items.index.tolist() == list(range(SMALL["num_items"]))  # the whole catalogue
    assert set(inter["user_id"]) == set(data.users.index)
    assert set(inter["item_id"]) <= set(data.items.index)
    # Ratings: whole stars 1..5; no repeated (user, item) pair.
    assert set(inter["rating"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert not inter.duplicated(["user_id", "item_id"]).any()
    assert data.users["top_genre"].map(type).eq(str).all()
    assert data.users["age"].between(16, 80).all() and data.items["release_year"].between(1950, 2024).all()


def test_timestamps_sorted_per_user_within_the_span():
    start, days = 1_600_000_000, 100
    inter = load_synthetic(**SMALL, start_time=start, span_days=days).interactions
    assert inter["timestamp"].between(start, start + days * 86_400).all()
    # Rows come by user, then time.
    assert (inter["user_id"].diff().fillna(0) >= 0).all()
    same_user = inter["user_id"].diff() == 0
    assert (inter["timestamp"].diff()[same_user] >= 0).all()
    # Everyone stays active to the end: most users have an interaction in the last fifth of the span.
    late = inter[inter["timestamp"] >= start + 0.8 * days * 86_400]["user_id"].nunique()
    assert late > 0.6 * SMALL["num_users"]


def test_same_seed_same_frames_other_seed_other_frames():
    a, b, c = load_synthetic(**SMALL), load_synthetic(**SMALL), load_synthetic(**{**SMALL, "seed": 1})
    for name in ("interactions", "users", "items"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    assert not a.interactions.equals(c.interactions)


def test_ratings_false_gives_nan_ratings():
    data = load_synthetic(**SMALL, ratings=False)
    assert data.interactions["rating"].isna().all()
    # Same interactions otherwise: the ratings draw from their own stream.
    with_ratings = load_synthetic(**SMALL)
    cols = ["user_id", "item_id", "timestamp"]
    pd.testing.assert_frame_equal(data.interactions[cols], with_ratings.interactions[cols])


# --- guarantees ----------------------------------------------------------------------------------


def test_every_user_has_the_guaranteed_minimum_and_the_count_is_close():
    world = generate_synthetic(**SMALL, min_user_interactions=7)
    per_user = world.interactions.groupby("user_id").size()
    assert len(per_user) == SMALL["num_users"] and per_user.min() >= 7
    assert len(world.interactions) == SMALL["num_interactions"] - world.shortfall
    assert world.shortfall < 0.02 * SMALL["num_interactions"]


def test_minimum_holds_when_the_catalogue_is_tiny():
    """Five items, five interactions per user: every user must hold every item (the top-up)."""
    world = generate_synthetic(num_users=50, num_items=5, num_interactions=250, min_user_interactions=5, zipf_exponent=2.0)
    per_user = world.interactions.groupby("user_id")["item_id"].nunique()
    assert (per_user == 5).all()


def test_top_up_adds_only_unseen_items_up_to_the_minimum():
    num_items = 6
    keys = np.array([0 * num_items + 1, 1 * num_items + 0, 1 * num_items + 2, 1 * num_items + 3])  # user 2 has none
    out = top_up(np.random.default_rng(0), keys, minimum=3, num_users=3, num_items=num_items)
    assert np.all(np.diff(out) > 0) and set(keys) <= set(out)
    assert np.bincount(out // num_items, minlength=3).tolist() == [3, 3, 3]


# --- planted structure ---------------------------------------------------------------------------


def test_samplers_match_their_distributions():
    """The two sampling steps, checked against their exact probabilities."""
    rng = np.random.default_rng(0)
    topic = np.array([0, 1, 0, 2, 1, 0, 2, 2])
    weight = np.array([1.0, 2.0, 3.0, 0.5, 1.0, 4.0, 1.5, 2.0])
    catalogue = TopicCatalogue.build(topic, weight, num_topics=4)  # topic 3 is empty
    assert catalogue.mass.tolist() == [8.0, 3.0, 4.0, 0.0]
    draws = catalogue.sample(rng, np.full(80_000, 0))
    assert set(draws) == {0, 2, 5}
    freq = np.bincount(draws, minlength=8)[[0, 2, 5]] / len(draws)
    assert freq == pytest.approx([1 / 8, 3 / 8, 4 / 8], abs=0.01)

    probs = np.array([[0.7, 0.2, 0.1, 0.0], [0.0, 0.0, 0.5, 0.5]])
    users, topics = sample_topics(rng, np.repeat([0, 1], 50_000), probs)
    for u in (0, 1):
        freq = np.bincount(topics[users == u], minlength=4) / 50_000
        assert freq == pytest.approx(probs[u], abs=0.01)


def test_topic_bias_makes_zipf_the_item_marginal(world):
    """Before repeats are redrawn, item i's expected share is exactly w_i / sum(w)."""
    counts = world.user_draws.astype(float)
    num_topics = len(world.centroids)
    mass = np.bincount(world.item_topic, weights=world.item_weight, minlength=num_topics)
    share = counts @ world.topic_probs / counts.sum()
    np.testing.assert_allclose(share, mass / mass.sum(), rtol=1e-4)
    # The bias is recomputed identically from the parts.
    bias = topic_bias(world.user_factors, world.centroids, mass, 0.25, counts)
    np.testing.assert_allclose(topic_probabilities(world.user_factors, world.centroids, bias, 0.25), world.topic_probs)


@pytest.mark.parametrize("exponent", [0.0, 0.7, 1.0])
def test_item_frequencies_follow_the_planted_zipf_law(exponent):
    # Many light users: few repeats to redraw, which would flatten the head.
    world = generate_synthetic(num_users=20_000, num_items=1_000, num_interactions=100_000, zipf_exponent=exponent, seed=0)
    counts = np.bincount(world.interactions["item_id"], minlength=1_000)
    assert _zipf_slope(counts, world.item_weight) == pytest.approx(-exponent, abs=0.1)
    if exponent > 0:
        assert _spearman(counts, world.item_weight) > 0.85


def test_users_click_items_whose_factors_match(world):
    inter = world.interactions
    users, items = inter["user_id"].to_numpy(), inter["item_id"].to_numpy()
    observed = world.affinity(users, items)
    rng = np.random.default_rng(1)
    random_pairs = world.affinity(rng.integers(len(world.user_factors), size=50_000), rng.integers(len(world.item_topic), size=50_000))
    assert observed.mean() - random_pairs.mean() > 1.0 * random_pairs.std()
    # Most clicks land in the user's home topic (chance: 1 in 20).
    assert (world.item_topic[items] == world.user_home[users]).mean() > 0.4
    # item_factors is the topic centroid, consistent with affinity().
    assert np.allclose((world.user_factors[users[:100]] * world.item_factors[items[:100]]).sum(1), observed[:100])
    # Ratings grade the match: better-matched pairs are rated higher.
    assert np.corrcoef(observed, inter["rating"].to_numpy())[0, 1] > 0.5


def test_features_carry_the_factors_and_not_popularity(world):
    num_topics = len(world.centroids)
    names = np.array([f"genre_{k:02d}" for k in range(num_topics)])
    # top_genre: the user's most likely topic, right unless replaced by noise (0.2 * 19/20 of the time).
    hit = (world.users["top_genre"].to_numpy() == names[world.topic_probs.argmax(1)]).mean()
    assert hit == pytest.approx(1 - 0.2 * (num_topics - 1) / num_topics, abs=0.03)
    # age and release_year are linear in the factors plus noise: a regression on them explains much.
    for table, column, factors in (
        (world.users, "age", world.user_factors),
        (world.items, "release_year", world.item_factors),
    ):
        y = table[column].to_numpy()
        x = np.column_stack([factors, np.ones(len(y))])
        resid = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
        assert 1 - resid.var() / y.var() > 0.4, column
    # genres: 1-3 distinct tags, the first the item's topic unless replaced by noise.
    tags = world.items["genres"].str.split(MULTI_VALUE_SEPARATOR)
    assert tags.map(len).between(1, 3).all() and tags.map(lambda t: len(set(t)) == len(t)).all()
    first = (tags.str[0].to_numpy() == names[world.item_topic]).mean()
    assert first == pytest.approx(1 - 0.2 * (num_topics - 1) / num_topics, abs=0.03)
    # Popularity is not leaked: no item feature tracks the planted weights.
    assert abs(_spearman(world.items["release_year"].to_numpy(), world.item_weight)) < 0.1
    assert abs(_spearman(tags.map(len).to_numpy(), world.item_weight)) < 0.1


def test_feature_noise_zero_gives_exact_topics():
    world = generate_synthetic(**SMALL, feature_noise=0.0)
    names = np.array([f"genre_{k:02d}" for k in range(len(world.centroids))])
    assert (world.users["top_genre"].to_numpy() == names[world.topic_probs.argmax(1)]).all()
    assert (world.items["genres"].str.split("|").str[0].to_numpy() == names[world.item_topic]).all()


# --- argument checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_items": 0}, r"num_items=0: expected an integer >= 1"),
        ({"num_users": -3}, r"num_users=-3: expected an integer >= 1"),
        ({"num_items": 2.5}, r"num_items=2.5: expected an integer"),
        ({"dim": 0}, r"dim=0: expected an integer >= 1"),
        ({"num_topics": True}, r"num_topics=True: expected an integer"),
        ({"zipf_exponent": -0.5}, r"zipf_exponent=-0.5: expected a finite number >= 0"),
        ({"zipf_exponent": float("nan")}, r"zipf_exponent=nan: expected a finite number"),
        ({"temperature": 0}, r"temperature=0: expected a finite number > 0"),
        ({"feature_noise": 1.5}, r"feature_noise=1.5: expected a finite number >= 0.0 and <= 1.0"),
        ({"user_noise": -1}, r"user_noise=-1: expected"),
        ({"span_days": 0}, r"span_days=0: expected a finite number > 0"),
        ({"seed": -1}, r"seed=-1: expected an integer >= 0"),
        ({"ratings": "yes"}, r"ratings='yes': expected true or false"),
        ({"num_interactions": 100}, r"num_interactions=100: expected between num_users \* min_user_interactions = 3000"),
        ({"num_items": 4}, r"min_user_interactions=5: expected at most num_items=4"),
        ({"num_users": 2, "num_items": 5, "num_interactions": 11}, r"num_interactions=11: .* num_users \* num_items = 10"),
    ],
)
def test_bad_arguments_are_refused_with_the_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_synthetic(**{**SMALL, **kwargs})


# --- through the platform ------------------------------------------------------------------------


def _overrides(tiny_overrides, **sizes):
    return tiny_overrides + ["data=synthetic"] + [f"data.source.{k}={v}" for k, v in sizes.items()]


def test_config_composes_and_overrides_sizes(tmp_path):
    cfg = compose_config(["data=synthetic", "data.source.num_items=1000000", "data.source.num_interactions=10000000"], output_dir=tmp_path)
    assert cfg.data.source._target_ == "twotower.data.synthetic.load_synthetic"
    assert cfg.data.source.num_items == 1_000_000 and cfg.data.source.num_interactions == 10_000_000
    assert cfg.data.positive_threshold is None
    # Every declared feature is a generated column (or the id).
    data = load_synthetic(**SMALL)
    assert {f.name for f in cfg.data.user_features} == {"user_id", *data.users.columns}
    assert {f.name for f in cfg.data.item_features} == {"item_id", *data.items.columns}


@pytest.mark.slow
def test_two_tower_learns_the_planted_structure_end_to_end(tmp_path, tiny_overrides):
    """A real run through the platform; two epochs of the two-tower model clearly beat the
    most-popular baseline, so the planted structure is learnable."""
    sizes = dict(num_users=1000, num_items=300, num_interactions=20_000)
    overrides = _overrides(tiny_overrides, **sizes) + [
        "trainer.max_epochs=2", "trainer.limit_train_batches=1.0", "trainer.limit_val_batches=1.0",
        "trainer.limit_test_batches=1.0", "data.batch_size=256", "seed=0",
    ]  # fmt: skip
    two_tower = train(compose_config(overrides, output_dir=tmp_path / "two_tower"))
    assert_matches_brute_force(two_tower, tmp_path / "two_tower")
    features = json.loads((tmp_path / "two_tower" / "features.json").read_text())
    assert [f["name"] for f in features["user"]] == ["user_id", "top_genre", "age"]
    assert [f["name"] for f in features["item"]] == ["item_id", "genres", "release_year"]
    assert (tmp_path / "two_tower" / "results.json").exists()

    popularity = train(compose_config(overrides + ["model=popularity"], output_dir=tmp_path / "popularity"))
    # Observed at seed 0: recall@10 0.43 vs 0.29, ndcg@20 0.37 vs 0.24.
    assert two_tower["test/recall@10"] > 1.3 * popularity["test/recall@10"]
    assert two_tower["test/ndcg@20"] > 1.3 * popularity["test/ndcg@20"]
