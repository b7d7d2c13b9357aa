"""Bad input is refused with a one-line message naming the thing and what was expected,
before any file is written (so no earlier result is overwritten), never accepted silently.

Config cases run through ``compose_config`` and ``train(cfg)``; data files through the
``data=custom`` tables loader; checkpoints and exports through ``twotower.export`` (one
case through the command line, in a subprocess). Every output goes under ``tmp_path``.

Covered elsewhere (not repeated here):
  - batch size not divisible by the devices: tests/test_distributed.py;
  - the tables loader, file by file (tests/test_tabular.py): empty file ``test_empty_file``,
    ``test_header_only``; truncated CSV ``test_truncated_csv_line_is_refused``, Parquet cut in
    half ``test_truncated_parquet_is_refused``; missing columns ``test_missing_column``,
    ``test_missing_mapped_column``; wrong types ``test_non_numeric_rating``,
    ``test_unparseable_timestamp``, ``test_non_numeric_timestamp_among_numbers``; absurd
    timestamps ``test_timestamp_before_epoch``, ``test_timestamp_in_future``; duplicate ids in a
    feature table ``test_duplicate_feature_key``; ids absent from the feature tables
    ``test_user_absent_from_feature_table``, ``test_absent_ids_are_counted``,
    ``test_item_absent_from_feature_table_in_split``;
  - an export folder missing a file and an unknown user id for ``retrieve``:
    tests/test_export.py ``test_incomplete_export_is_refused``, ``test_retrieve_refuses_unknown_user``.

Timestamps need not be sorted: the order of the rows in a file carries no meaning (splits
and histories order by timestamp), so "non-monotonic" timestamps are accepted and give the
same result as sorted ones; absurd ones (before 1970, more than a day in the future) are
refused. A user without training data is a cold user (evaluated, reported apart); a split
where *no* user has training data is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import twotower
from twotower.config import ConfigError, check_config, compose_config
from twotower.data.tabular import load_tables
from twotower.errors import CheckpointError, DataError
from twotower.export import export, export_main
from twotower.integrity import seal_checkpoint
from twotower.restore import load_run
from twotower.retrieval import ExportError, Retriever
from twotower.training import train
from tiny_data import HOUR, T0, custom, tiny_interactions, write_csv

TINY = ["debug=fast", "logger.wandb.mode=disabled", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]
EARLIER = {"test/recall@1": 0.125}  # what an earlier run left in the directory


def listing(folder: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and folder (``None``) under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def refused_before_writing(tmp_path: Path, overrides: list[str], error: type, parts: list[str]) -> str:
    """Run ``train`` in a directory holding an earlier ``results.json``; the config must be refused
    with ``error`` (message containing ``parts``) and the directory, like the data's, left as it was."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(EARLIER))
    data_dir = tmp_path / "data"
    before_run, before_data = listing(run), listing(data_dir) if data_dir.exists() else {}
    cfg = compose_config(overrides, output_dir=run)
    with pytest.raises(error) as info:
        train(cfg)
    message = str(info.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    assert "\n" not in message, message
    assert listing(run) == before_run  # results.json untouched; no config.yaml, features.json, csv/, checkpoints/
    assert (listing(data_dir) if data_dir.exists() else {}) == before_data
    return message


@pytest.fixture
def tiny_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "data", tiny_interactions())


# ----------------------------------------------------------------------------- config


def test_unknown_config_key_is_refused():
    with pytest.raises(ConfigError) as info:
        compose_config(["loss.temprature=0.1"])
    message = str(info.value)
    assert "loss.temprature" in message and "not in struct" in message and "\n" not in message


def test_unknown_config_option_is_refused_with_the_options():
    with pytest.raises(ConfigError, match=r"Could not find 'loss/listwse'.*Available options in 'loss': ccl, listwise, mse"):
        compose_config(["loss=listwse"])


@pytest.mark.parametrize(
    "overrides,error,parts",
    [
        (["eval.ks=[0,2]"], ConfigError, ["eval.ks=[0, 2]", "positive integers"]),
        (["eval.ks=[-5]"], ConfigError, ["eval.ks=[-5]", "positive integers"]),
        (["eval.ks=[1,2]", "eval.monitor=val/ndcg@20"], ConfigError, ["eval.monitor=val/ndcg@20", "expected K in [1, 2]"]),
        (["loss.temperature=0"], ConfigError, ["loss.temperature=0: expected > 0"]),
        (["loss.temperature=-0.1"], ConfigError, ["loss.temperature=-0.1: expected > 0"]),
        (["loss.walk_label_weight=1.0"], ConfigError, ["loss.walk_label_weight=1.0: expected a share in [0, 1)"]),
        (["loss.walk_label_weight=0.2", "sampler=hard"], ConfigError, ["loss.walk_label_weight", "use sampler=in_batch"]),
        (["loss.walk_label_weight=0.2", "sampler.logq=streaming"], ConfigError, ["loss.walk_label_weight", "logq counts or none"]),
        (["model.covisit_weight=-0.1"], ConfigError, ["model.covisit_weight=-0.1: expected a number >= 0"]),
        (["model.covisit_weight=0.2", "eval.backend=faiss"], ConfigError, ["model.covisit_weight", "expected eval.backend=torch"]),
        (["eval.covisit_search=[0,-1]"], ConfigError, ["eval.covisit_search=[0, -1]: expected a list of co-visitation weights >= 0"]),
        (["eval.covisit_search=[]"], ConfigError, ["eval.covisit_search=[]: expected a list"]),
        (["eval.covisit_search=[0.1]", "data.split.val_ratio=0", "eval.monitor=null", "eval.patience=null"], ConfigError,
         ["eval.covisit_search compares weights on validation", "expected data.split.val_ratio > 0"]),
        (["eval.covisit_search=[0.1]", "eval.monitor=val/coverage@2"], ConfigError,
         ["eval.covisit_search picks the weight with the best eval.monitor=val/coverage@2", "expected eval.monitor=val/<recall"]),
        (["eval.covisit_search=[0.1]", "model=popularity"], ConfigError, ["eval.covisit_search ranks the best checkpoint of a trained model"]),
        (["loss=pairwise_hinge", "loss.margin=-0.5"], ConfigError, ["loss.margin=-0.5: expected >= 0"]),
        (["loss=pairwise_logistic", "loss.sigma=0"], ConfigError, ["loss.sigma=0: expected > 0"]),
        (["sampler=hard", "sampler.lo=50", "sampler.hi=10"], ConfigError, ["sampler.lo=50, sampler.hi=10", "1 <= lo <= hi"]),
        (["data.batch_size=0"], ConfigError, ["data.batch_size=0: expected a positive integer"]),
        (["data.split.val_ratio=0"], ConfigError, ["data.split.val_ratio=0", "eval.monitor=val/ndcg@2"]),
        (["loss=mse", "sampler=in_batch"], ConfigError, ["the loss regresses observed ratings", "use sampler=none"]),
        (["loss=listwise", "sampler=none"], ConfigError, ["the loss needs negatives", "use sampler=in_batch"]),
        (["progress_bar_refresh_steps=0"], ConfigError, ["progress_bar_refresh_steps=0: expected a positive integer"]),
        (["eval.popularity_bands=[0.5,0.2]"], ConfigError, ["eval.popularity_bands=[0.5, 0.2]: expected the ends of the head and the torso"]),
    ],
    ids=["k_zero", "k_negative", "monitor_k_not_in_ks", "temperature_zero", "temperature_negative",
         "walk_share_one", "walk_with_hard", "walk_with_streaming", "covisit_negative", "covisit_with_faiss", "covisit_search_negative",
         "covisit_search_empty", "covisit_search_without_validation", "covisit_search_on_coverage",
         "covisit_search_untrained", "margin_negative",
         "sigma_zero", "hard_window_lo_gt_hi", "batch_size_zero", "no_validation_split", "mse_in_batch", "listwise_none",
         "progress_refresh_zero", "popularity_bands_reversed"],
)  # fmt: skip
def test_invalid_config_is_refused_before_any_output(tmp_path, tiny_csv, tiny_overrides, overrides, error, parts):
    refused_before_writing(tmp_path, tiny_overrides + custom(tiny_csv, *overrides), error, parts)


def test_check_config_accepts_the_shipped_defaults():
    check_config(compose_config([]))  # the checks refuse bad values only


def test_k_beyond_the_catalogue_is_refused_before_any_output(tmp_path, tiny_csv, tiny_overrides):
    # 8 items: recall@10 of a catalogue of 8 cannot be computed; today it fails at the first validation.
    refused_before_writing(tmp_path, tiny_overrides + custom(tiny_csv, "eval.ks=[2,10]"), ConfigError,
                           ["eval.ks=[2, 10]", "8 items"])  # fmt: skip


def test_check_eval_ks_names_the_catalogue_size():
    from twotower.config import check_eval_ks

    check_eval_ks([1, 8], 8)
    with pytest.raises(ConfigError, match=r"eval.ks=\[2, 10\]: K=10 exceeds the catalogue of 8 items; expected every K <= 8"):
        check_eval_ks([2, 10], 8)


# ----------------------------------------------------------------------------- data files


def test_empty_interactions_file_is_refused_before_any_output(tmp_path, tiny_overrides):
    empty = tmp_path / "data" / "interactions.csv"
    empty.parent.mkdir()
    empty.write_text("")
    refused_before_writing(tmp_path, tiny_overrides + custom(empty), DataError, [str(empty), "empty file"])


def test_truncated_csv_is_refused_before_any_output(tmp_path, tiny_overrides):
    # Cut mid-line two digits into the last timestamp: "1,6,16" alone would be a valid row of 1970.
    path = write_csv(tmp_path / "data", tiny_interactions())
    lines = path.read_text().splitlines()
    assert lines[-1] == f"1,6,{T0 + 39 * HOUR},5.0"
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len("1,6,16")])
    refused_before_writing(tmp_path, tiny_overrides + custom(path), DataError,
                           [str(path), f"line {len(lines)} has 3 field(s) but the header has 4", "truncated"])  # fmt: skip


def test_item_absent_from_feature_table_is_refused_before_any_output(tmp_path, tiny_csv, tiny_overrides):
    items = tmp_path / "data" / "items.csv"
    items.write_text("item_id,genre\n" + "".join(f"{i},g{i % 2}\n" for i in range(1, 7)))  # no items 7 and 8
    frame = tiny_interactions()
    absent = frame["item_id"].isin([7, 8])
    first_line = int(np.flatnonzero(absent.to_numpy())[0]) + 2
    refused_before_writing(tmp_path, tiny_overrides + custom(tiny_csv, f"data.source.items={items}"), DataError, [
        f"line {first_line}: item id {frame['item_id'][absent].iloc[0]} is not in the items table",
        f"{int(absent.sum())} rows have this problem", "2 distinct item ids are missing",
    ])  # fmt: skip


def test_continuous_feature_with_a_word_is_refused(tmp_path, tiny_csv, tiny_overrides):
    items = tmp_path / "data" / "items.csv"
    prices = {i: str(1.5 * i) for i in range(1, 9)} | {3: "cheap"}
    items.write_text("item_id,price\n" + "".join(f"{i},{p}\n" for i, p in prices.items()))
    features = "data.item_features=[{name: item_id, kind: id}, {name: price, kind: continuous}]"
    refused_before_writing(tmp_path, tiny_overrides + custom(tiny_csv, f"data.source.items={items}", features),
                           DataError, ["continuous feature 'price': item 3 has the value 'cheap'", "1 item has"])  # fmt: skip


def test_split_where_no_user_has_training_data_is_refused(tmp_path, tiny_overrides):
    # Every interaction at the same second: the temporal cut-off leaves nothing before it.
    path = write_csv(tmp_path / "data", tiny_interactions().assign(timestamp=T0))
    refused_before_writing(tmp_path, tiny_overrides + custom(path), DataError, ["left the train split empty"])


def test_training_split_without_a_positive_is_refused(tmp_path, tiny_overrides):
    # Ratings >= 4 are positives; every rating before the last hours is 1.
    frame = tiny_interactions()
    frame["rating"] = np.where(np.arange(len(frame)) >= 32, 5.0, 1.0)
    path = write_csv(tmp_path / "data", frame)
    refused_before_writing(tmp_path, tiny_overrides + custom(path, "data.positive_threshold=4"), DataError,
                           ["no user has a positive interaction in the training split (32 training interactions"])  # fmt: skip


def test_test_split_without_a_positive_is_refused(tmp_path, tiny_overrides):
    frame = tiny_interactions()
    frame["rating"] = np.where(np.arange(len(frame)) >= 36, 1.0, 5.0)
    path = write_csv(tmp_path / "data", frame)
    refused_before_writing(tmp_path, tiny_overrides + custom(path, "data.positive_threshold=4"), DataError,
                           ["the test split has no positive interaction (4 test interactions", "no user can be evaluated"])  # fmt: skip


@pytest.mark.slow
def test_users_without_training_data_are_cold_users(tmp_path, tiny_csv, tiny_overrides):
    """User 99 appears only in the last hours (test): evaluated, and counted apart as cold."""
    frame = tiny_interactions()
    test_rows = frame.iloc[36:]  # the temporal split's test part (see tiny_interactions)
    train_users = set(frame.iloc[:32]["user_id"])
    test_users = set(test_rows["user_id"])
    metrics = train(compose_config(tiny_overrides + custom(tiny_csv), output_dir=tmp_path / "run"))
    assert metrics["test/num_users"] == len(test_users) == 2
    assert metrics["test/num_cold_users"] == len(test_users - train_users) == 1
    assert metrics["test/num_warm_users"] == len(test_users & train_users) == 1
    assert "test/cold/recall@1" in metrics and "test/warm/recall@1" in metrics


def test_row_order_and_non_monotonic_timestamps_do_not_matter(tmp_path):
    """Rows in any order (timestamps going back and forth) load to the same table, and a
    per-user split takes each user's latest positive by timestamp, not by position."""
    from twotower.data.splits import leave_last_out_split

    frame = tiny_interactions()
    shuffled = frame.sample(frac=1.0, random_state=0)
    assert not shuffled["timestamp"].is_monotonic_increasing
    data = load_tables(interactions=str(write_csv(tmp_path, shuffled, "shuffled.csv")))
    pd.testing.assert_frame_equal(data.interactions.reset_index(drop=True), shuffled.reset_index(drop=True))
    test = leave_last_out_split(data.interactions, np.ones(len(shuffled), bool))["test"]
    latest = frame.loc[frame.groupby("user_id")["timestamp"].idxmax()]
    latest = latest[frame.groupby("user_id").size().reindex(latest["user_id"]).to_numpy() >= 3]  # users with 3+ positives
    assert sorted(zip(test["user_id"], test["item_id"])) == sorted(zip(latest["user_id"], latest["item_id"]))


# ----------------------------------------------------------------------------- checkpoints and exports


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A real tiny two-tower run on the tiny table (a few seconds)."""
    root = tmp_path_factory.mktemp("trained")
    run = root / "run"
    train(compose_config(TINY + custom(write_csv(root / "data", tiny_interactions())), output_dir=run))
    return run


def save_modified(trained: Path, tmp_path: Path, change) -> Path:
    """A copy of the run's best checkpoint with ``change(ckpt)`` applied, its SHA-256 record
    written again (as a tool that edits checkpoints on purpose would)."""
    ckpt = torch.load(trained / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    change(ckpt)
    path = tmp_path / "modified.ckpt"
    torch.save(seal_checkpoint(ckpt), path)
    return path


def test_the_trained_checkpoint_records_its_version(trained):
    ckpt = torch.load(trained / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt.get("twotower_version") == twotower.__version__
    load_run(trained)  # this version, and older ones, load


def test_missing_checkpoint_is_refused(tmp_path, capsys):
    assert export_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"no checkpoint at {tmp_path / 'checkpoints' / 'best.ckpt'}" in err
    assert not (tmp_path / "export").exists()


@pytest.mark.slow
def test_truncated_checkpoint_is_refused_from_the_command_line(trained, tmp_path):
    data = (trained / "checkpoints" / "best.ckpt").read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-m", "twotower.export", str(cut), "--out", str(tmp_path / "export")],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith(f"twotower-export: error: {cut}: cannot read the checkpoint"), done.stderr
    assert "truncated" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "export").exists()


def test_checkpoint_whose_weights_do_not_fit_its_config_is_refused(trained, tmp_path):
    # The config says 16-dimensional embeddings; the weights are 32-dimensional.
    path = save_modified(trained, tmp_path, lambda c: c["twotower_config"]["model"]["net"].update(embedding_dim=16))
    with pytest.raises(CheckpointError, match=r"its weights do not fit the model its config builds \(two_tower\): wrong shape"):
        export(path, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_checkpoint_missing_weights_is_refused(trained, tmp_path):
    def drop_one(ckpt):
        key = next(k for k in ckpt["state_dict"] if k.startswith("model.user_tower."))
        del ckpt["state_dict"][key]

    path = save_modified(trained, tmp_path, drop_one)
    with pytest.raises(CheckpointError, match=r"its weights do not fit the model its config builds \(two_tower\): missing user_tower\."):
        load_run(path)


def test_checkpoint_of_another_program_is_refused(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(2, 2)}, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="is not a twotower checkpoint"):
        load_run(path)


class _Touch:
    """Unpickling this would create a file: a checkpoint must never run code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_checkpoint_with_pickled_objects_is_refused_without_running_them(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"twotower_config": {}, "twotower_features": {}, "state_dict": {}, "payload": _Touch(marker)}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_run(path)
    assert not marker.exists()


def test_checkpoint_from_a_newer_twotower_is_refused(trained, tmp_path):
    major, minor, patch = (int(x) for x in twotower.__version__.split(".")[:3])
    for newer in (f"{major + 1}.0.0", f"{major}.{minor + 1}.0", f"{major}.{minor}.{patch + 1}"):
        path = save_modified(trained, tmp_path, lambda c: c.update(twotower_version=newer))
        with pytest.raises(CheckpointError) as info:
            export(path, tmp_path / "export")
        assert f"written by twotower {newer}, newer than this twotower {twotower.__version__}" in str(info.value)
        assert not (tmp_path / "export").exists()


def test_checkpoint_version_that_is_not_one_is_refused(trained, tmp_path):
    path = save_modified(trained, tmp_path, lambda c: c.update(twotower_version="latest"))
    with pytest.raises(CheckpointError, match="twotower_version='latest' is not a version; expected major.minor.patch"):
        load_run(path)


def test_checkpoint_prior_weights_that_are_not_two_numbers_are_refused(trained, tmp_path):
    for weights, expected in [(["x", 1.0], "model.popularity_prior.warm_weight='x': expected a number >= 0"),
                              ([1.0], r"twotower_prior_weights=\[1.0\]: expected \[warm weight, cold weight\]")]:  # fmt: skip
        path = save_modified(trained, tmp_path, lambda c, w=weights: c.update(twotower_prior_weights=w))
        with pytest.raises(CheckpointError, match=expected):
            load_run(path)


def test_checkpoint_from_an_older_twotower_loads(trained, tmp_path):
    path = save_modified(trained, tmp_path, lambda c: c.update(twotower_version="0.0.1"))
    assert load_run(path)[0] == path


@pytest.fixture(scope="module")
def exported(trained) -> Path:
    assert export_main([str(trained)]) == 0
    return trained / "export"


def test_truncated_export_file_is_refused(exported, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    data = (broken / "user_features.pt").read_bytes()
    (broken / "user_features.pt").write_bytes(data[: len(data) // 2])
    user = str(json.loads((broken / "user_ids.json").read_text())[0])
    assert Retriever(exported).recommend([user], k=2)  # the intact export serves this user
    with pytest.raises(ExportError, match=r"user_features\.pt: its SHA-256 does not match checksums.json"):
        Retriever(broken).recommend([user], k=2)
    rehash(broken)  # past the checksums (written again), reading the cut file itself fails
    with pytest.raises(ExportError, match=r"user_features\.pt: cannot read .*truncated"):
        Retriever(broken).recommend([user], k=2)


def test_export_file_that_is_not_json_is_refused(exported, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / "user_ids.json").write_text('["1", "2", ')
    with pytest.raises(ExportError, match=r"user_ids\.json: its SHA-256 does not match checksums.json"):
        Retriever(broken).recommend(["1"], k=2)
    rehash(broken)
    with pytest.raises(ExportError, match=r"user_ids\.json: not valid JSON"):
        Retriever(broken).recommend(["1"], k=2)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("popularity_prior.json", '{"warm_weight": 1, "cold_weight": -2, "half_life_days": 14}', r"popularity_prior\.json: not a popularity prior \(model\.popularity_prior\.cold_weight=-2: expected a number >= 0\)"),
        ("popularity_prior.json", '{"warm_weight": 1, "cold_weight": 2, "import": "os"}', r"popularity_prior\.json: not a popularity prior \(.*unexpected keyword"),
        ("popularity_prior.json", '[1, 2]', r"popularity_prior\.json: not a popularity prior \(not an object\)"),
        ("user_warm.npy", None, r"user_warm\.npy: 3 flags for \d+ user ids; expected one per user"),
    ],
    ids=["negative_weight", "unknown_key", "not_an_object", "short_warm_flags"],
)
def test_a_bad_popularity_prior_in_an_export_is_refused_by_name(exported, tmp_path, name, content, message):
    import numpy as np

    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    if content is None:
        np.save(broken / name, np.array([True, False, True]))
    else:
        (broken / name).write_text(content)
    rehash(broken)  # an edit made on purpose: past the checksums, the values themselves are checked
    with pytest.raises(ExportError, match=message):
        Retriever(broken)


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("covisit.json", '{"weight": -0.5}', r'covisit\.json: \{"weight": -0\.5\}; expected \{"weight": a number >= 0\}'),
        ("covisit.json", '{"weight": "0.3"}', r'covisit\.json: \{"weight": "0\.3"\}; expected \{"weight": a number >= 0\}'),
        ("covisit.json", '{"weight": 0.3, "module": "os"}', r"covisit\.json: .*; expected"),
        ("item_log_prior.npy", np.zeros(3, dtype=np.float32), r"item_log_prior\.npy: 3 values for \d+ item ids; expected one finite value per item"),
        ("seen_positive.npy", np.ones(3, dtype=bool), r"seen_positive\.npy: 3 flags for \d+ seen items; expected one per item"),
    ],
    ids=["negative", "text", "extra_key", "short_log_prior", "short_positive_flags"],
)
def test_a_bad_co_visitation_weight_or_log_prior_in_an_export_is_refused_by_name(exported, tmp_path, name, value, message):
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    if isinstance(value, str):
        (broken / name).write_text(value)
    else:
        np.save(broken / name, value)
    rehash(broken)
    with pytest.raises(ExportError, match=message):
        Retriever(broken)


def test_evaluate_through_a_missing_or_foreign_export_is_refused_in_one_line(trained, exported, tmp_path, capsys):
    from twotower.evaluate import evaluate_main

    assert evaluate_main([str(trained), "--export", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "export folder" in err[0] and "does not exist" in err[0]
    foreign = tmp_path / "foreign"
    shutil.copytree(exported, foreign)
    items = json.loads((foreign / "item_ids.json").read_text())
    (foreign / "item_ids.json").write_text(json.dumps([f"other-{i}" for i in items]))
    rehash(foreign)
    assert evaluate_main([str(trained), "--export", str(foreign)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not those of this run's data; expected an export of this run" in err[0]
    with pytest.raises(SystemExit) as stop:
        evaluate_main([str(trained), "--export", "--split", "val"])
    assert stop.value.code == 2 and "--export answers the test users" in capsys.readouterr().err


def rehash(export_dir: Path) -> None:
    """Write an export's checksums.json again for its current files (as an edit made on purpose would)."""
    from twotower.integrity import folder_digests

    (export_dir / "checksums.json").unlink()
    (export_dir / "checksums.json").write_text(json.dumps(folder_digests(export_dir)))


def test_new_user_with_a_word_for_a_number_is_refused(tmp_path):
    from twotower.retrieval import encode_new_users

    fitted = [{"name": "user_id", "kind": "id", "vocab": ["1"], "cardinality": 2},
              {"name": "age", "kind": "continuous", "transforms": ["normalize"], "log1p": False, "mean": 30.0, "std": 10.0}]  # fmt: skip
    spec = {"args": {}, "fitted": fitted}
    assert encode_new_users(spec, [{"age": "40"}])["age"].tolist() == [pytest.approx(1.0)]
    with pytest.raises(ValueError, match="new user feature age='old': expected a number"):
        encode_new_users(spec, [{"age": "old"}])

