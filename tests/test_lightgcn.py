"""The LightGCN text format (Gowalla, Yelp2018, Amazon-Book): the reader, the order-independent
check, the shipped Gowalla copy, the download path (a local HTTP server), the validation carved
from the training pairs, and data without timestamps."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import pandas as pd
import pytest

from test_download import LocalServer
from twotower.data.lightgcn import load_lightgcn, pairs_sha256, read_pairs
from twotower.data.prepare import prepare
from twotower.data.features import parse_feature_specs
from twotower.data.schema import InteractionData
from twotower.errors import DataError
from twotower.data.splits import split_interactions

GOWALLA = {"pairs": {"train": 810128, "test": 217242},
           "sha256": {"train": "2ddf160a77f38b0018bd6c77cf3dcb40dd98bb50518b17d599732301f8541e75",
                      "test": "9d1add1d4eac36738054fd06efc7fb70acccad526848d78c10fee33498517395"}}  # fmt: skip


def test_read_pairs_one_line_per_user():
    pairs = read_pairs("0 5 3\n\n2 7\n1\n", "x")
    assert list(zip(pairs["user_id"], pairs["item_id"])) == [(0, 5), (0, 3), (2, 7)]  # user 1 has no item
    assert pairs.dtypes.tolist() == [np.int64, np.int64]


@pytest.mark.parametrize("text,message", [
    ("0 1 2\n1 3 x\n", "x: line 2: 'x' is not a non-negative integer id"),
    ("0 1\n1 -3\n", "line 2: '-3' is not a non-negative integer id"),
    ("0 1.5\n", "line 1: '1.5' is not"),
    ("0 1 2 1\n", "line 1: item 1 is listed twice for user 0"),
    ("0 1\n1 2\n0 3\n", "line 3: user 0 was already listed on line 1"),
    ("\n\n", "no user line"),
])  # fmt: skip
def test_malformed_lines_are_refused_with_their_number(text, message):
    with pytest.raises(DataError, match=message.replace(".", r"\.")):
        read_pairs(text, "x")


def test_pairs_sha256_is_that_of_the_sorted_pairs_whatever_the_order():
    a = read_pairs("1 0\n0 2 1\n", "a")
    b = read_pairs("0 1 2\n1 0\n", "b")
    expected = hashlib.sha256(b"0 1\n0 2\n1 0\n").hexdigest()
    assert pairs_sha256(a) == pairs_sha256(b) == expected


def test_the_shipped_gowalla_copy_has_the_published_counts_and_pairs():
    data = load_lightgcn("gowalla", bundled="gowalla.zip", **GOWALLA)
    train, test = data.predefined_split["train"], data.predefined_split["test"]
    assert (len(train), len(test)) == (810128, 217242)
    assert data.interactions["user_id"].nunique() == 29858 and data.interactions["item_id"].nunique() == 40981
    assert train["user_id"].nunique() == test["user_id"].nunique() == 29858  # every user in both files
    assert not pd.merge(train, test, on=["user_id", "item_id"]).shape[0]  # no pair in both
    assert len(data.predefined_split["val"]) == 0 and not data.has_timestamps


def test_a_copy_with_other_pairs_is_refused(tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    (folder / "train.txt").write_text("0 1 2\n1 2\n")
    (folder / "test.txt").write_text("0 3\n1 1\n")
    load_lightgcn("tiny", path=str(folder), pairs={"train": 3, "test": 2})
    with pytest.raises(DataError, match=r"train.txt: 3 \(user, item\) pairs; expected 4"):
        load_lightgcn("tiny", path=str(folder), pairs={"train": 4})
    with pytest.raises(DataError, match="the SHA-256 of its sorted pairs is not 00"):
        load_lightgcn("tiny", path=str(folder), sha256={"test": "00"})


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "served" / "tiny"
    root.mkdir(parents=True)
    (root / "train.txt").write_text("0 1 2 3\n1 2 0\n2 3\n")
    (root / "test.txt").write_text("0 0\n1 3\n2 1\n")
    server = LocalServer(tmp_path / "served")
    yield server
    server.stop()


def test_the_download_path_fetches_verifies_and_caches(served, tmp_path, caplog):
    data_dir = tmp_path / "cache"
    expected = {"pairs": {"train": 6, "test": 3},
                "sha256": {"train": pairs_sha256(read_pairs("2 3\n1 0 2\n0 3 2 1\n", "t"))}}  # fmt: skip
    with caplog.at_level("INFO", logger="twotower"):
        data = load_lightgcn("tiny", data_dir=str(data_dir), url=served.url("tiny"), **expected)
    assert served.requests == 2 and len(data.predefined_split["train"]) == 6
    # test.txt had no pinned hash: the one to pin is logged (train.txt's was checked, not logged)
    test_hash = pairs_sha256(read_pairs("0 0\n1 3\n2 1\n", "t"))
    assert [r.getMessage().split("sha256.")[1] for r in caplog.records if "to pin it" in r.getMessage()] == [f"test={test_hash}"]
    assert sorted(p.name for p in (data_dir / "tiny").iterdir()) == ["test.txt", "train.txt"]
    served.stop()
    again = load_lightgcn("tiny", data_dir=str(data_dir), url=served.url("tiny"), **expected)  # the cache, no network
    pd.testing.assert_frame_equal(again.interactions, data.interactions)


def test_a_download_that_fails_its_check_is_discarded(served, tmp_path):
    data_dir = tmp_path / "cache"
    with pytest.raises(DataError, match=r"train.txt: 6 \(user, item\) pairs; expected 7"):
        load_lightgcn("tiny", data_dir=str(data_dir), url=served.url("tiny"), pairs={"train": 7})
    assert not list((data_dir / "tiny").iterdir())  # no train.txt, no .part
    with pytest.raises(DataError, match="could not download .*nothere/train.txt.*place train.txt at"):
        load_lightgcn("tiny", data_dir=str(data_dir), url=served.url("nothere"))


IDS = ([{"name": "user_id", "kind": "id"}], [{"name": "item_id", "kind": "id"}])


def test_validation_is_carved_from_each_users_training_pairs_seeded():
    # User 0 has 20 training pairs, user 1 has 9: floor(10%) -> 2 and 0 validation pairs.
    train = pd.DataFrame({"user_id": [0] * 20 + [1] * 9, "item_id": list(range(20)) + list(range(9))})
    test = pd.DataFrame({"user_id": [0, 1], "item_id": [25, 26]})
    split = {name: f.assign(timestamp=np.int64(0), rating=np.nan) for name, f in (("train", train), ("test", test))}
    split["val"] = split["train"].iloc[0:0]
    data = InteractionData("tiny", pd.concat([split["train"], split["test"]]), predefined_split=split, has_timestamps=False)
    users, items = (parse_feature_specs(s, side, f"{side}_id") for s, side in zip(IDS, ("user", "item")))
    one = prepare(data, users, items, None, "predefined", val_ratio=0.1, test_ratio=0.0, seed=1)
    again = prepare(data, users, items, None, "predefined", val_ratio=0.1, test_ratio=0.0, seed=1)
    other = prepare(data, users, items, None, "predefined", val_ratio=0.1, test_ratio=0.0, seed=2)
    val = one.splits["val"]
    assert len(val.user) == 2 and set(val.user.tolist()) == {0} and len(one.splits["train"].user) == 27
    assert val.item.tolist() == again.splits["val"].item.tolist() != other.splits["val"].item.tolist()
    assert len(one.splits["test"].user) == 2  # test as given
    whole = prepare(data, users, items, None, "predefined", val_ratio=0.0, test_ratio=0.0, seed=1)
    assert len(whole.splits["train"].user) == 29 and len(whole.eval_sets["val"].users) == 0
    # min_val_per_user=1 (the LightGCN data configs): user 1 gets one too, so validation has every test user.
    every = prepare(data, users, items, None, "predefined", val_ratio=0.1, test_ratio=0.0, seed=1, min_val_per_user=1)
    assert sorted(every.splits["val"].user.tolist()) == [0, 0, 1] and len(every.splits["train"].user) == 26
    assert set(every.eval_sets["val"].users.tolist()) == set(every.eval_sets["test"].users.tolist()) == {0, 1}
    whole = prepare(data, users, items, None, "predefined", val_ratio=0.0, test_ratio=0.0, seed=1, min_val_per_user=1)
    assert len(whole.splits["train"].user) == 29  # no carve asked for: nothing held out


def test_splits_by_time_need_timestamps():
    frame = pd.DataFrame({"user_id": [1] * 10, "item_id": range(10), "timestamp": 0, "rating": np.nan})
    for kind in ("temporal", "leave_last_out"):
        with pytest.raises(DataError, match=f"split.kind='{kind}' orders interactions by time, but the data has no timestamps"):
            split_interactions(frame, kind, np.ones(10, bool), has_timestamps=False)
    parts = split_interactions(frame, "random", np.ones(10, bool), 0.1, 0.2, has_timestamps=False)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [7, 1, 2]


@pytest.mark.slow
def test_a_lightgcn_run_on_all_training_pairs_tests_the_last_epoch(tmp_path):
    """The final protocol: no validation carve (val_ratio=0), eval.monitor=null, two epochs, then test."""
    from twotower.config import compose_config
    from twotower.training import train

    folder = tmp_path / "tiny"
    folder.mkdir()
    rng = np.random.default_rng(0)
    lines = {u: rng.choice(40, size=8, replace=False) for u in range(30)}
    (folder / "train.txt").write_text("".join(f"{u} {' '.join(map(str, items[:6]))}\n" for u, items in lines.items()))
    (folder / "test.txt").write_text("".join(f"{u} {' '.join(map(str, items[6:]))}\n" for u, items in lines.items()))
    overrides = ["data=gowalla", f"data.source.path={folder}", "data.source.pairs=null", "data.source.sha256=null",
                 "data.split.val_ratio=0", "eval.monitor=null", "eval.ks=[5,10]", "data.batch_size=32",
                 "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "logger.wandb.mode=disabled",
                 "trainer.accelerator=cpu"]  # fmt: skip
    metrics = train(compose_config(overrides, output_dir=tmp_path / "run"))
    assert metrics["test/num_users"] == 30 and 0 < metrics["test/recall@10"] <= 1
    assert not any(k.startswith(("best/", "val/")) for k in metrics)  # nothing was selected on validation
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["epoch"] == 1  # the tested checkpoint is the last epoch's (0-based)
