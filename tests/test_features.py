"""Feature transforms: fitted on training rows only, then applied unchanged (unknown -> row 0);
z-scores, quantile buckets, stable hashing, multi-valued padding, and invalid specs."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from twotower.data.features import (
    BUCKET_SUFFIX,
    FeatureSpec,
    encode_feature,
    feature_columns,
    fit_and_encode,
    fit_feature,
    parse_feature_specs,
)
from twotower.errors import DataError


def spec(**kw) -> FeatureSpec:
    return FeatureSpec.from_config(kw, "user")


def test_categorical_vocabulary_from_train_rows_only():
    frame = pd.DataFrame({"color": ["red", "blue", "red", "green", None]})
    train_rows = np.array([0, 1, 2])  # "green" is only in a non-train row
    fitted, encoded = fit_and_encode([spec(name="color", kind="categorical")], frame, train_rows)
    assert fitted[0]["vocab"] == ["blue", "red"]
    assert fitted[0]["cardinality"] == 3  # + the unknown row 0
    # blue -> 1, red -> 2, green (unseen in training) -> 0, missing -> 0
    assert encoded["color"].tolist() == [2, 1, 2, 0, 0]
    assert encoded["color"].dtype == torch.long


def test_id_vocabulary_from_train_rows_only():
    ids = pd.Index([10, 20, 30, 40], name="user_id")
    specs = parse_feature_specs([{"name": "user_id", "kind": "id"}], "user", "user_id")
    frame = feature_columns(None, ids, specs, "user_id")
    fitted, encoded = fit_and_encode(specs, frame, np.array([1, 3]))  # users 20 and 40 are in training
    assert fitted[0]["vocab"] == ["20", "40"]
    assert encoded["user_id"].tolist() == [0, 1, 0, 2]


def test_normalize_z_scores_fitted_on_train_only():
    # train values 1, 2, 3, 4: mean 2.5, (population) std sqrt(((1.5^2 + .5^2) * 2) / 4) = sqrt(1.25) = 1.118034
    frame = pd.DataFrame({"age": [1.0, 2.0, 3.0, 4.0, 1000.0, np.nan]})
    fitted, encoded = fit_and_encode(
        [spec(name="age", kind="continuous", transforms=["normalize"])], frame, np.array([0, 1, 2, 3])
    )
    assert fitted[0]["mean"] == pytest.approx(2.5)  # 1000 (not a training row) stays out of the mean
    assert fitted[0]["std"] == pytest.approx(math.sqrt(1.25))
    s = math.sqrt(1.25)
    expected = [(1 - 2.5) / s, (2 - 2.5) / s, (3 - 2.5) / s, (4 - 2.5) / s, (1000 - 2.5) / s, 0.0]  # missing -> mean -> 0
    assert encoded["age"].tolist() == pytest.approx(expected, rel=1e-6)
    assert encoded["age"].dtype == torch.float32
    assert "age" + BUCKET_SUFFIX not in encoded


def test_normalize_with_log1p():
    # log1p of the train values [0, e-1, e^2-1, e^3-1] is [0, 1, 2, 3]: mean 1.5, std sqrt(1.25).
    e = math.e
    values = pd.Series([0.0, e - 1, e**2 - 1, e**3 - 1, e**5 - 1])
    fitted = fit_feature(spec(name="count", kind="continuous", log1p=True), values.iloc[:4])
    assert fitted["mean"] == pytest.approx(1.5)
    assert fitted["std"] == pytest.approx(math.sqrt(1.25))
    s = math.sqrt(1.25)
    out = encode_feature(fitted, values)["count"]
    assert out.tolist() == pytest.approx([-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s, 3.5 / s], rel=1e-5)


def test_normalize_constant_training_values_uses_std_one():
    fitted = fit_feature(spec(name="x", kind="continuous"), pd.Series([3.0, 3.0, 3.0]))
    assert fitted["std"] == 1.0
    assert encode_feature(fitted, pd.Series([3.0, 5.0]))["x"].tolist() == pytest.approx([0.0, 2.0])


def test_log1p_rejects_negative_training_values():
    with pytest.raises(DataError, match="'count'"):
        fit_feature(spec(name="count", kind="continuous", log1p=True), pd.Series([1.0, -2.0]))


def test_continuous_without_finite_training_value_raises():
    with pytest.raises(DataError, match="'x'"):
        fit_feature(spec(name="x", kind="continuous"), pd.Series([np.nan, np.nan]))


def test_bucketize_boundaries_are_training_quantiles():
    # Training values 1..10, 4 buckets: quantiles at 0.25, 0.5, 0.75 with linear interpolation,
    # position q * (10 - 1): 2.25 -> 3.25, 4.5 -> 5.5, 6.75 -> 7.75.
    train = [float(v) for v in range(1, 11)]
    frame = pd.DataFrame({"year": train + [1000.0, np.nan, -5.0, 3.25, 5.0, 5.5, 8.0]})
    fitted, encoded = fit_and_encode(
        [spec(name="year", kind="continuous", transforms=["bucketize"], num_buckets=4)], frame, np.arange(10)
    )
    assert fitted[0]["boundaries"] == pytest.approx([3.25, 5.5, 7.75])  # 1000 (not training) plays no part
    assert fitted[0]["cardinality"] == 5  # missing row + 4 buckets
    assert "mean" not in fitted[0] and "year" not in encoded
    buckets = encoded["year" + BUCKET_SUFFIX]
    # bucket 1: x < 3.25; 2: 3.25 <= x < 5.5; 3: 5.5 <= x < 7.75; 4: x >= 7.75; 0: missing
    # train 1, 2, 3 -> 1; 4, 5 -> 2; 6, 7 -> 3; 8, 9, 10 -> 4
    assert buckets[:10].tolist() == [1, 1, 1, 2, 2, 3, 3, 4, 4, 4]
    # 1000 -> 4, NaN -> 0, -5 -> 1, 3.25 -> 2 (a boundary opens the upper bucket), 5 -> 2, 5.5 -> 3, 8 -> 4
    assert buckets[10:].tolist() == [4, 0, 1, 2, 2, 3, 4]
    assert int(buckets.max()) < fitted[0]["cardinality"]


def test_bucketize_and_normalize_together_with_repeated_quantiles():
    # Many equal training values: the repeated quantiles collapse into distinct boundaries.
    values = pd.Series([0.0] * 8 + [1.0, 2.0])
    fitted = fit_feature(spec(name="n", kind="continuous", transforms=["normalize", "bucketize"], num_buckets=4), values)
    # quantiles 0.25, 0.5, 0.75 of [0 x8, 1, 2] are all 0 -> one boundary [0.0]
    assert fitted["boundaries"] == [0.0]
    assert fitted["cardinality"] == 3
    out = encode_feature(fitted, pd.Series([-1.0, 0.0, 2.0, np.nan]))
    assert out["n" + BUCKET_SUFFIX].tolist() == [1, 2, 2, 0]
    assert fitted["mean"] == pytest.approx(0.3)
    assert set(out) == {"n", "n" + BUCKET_SUFFIX}


def test_hashing_is_stable_and_within_range():
    s = spec(name="zip", kind="categorical", hash_buckets=7)
    values = pd.Series(["75001", "10115", None, "75001", "99999", "abc"])
    fitted = fit_feature(s, values.iloc[:2])
    assert fitted["cardinality"] == 8 and "vocab" not in fitted
    a = encode_feature(fitted, values)["zip"]
    b = encode_feature(fit_feature(s, values.iloc[3:]), values)["zip"]  # refit on other rows: hashing needs no fit
    assert torch.equal(a, b)
    assert a[2].item() == 0  # missing -> row 0
    present = a[[0, 1, 3, 4, 5]]
    assert ((present >= 1) & (present <= 7)).all()
    assert a[0].item() == a[3].item()  # same value, same bucket
    # Unseen values are hashed too (no vocabulary): "99999" is not mapped to the unknown row.
    assert a[4].item() != 0


@pytest.mark.slow
def test_hashing_is_the_same_in_another_process():
    s = spec(name="zip", kind="categorical", hash_buckets=1000)
    values = ["alpha", "beta", "gamma", "delta", "42"]
    here = encode_feature(fit_feature(s, pd.Series(values)), pd.Series(values))["zip"].tolist()
    code = (
        "import pandas as pd\n"
        "from twotower.data.features import FeatureSpec, fit_feature, encode_feature\n"
        "s = FeatureSpec('zip', 'categorical', hash_buckets=1000)\n"
        f"v = pd.Series({values!r})\n"
        "print(encode_feature(fit_feature(s, v), v)['zip'].tolist())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "12345"}
    )
    assert out.stdout.strip() == str(here)


def test_multi_categorical_vocab_and_padding():
    frame = pd.DataFrame({"genres": ["Action|Comedy", "Drama", "", "Action|Horror|Western|Comedy", None]})
    fitted, encoded = fit_and_encode([spec(name="genres", kind="multi_categorical")], frame, np.array([0, 1, 2]))
    # Vocabulary and max length from rows 0-2 only: Horror and Western stay unknown, max_len 2.
    assert fitted[0]["vocab"] == ["Action", "Comedy", "Drama"]
    assert fitted[0]["cardinality"] == 4
    assert fitted[0]["max_len"] == 2
    # Action 1, Comedy 2, Drama 3; 0 pads and stands for unknown values; longer rows are cut at max_len.
    assert encoded["genres"].tolist() == [[1, 2], [3, 0], [0, 0], [1, 0], [0, 0]]


def test_feature_columns_missing_column_names_it():
    specs = [spec(name="age", kind="continuous")]
    with pytest.raises(DataError, match="'age'"):
        feature_columns(pd.DataFrame({"gender": ["M"]}, index=pd.Index([1], name="user_id")), pd.Index([1]), specs, "user_id")


@pytest.mark.parametrize(
    "raw,needle",
    [
        ({"name": "colour", "kind": "weird"}, "kind"),
        ({"name": "colour", "kind": "continuous", "transforms": ["standardize"]}, "transforms"),
        ({"name": "colour", "kind": "continuous", "transforms": []}, "transforms"),
        ({"name": "colour", "kind": "continuous", "hash_buckets": 10}, "hash_buckets"),
        ({"name": "colour", "kind": "multi_categorical", "hash_buckets": 10}, "hash_buckets"),
        ({"name": "colour", "kind": "categorical", "hash_buckets": 0}, "hash_buckets"),
        ({"name": "colour", "kind": "continuous", "num_buckets": 1}, "num_buckets"),
        ({"name": "colour", "kind": "categorical", "bukets": 3}, "bukets"),
    ],
)
def test_invalid_specs_raise_data_error_naming_the_feature(raw, needle):
    with pytest.raises(DataError) as info:
        parse_feature_specs([raw], "user", "user_id")
    message = str(info.value)
    assert "'colour'" in message and needle in message


def test_duplicate_names_and_misplaced_id_raise():
    with pytest.raises(DataError, match="duplicate"):
        parse_feature_specs([{"name": "a", "kind": "categorical"}, {"name": "a", "kind": "continuous"}], "user", "user_id")
    with pytest.raises(DataError, match="'item_id'"):
        parse_feature_specs([{"name": "item_id", "kind": "id"}], "user", "user_id")


def test_valid_specs_parse():
    specs = parse_feature_specs(
        [
            {"name": "user_id", "kind": "id"},
            {"name": "age", "kind": "continuous", "transforms": ["normalize", "bucketize"], "num_buckets": 5, "log1p": True},
            {"name": "zip", "kind": "categorical", "hash_buckets": 100},
        ],
        "user",
        "user_id",
    )
    assert specs[1].transforms == ("normalize", "bucketize") and specs[1].num_buckets == 5
    assert specs[2].hash_buckets == 100


def test_history_feature_is_built_from_training_positives_and_hides_the_target():
    """The user's history holds their most recent training positives only, and a training
    batch masks the item being predicted out of it."""
    import torch

    from twotower.config import compose_config
    from twotower.wiring import build_datamodule

    cfg = compose_config(["experiment=history", "seed=0"])
    dm = build_datamodule(cfg, "positives")
    dm.setup()
    data = dm.data
    (fitted,) = [f for f in data.fitted["user"] if f["kind"] == "history"]
    assert fitted["max_len"] == 50
    history = data.user_features["history"]  # [num_users, 50] codes into fitted["vocab"]
    vocab = fitted["vocab"]
    train = data.splits["train"].positives()
    test = data.splits["test"]
    u = int(train.user[0])
    items_of_u = {str(data.item_ids[i]) for i in train.item[train.user == u].tolist()}
    held_out = {str(data.item_ids[i]) for i in test.item[test.user == u].tolist()}
    in_history = {vocab[c - 1] for c in history[u].tolist() if c > 0}
    assert in_history and in_history <= items_of_u and not (in_history & held_out)
    assert len(in_history) == min(50, len(items_of_u))

    batch = dm.train_batch(torch.arange(64), torch.Generator().manual_seed(0))
    target_codes = dm.history_codes["history"][batch.pos["index"]]
    assert not (batch.user["history"] == target_codes[:, None]).any()
    # ...while the same users' stored histories do contain most of those targets.
    stored = data.user_features["history"][batch.user["index"]]
    assert (stored == target_codes[:, None]).any(1).float().mean() > 0.3


def test_history_dropout_hides_a_share_of_the_history_in_training_only():
    from twotower.models.tower import Tower

    fitted = [{"name": "user_id", "kind": "id", "cardinality": 5}, {"name": "history", "kind": "history", "cardinality": 11}]
    tower = Tower(fitted, embedding_dim=4, mlp=[], normalize=False, history_dropout=0.25)
    codes = torch.randint(1, 11, (400, 50), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    dropped = tower._dropped("history", codes)
    # Binomial(20,000, 0.25): standard deviation 61 hidden codes; a bound of 5 of them.
    assert abs(int((dropped == 0).sum()) - 5000) < 300
    assert torch.equal(dropped[dropped != 0], codes[dropped != 0])  # the rest untouched
    assert tower._dropped("user_id", codes) is codes  # only history features
    tower.eval()
    assert tower._dropped("history", codes) is codes
    features = {"user_id": torch.tensor([0, 1]), "history": torch.tensor([[1, 2, 0], [3, 0, 0]])}
    expected_history = torch.stack([tower.bags["history"].weight[[1, 2]].mean(0), tower.bags["history"].weight[3]])
    torch.testing.assert_close(tower(features)[:, 4:], expected_history)  # eval: the mean of every history item
    with pytest.raises(ValueError, match=r"history_dropout=1.0: expected a share in \[0, 1\)"):
        Tower(fitted, history_dropout=1.0)


def test_embedding_dropout_zeroes_and_rescales_the_id_vector_in_training_only():
    from twotower.models.tower import Tower

    fitted = [{"name": "user_id", "kind": "id", "cardinality": 3}]
    tower = Tower(fitted, embedding_dim=5000, mlp=[], normalize=False, embedding_dropout=0.2)
    features = {"user_id": torch.tensor([1, 2])}
    rows = tower.table.weight[[1, 2]]
    torch.manual_seed(0)
    out = tower(features)
    kept = out != 0
    # Binomial(10,000, 0.8) kept: standard deviation 40; a bound of 5 of them.
    assert abs(int(kept.sum()) - 8000) < 200
    torch.testing.assert_close(out[kept], rows[kept] / 0.8)  # inverted dropout: kept entries scaled by 1 / (1 - p)
    tower.eval()
    torch.testing.assert_close(tower(features), rows)  # evaluation: the embedding itself
    with pytest.raises(ValueError, match=r"embedding_dropout=1.0: expected a share in \[0, 1\)"):
        Tower(fitted, embedding_dropout=1.0)


def test_embedding_dropout_reaches_both_towers_of_the_model():
    from twotower.models.two_tower import TwoTowerModel

    fitted = {"user": [{"name": "user_id", "kind": "id", "cardinality": 3}],
              "item": [{"name": "item_id", "kind": "id", "cardinality": 4}]}  # fmt: skip
    model = TwoTowerModel(fitted, embedding_dim=8, mlp=[], feature_set="ids", embedding_dropout=0.3)
    assert model.user_tower.embedding_dropout == model.item_tower.embedding_dropout == 0.3


@pytest.mark.parametrize("num_rows", [20, 1000])
def test_bag_mean_equals_embedding_bag_on_both_paths(num_rows):
    """The dense path (small vocabularies) and EmbeddingBag's own give the same means and
    gradients; padding (code 0) is left out, a row of padding gives zeros."""
    from torch import nn

    from twotower.models.tower import DENSE_BAG_MAX_ROWS, bag_mean

    assert (num_rows <= DENSE_BAG_MAX_ROWS) == (num_rows == 20)  # one case per path
    torch.manual_seed(0)
    bag = nn.EmbeddingBag(num_rows, 4, mode="mean", padding_idx=0)
    codes = torch.tensor([[3, 5, 0, 0], [7, 7, 2, 0], [0, 0, 0, 0]])
    out = bag_mean(bag, codes)
    w = bag.weight.detach()
    expected = torch.stack([(w[3] + w[5]) / 2, (2 * w[7] + w[2]) / 3, torch.zeros(4)])
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    grad = torch.zeros_like(w)
    grad[[3, 5]] += 0.5
    grad[7] += 2 / 3
    grad[2] += 1 / 3
    torch.testing.assert_close(bag.weight.grad, grad)


def test_single_valued_features_share_one_table_and_old_checkpoints_load():
    """Each single-valued feature looks up its own block of the shared table; a state dict
    with one table per feature (checkpoints from before the table was shared) loads into it."""
    from twotower.models.tower import Tower

    fitted = [
        {"name": "user_id", "kind": "id", "cardinality": 4},
        {"name": "gender", "kind": "categorical", "cardinality": 3},
        {"name": "age", "kind": "continuous", "mean": 30.0, "std": 10.0, "boundaries": [20.0], "cardinality": 3},
    ]
    tower = Tower(fitted, embedding_dim=2, mlp=[], normalize=False)
    assert tower.input_names == ["user_id", "gender", "age__bucket", "age"]
    assert tower.table.weight.shape == (4 + 3 + 3, 2)
    features = {"user_id": torch.tensor([3, 0]), "gender": torch.tensor([1, 2]),
                "age__bucket": torch.tensor([2, 0]), "age": torch.tensor([0.5, -1.0])}  # fmt: skip
    w = tower.table.weight.detach()
    expected = torch.stack([torch.cat([w[3], w[4 + 1], w[7 + 2], torch.tensor([0.5])]),
                            torch.cat([w[0], w[4 + 2], w[7 + 0], torch.tensor([-1.0])])])  # fmt: skip
    torch.testing.assert_close(tower(features), expected)
    old_format = {f"embeddings.{name}.weight": block.clone()
                  for name, block in zip(["user_id", "gender", "age__bucket"], w.split([4, 3, 3]))}  # fmt: skip
    fresh = Tower(fitted, embedding_dim=2, mlp=[], normalize=False)
    fresh.load_state_dict(old_format)
    torch.testing.assert_close(fresh(features), expected)


def test_packed_features_gather_the_same_rows_as_one_gather_per_feature():
    """Packing one-column features by dtype changes how rows are gathered, not what: each
    feature's gathered rows equal its own rows ``index``, multi-column features included."""
    from twotower.data.datamodule import PackedFeatures

    g = torch.Generator().manual_seed(0)
    features = {
        "user_id": torch.arange(10),
        "gender": torch.randint(0, 3, (10,), generator=g),
        "age": torch.rand(10, generator=g),
        "income": torch.rand(10, generator=g),
        "history": torch.randint(0, 7, (10, 4), generator=g),
    }
    packed = PackedFeatures(features)
    assert len(packed.matrices) == 2 and list(packed.others) == ["history"]  # int64, float32; one 2-D
    index = torch.tensor([7, 2, 2, 9])
    expected = {name: tensor[index] for name, tensor in features.items()} | {"index": index}
    got = packed.gather(index)
    assert set(got) == set(expected)
    for name, rows in expected.items():
        assert got[name].dtype == rows.dtype and torch.equal(got[name], rows), name
