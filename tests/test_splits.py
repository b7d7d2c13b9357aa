"""Splits on the bundled MovieLens-100K (temporal, leave-last-out, random) and the no-leakage
guarantees of prepare(): vocabularies from the training split, seen items masked at test."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from twotower import CONFIG_DIR
from twotower.data.features import parse_feature_specs
from twotower.data.movielens import load_ml100k
from twotower.data.prepare import prepare
from twotower.data.splits import leave_last_out_split, random_split, split_interactions, temporal_split
from twotower.errors import DataError

CONF = CONFIG_DIR / "data" / "ml100k.yaml"


@pytest.fixture(scope="module")
def ml100k():
    return load_ml100k()


@pytest.fixture(scope="module")
def inter(ml100k):
    return ml100k.interactions


def assert_partition(parts, inter):
    index = np.concatenate([parts[k].index.to_numpy() for k in ("train", "val", "test")])
    assert len(index) == len(inter)
    assert len(np.unique(index)) == len(index)
    assert set(index) == set(inter.index)
    for k in ("train", "val", "test"):  # rows are the input rows, unchanged
        pd.testing.assert_frame_equal(parts[k], inter.loc[parts[k].index])


def test_bundled_ml100k_shape(inter, ml100k):
    assert len(inter) == 100_000
    assert inter["user_id"].nunique() == 943 and inter["item_id"].nunique() == 1682
    assert len(ml100k.users) == 943 and len(ml100k.items) == 1682


def test_temporal_split_respects_time_and_partitions(inter):
    parts = temporal_split(inter, 0.1, 0.1)
    assert_partition(parts, inter)
    train_ts, val_ts, test_ts = (parts[k]["timestamp"] for k in ("train", "val", "test"))
    assert train_ts.max() <= val_ts.min()  # no validation interaction earlier than a training one
    assert train_ts.max() <= test_ts.min()  # no test interaction earlier than a training one
    assert val_ts.max() <= test_ts.min()
    n = len(inter)
    assert abs(len(parts["val"]) - 0.1 * n) <= 0.01 * n
    assert abs(len(parts["test"]) - 0.1 * n) <= 0.01 * n


def test_temporal_split_without_validation(inter):
    parts = temporal_split(inter, 0.0, 0.2)
    assert len(parts["val"]) == 0
    assert_partition(parts, inter)
    assert parts["train"]["timestamp"].max() <= parts["test"]["timestamp"].min()
    assert abs(len(parts["test"]) - 0.2 * len(inter)) <= 0.01 * len(inter)


def test_leave_last_out_vs_brute_force(inter):
    is_pos = (inter["rating"] >= 4).to_numpy()
    parts = leave_last_out_split(inter, is_pos)
    train_rows, val_rows, test_rows = (set(parts[k].index) for k in ("train", "val", "test"))
    assert not (train_rows & val_rows) and not (train_rows & test_rows) and not (val_rows & test_rows)
    users = inter["user_id"].to_numpy()
    ts = inter["timestamp"].to_numpy()
    split_of = {}
    for name, rows in (("train", train_rows), ("val", val_rows), ("test", test_rows)):
        for r in rows:
            split_of[r] = name
    by_user: dict = {}
    for r in range(len(inter)):  # RangeIndex: the row number is the index label
        by_user.setdefault(users[r], []).append(r)
    checked_eligible = 0
    for user, rows in by_user.items():
        rows = sorted(rows, key=lambda r: (ts[r], r))  # time order, ties by the original row order
        p_rows = [r for r in rows if is_pos[r]]
        if len(p_rows) < 3:  # too few positives: everything stays in training
            assert all(split_of.get(r) == "train" for r in rows)
            continue
        checked_eligible += 1
        test_r, val_r = p_rows[-1], p_rows[-2]
        # The test item is the last positive, the validation item the one before it.
        assert [r for r in rows if split_of.get(r) == "test"] == [test_r]
        assert [r for r in rows if split_of.get(r) == "val"] == [val_r]
        assert ts[test_r] == max(ts[r] for r in p_rows)
        val_ts = ts[val_r]
        user_train = {r for r in rows if split_of.get(r) == "train"}
        # No training interaction is later than the user's validation item.
        assert all(ts[r] <= val_ts for r in user_train)
        # Every other positive stays in training; non-positives only when strictly before the validation item.
        expected_train = {
            r
            for r in rows
            if r not in (test_r, val_r) and ((is_pos[r] and ts[r] <= val_ts) or (not is_pos[r] and ts[r] < val_ts))
        }
        assert user_train == expected_train
        assert set(p_rows[:-2]) <= user_train
    assert checked_eligible > 900


def test_random_split_per_user_counts_and_partition(inter):
    parts = random_split(inter, 0.1, 0.1, seed=0)
    assert_partition(parts, inter)
    n = inter.groupby("user_id").size()
    counts = {k: parts[k].groupby("user_id").size().reindex(n.index, fill_value=0) for k in parts}
    expected_small = np.floor(n * 0.1).astype(int)
    pd.testing.assert_series_equal(counts["test"], expected_small, check_names=False)
    pd.testing.assert_series_equal(counts["val"], expected_small, check_names=False)
    pd.testing.assert_series_equal(counts["train"], n - 2 * expected_small, check_names=False)


def test_random_split_ratios_differ_per_part(inter):
    parts = random_split(inter, 0.2, 0.1, seed=3)
    n = inter.groupby("user_id").size()
    val = parts["val"].groupby("user_id").size().reindex(n.index, fill_value=0)
    test = parts["test"].groupby("user_id").size().reindex(n.index, fill_value=0)
    assert (val == np.floor(n * 0.2).astype(int)).all()
    assert (test == np.floor(n * 0.1).astype(int)).all()


def test_random_split_seeded(inter):
    a, b, c = random_split(inter, seed=0), random_split(inter, seed=0), random_split(inter, seed=1)
    for k in ("train", "val", "test"):
        assert a[k].index.equals(b[k].index)
    assert not a["test"].index.equals(c["test"].index)
    # Not a time-ordered split: the test rows are not simply every user's latest interactions.
    latest = inter.groupby("user_id")["timestamp"].transform("max")
    assert (a["test"]["timestamp"] < latest.loc[a["test"].index]).mean() > 0.5


@pytest.mark.parametrize("val,test", [(0.6, 0.5), (-0.1, 0.1), (0.1, 1.0), (1.0, 0.0), (0.5, 0.5)])
def test_bad_ratios_raise(inter, val, test):
    with pytest.raises(DataError, match="ratio"):
        temporal_split(inter, val, test)
    with pytest.raises(DataError, match="ratio"):
        random_split(inter, val, test)
    with pytest.raises(DataError, match="ratio"):
        split_interactions(inter, "temporal", np.ones(len(inter), bool), val, test)


def test_unknown_split_kind_raises(inter):
    with pytest.raises(DataError, match="bogus"):
        split_interactions(inter, "bogus", np.ones(len(inter), bool))


def _specs():
    cfg = OmegaConf.load(CONF)
    user = parse_feature_specs(OmegaConf.to_container(cfg.user_features), "user", "user_id")
    item = parse_feature_specs(OmegaConf.to_container(cfg.item_features), "item", "item_id")
    return user, item, cfg.positive_threshold


@pytest.fixture(scope="module")
def prepared(ml100k):
    user_specs, item_specs, threshold = _specs()
    return prepare(ml100k, user_specs, item_specs, threshold, "temporal", 0.1, 0.1, seed=0)


def test_prepare_vocabularies_and_statistics_from_train_only(prepared, ml100k):
    parts = temporal_split(ml100k.interactions, 0.1, 0.1)  # computed independently of prepare
    train_users = set(parts["train"]["user_id"])
    train_items = set(parts["train"]["item_id"])
    fitted = {f["name"]: f for f in prepared.fitted["user"]}
    assert set(fitted["user_id"]["vocab"]) == {str(u) for u in train_users}
    item_fitted = {f["name"]: f for f in prepared.fitted["item"]}
    assert set(item_fitted["item_id"]["vocab"]) == {str(i) for i in train_items}
    # Cold users exist (first seen after the cut-off) and take the unknown row 0; warm users do not.
    cold = [u for u in prepared.user_ids if u not in train_users]
    assert cold, "expected users that only appear after the validation cut-off"
    codes = prepared.user_features["user_id"]
    raw = list(prepared.user_ids)
    for dense, u in enumerate(raw):
        assert (codes[dense].item() == 0) == (u not in train_users)
    # The age z-score uses the training users' ages only.
    ages = ml100k.users.loc[sorted(train_users), "age"].to_numpy()
    assert fitted["age"]["mean"] == pytest.approx(ages.mean())
    assert fitted["age"]["std"] == pytest.approx(ages.std())
    all_ages = ml100k.users["age"].to_numpy()
    assert abs(all_ages.mean() - ages.mean()) > 1e-6  # the check above can tell them apart
    # Popularity from training positives only.
    train_pos = parts["train"][parts["train"]["rating"] >= 4]
    expected_counts = train_pos["item_id"].value_counts().reindex(prepared.item_ids, fill_value=0).to_numpy()
    assert np.array_equal(prepared.item_counts.numpy(), expected_counts.astype(np.float32))


def _csr_rows(ptr, items, u):
    return set(items[ptr[u] : ptr[u + 1]].tolist())


def test_prepare_seen_items_mask_train_and_val_at_test(prepared, ml100k):
    parts = temporal_split(ml100k.interactions, 0.1, 0.1)
    item_index = {item: k for k, item in enumerate(prepared.item_ids)}
    user_index = {user: k for k, user in enumerate(prepared.user_ids)}

    def items_by_user(df, positives_only=False):
        if positives_only:
            df = df[df["rating"] >= 4]
        return {user_index[u]: {item_index[i] for i in g} for u, g in df.groupby("user_id")["item_id"]}

    train, val = items_by_user(parts["train"]), items_by_user(parts["val"])
    for name, seen_of in (("val", lambda u: train.get(u, set())), ("test", lambda u: train.get(u, set()) | val.get(u, set()))):
        es = prepared.eval_sets[name]
        targets = items_by_user(parts[name], positives_only=True)
        assert sorted(es.users.tolist()) == sorted(targets)
        some_val_masked = False
        for row, u in enumerate(es.users.tolist()):
            seen = _csr_rows(es.seen_ptr, es.seen_items, row)
            assert seen == seen_of(u), (name, u)
            assert _csr_rows(es.target_ptr, es.target_items, row) == targets[u]
            assert bool(es.warm[row]) == (u in train)
            if name == "test" and val.get(u):
                assert val[u] <= seen  # the user's validation items are masked at test
                some_val_masked = True
        if name == "test":
            assert some_val_masked


def test_random_split_gives_every_user_a_validation_interaction_when_asked():
    """``min_val_per_user=1``: ``floor(n * 0.1)`` validation rows for a user with 10 or more, 1
    for the others, except a user with a single interaction, who keeps it for training."""
    sizes = {"a": 1, "b": 2, "c": 5, "d": 9, "e": 10, "f": 23}
    users = [u for u, n in sizes.items() for _ in range(n)]
    data = pd.DataFrame({"user_id": users, "item_id": range(len(users)), "rating": 1.0, "timestamp": 0})
    parts = random_split(data, 0.1, 0.0, seed=0, min_val_per_user=1)
    assert_partition(parts, data)
    val = parts["val"].groupby("user_id").size().reindex(list(sizes), fill_value=0)
    assert val.to_dict() == {"a": 0, "b": 1, "c": 1, "d": 1, "e": 1, "f": 2}
    # The same seed without the option: floor(10%) only, the same shuffle.
    plain = random_split(data, 0.1, 0.0, seed=0)
    assert plain["val"].groupby("user_id").size().to_dict() == {"e": 1, "f": 2}
    assert set(plain["val"].index) <= set(parts["val"].index)


@pytest.mark.parametrize("value", [-1, 0.5, True])
def test_random_split_refuses_a_bad_min_val_per_user(inter, value):
    with pytest.raises(DataError, match=r"split\.min_val_per_user=.*expected an integer >= 0"):
        random_split(inter, 0.1, 0.1, seed=0, min_val_per_user=value)


def test_min_val_per_user_is_refused_for_a_split_by_time(inter):
    with pytest.raises(DataError, match=r"split\.min_val_per_user=1 applies to per-user ratio splits"):
        split_interactions(inter, "temporal", np.ones(len(inter), bool), min_val_per_user=1)
