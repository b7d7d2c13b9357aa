"""The generic table loader: valid inputs load in the platform schema, malformed ones raise a DataError
naming the file, the column and the line."""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import pytest

from twotower.errors import DataError
from twotower.data import tabular
from twotower.data.tabular import MAX_ID_LENGTH, MAX_VALUE_LENGTH, load_tables

INTERACTIONS = """user_id,item_id,timestamp,rating
u1,i1,2021-01-01T00:00:00,4
u2,i2,2021-01-02,3.5
u1,i2,2021-01-03 10:00:00,5
"""
USERS = """user_id,age,country
u1,23,FR
u2,,DE
"""
ITEMS = """item_id,genres,price
i1,Action|Comedy,1.5
i2,Drama,2
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def raises(match_parts, **kwargs):
    with pytest.raises(DataError) as info:
        load_tables(**kwargs)
    message = str(info.value)
    assert "\n" not in message, f"a multi-line message: {message!r}"
    for part in match_parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


def test_csv_with_string_ids_and_feature_tables(tmp_path):
    data = load_tables(
        interactions=write(tmp_path, "inter.csv", INTERACTIONS),
        users=write(tmp_path, "users.csv", USERS),
        items=write(tmp_path, "items.csv", ITEMS),
    )
    inter = data.interactions
    assert list(inter.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert pd.api.types.is_string_dtype(inter["user_id"]) and pd.api.types.is_string_dtype(inter["item_id"])
    assert inter["timestamp"].dtype == np.int64 and inter["rating"].dtype == np.float64
    assert inter["user_id"].tolist() == ["u1", "u2", "u1"]
    assert inter["timestamp"].tolist() == [1609459200, 1609545600, 1609668000]
    assert inter["rating"].tolist() == [4.0, 3.5, 5.0]
    assert data.predefined_split is None
    assert data.users.index.name == "user_id" and data.users.index.tolist() == ["u1", "u2"]
    assert data.users.loc["u1", "age"] == 23 and np.isnan(data.users.loc["u2", "age"])
    assert data.users.loc["u2", "country"] == "DE"
    assert data.items.index.name == "item_id"
    assert data.items.loc["i1", "genres"] == "Action|Comedy"
    assert data.items["price"].tolist() == [1.5, 2.0]


def test_integer_ids_stay_int64_and_label_becomes_rating(tmp_path):
    text = "user_id\titem_id\ttimestamp\tlabel\n1\t10\t1600000000\t1\n2\t11\t1600000001.7\t0\n"
    path = write(tmp_path, "inter.tsv", text)
    items = write(tmp_path, "items.csv", "id,title\n10,a\n11,b\n")
    data = load_tables(interactions=path, items=items)
    assert data.interactions["user_id"].dtype == np.int64 and data.interactions["item_id"].dtype == np.int64
    assert data.items.index.dtype == np.int64 and data.items.index.tolist() == [10, 11]
    assert data.interactions["rating"].tolist() == [1.0, 0.0]
    assert data.interactions["timestamp"].tolist() == [1600000000, 1600000001]


def test_no_rating_gives_nan(tmp_path):
    data = load_tables(interactions=write(tmp_path, "i.csv", "user_id,item_id,timestamp\na,b,1600000000\n"))
    assert data.interactions["rating"].isna().all() and data.interactions["rating"].dtype == np.float64


def test_id_types_made_consistent_across_files(tmp_path):
    # Interactions have integral ids, the user table a string one: all user ids become strings.
    inter = write(tmp_path, "i.csv", "user_id,item_id,timestamp\n1,5,1600000000\n")
    users = write(tmp_path, "u.csv", "user_id,f\n1,x\nabc,y\n")
    data = load_tables(interactions=inter, users=users)
    assert data.interactions["user_id"].tolist() == ["1"]
    assert data.users.index.tolist() == ["1", "abc"]
    assert data.interactions["item_id"].dtype == np.int64


def test_parquet(tmp_path):
    path = tmp_path / "inter.parquet"
    pd.DataFrame(
        {"user_id": [1, 2], "item_id": ["x", "y"], "timestamp": pd.to_datetime(["2021-01-01", "2021-01-02"]),
         "rating": [1.0, 2.0]}
    ).to_parquet(path)  # fmt: skip
    users = tmp_path / "users.pq"
    pd.DataFrame({"user_id": [1, 2], "age": [30, 40]}).to_parquet(users)
    data = load_tables(interactions=str(path), users=str(users))
    assert data.interactions["user_id"].dtype == np.int64 and data.interactions["user_id"].tolist() == [1, 2]
    assert data.interactions["item_id"].tolist() == ["x", "y"]
    assert data.interactions["timestamp"].tolist() == [1609459200, 1609545600]
    assert data.users["age"].tolist() == [30, 40]


def test_parquet_feature_table_saved_with_index(tmp_path):
    # pandas stores an evenly spaced integer index as metadata only; it must still be the key.
    users = tmp_path / "users.parquet"
    pd.DataFrame({"user_id": [3, 5], "age": [30, 40]}).set_index("user_id").to_parquet(users)
    inter = write(tmp_path, "i.csv", "user_id,item_id,timestamp\n5,x,1600000000\n")
    data = load_tables(interactions=inter, users=str(users))
    assert data.users.index.tolist() == [3, 5] and data.users["age"].tolist() == [30, 40]


def split_files(tmp_path, header: str, **rows: str) -> dict:
    """``{"train": path, ...}``: one CSV per split, ``header`` then that split's ``rows``."""
    return {name: write(tmp_path, f"{name}.csv", header + text) for name, text in rows.items()}


def test_predefined_split(tmp_path):
    paths = split_files(tmp_path, "user_id,item_id,timestamp\n", train="a,x,1600000000\nb,y,1600000001\n",
                        val="a,y,1600000002\n", test="b,x,1600000003\n")  # fmt: skip
    data = load_tables(**paths)
    assert set(data.predefined_split) == {"train", "val", "test"}
    assert len(data.predefined_split["train"]) == 2 and len(data.predefined_split["test"]) == 1
    assert data.predefined_split["val"]["item_id"].tolist() == ["y"]
    assert data.interactions["timestamp"].tolist() == [1600000000, 1600000001, 1600000002, 1600000003]


def test_timestamps_are_optional_where_no_split_needs_them(tmp_path):
    paths = split_files(tmp_path, "user_id,item_id\n", train="a,x\nb,y\n", val="a,y\n", test="b,x\n")
    data = load_tables(**paths)
    assert not data.has_timestamps and data.interactions["timestamp"].tolist() == [0, 0, 0, 0]
    assert load_tables(interactions=paths["train"]).has_timestamps is False
    raises(["files disagree on a timestamp column", "train.csv: has none", "v2.csv: has,"],
           train=paths["train"], val=write(tmp_path, "v2.csv", "user_id,item_id,timestamp\na,y,1600000002\n"),
           test=paths["test"])  # fmt: skip
    raises(["missing required column(s) 'ts' (for timestamp)"], interactions=paths["train"], columns={"timestamp": "ts"})


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"interactions": "i.csv", "train": "t.csv"}, {"train": "t.csv", "val": "v.csv"}],
)
def test_bad_combination(kwargs):
    raises(["either `interactions`", "`train`, `val`"], **kwargs)


def test_column_mapping(tmp_path):
    path = write(tmp_path, "i.csv", "uid,sku,when,stars,extra\nu1,s1,1600000000,2,zz\n")
    users = write(tmp_path, "u.csv", "uid,f\nu1,x\n")
    columns = {"user_id": "uid", "item_id": "sku", "timestamp": "when", "rating": "stars"}
    data = load_tables(interactions=path, users=users, columns=columns)
    assert list(data.interactions.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert data.interactions.iloc[0].tolist() == ["u1", "s1", 1600000000, 2.0]
    assert data.users.index.name == "user_id" and data.users.index.tolist() == ["u1"]


def test_datetime_format(tmp_path):
    path = write(tmp_path, "i.csv", "user_id,item_id,timestamp\na,b,02/01/2021 00:00\n")
    data = load_tables(interactions=path, timestamp_format="%d/%m/%Y %H:%M")
    assert data.interactions["timestamp"].tolist() == [1609545600]


# ---- malformed inputs ----


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.csv")
    raises([path, "not found"], interactions=path)


def test_missing_feature_file(tmp_path):
    path = str(tmp_path / "users.csv")
    raises([path, "not found"], interactions=write(tmp_path, "i.csv", INTERACTIONS), users=path)


def test_bad_extension(tmp_path):
    path = write(tmp_path, "i.json", "{}")
    raises([path, ".csv", ".parquet"], interactions=path)


def test_empty_file(tmp_path):
    path = write(tmp_path, "i.csv", "")
    raises([path, "empty"], interactions=path)


def test_header_only(tmp_path):
    path = write(tmp_path, "i.csv", "user_id,item_id,timestamp\n")
    raises([path, "no data rows"], interactions=path)


def test_missing_column(tmp_path):
    path = write(tmp_path, "i.csv", "user_id,item,timestamp\na,b,1600000000\n")
    raises([path, "'item_id'", "found ['user_id', 'item', 'timestamp']"], interactions=path)


def test_missing_mapped_column(tmp_path):
    path = write(tmp_path, "i.csv", "user_id,item_id,timestamp\na,b,1600000000\n")
    raises([path, "'stars' (for rating)"], interactions=path, columns={"rating": "stars"})


def test_non_numeric_rating(tmp_path):
    text = "user_id,item_id,timestamp,rating\na,b,1600000000,4\na,c,1600000000,good\na,d,1,bad\n"
    path = write(tmp_path, "i.csv", text)
    message = raises([path, "column 'rating'", "line 3", "'good'", "2 rows"], interactions=path)
    assert "a number" in message


def test_bad_label(tmp_path):
    path = write(tmp_path, "i.csv", "user_id,item_id,timestamp,click\na,b,1600000000,1\na,c,1600000000,2\n")
    raises([path, "column 'click'", "line 3", "0 or 1"], interactions=path, columns={"label": "click"})


def test_unparseable_timestamp(tmp_path):
    path = write(tmp_path, "i.csv", "user_id,item_id,timestamp\na,b,2021-01-01\na,c,2021-01-02\na,d,yesterday\n")
    raises([path, "column 'timestamp'", "line 4", "'yesterday'", "ISO-8601"], interactions=path)


def test_timestamp_format_mismatch(tmp_path):
    path = write(tmp_path, "i.csv", "user_id,item_id,ts\na,b,02/01/2021\na,c,2021-01-02\n")
    raises([path, "column 'ts'", "line 3", "%d/%m/%Y"], interactions=path, timestamp_format="%d/%m/%Y",
           columns={"timestamp": "ts"})  # fmt: skip


def test_timestamp_before_epoch(tmp_path):
    path = write(tmp_path, "i.csv", "user_id,item_id,timestamp\na,b,1600000000\na,c,-5\n")
    raises([path, "column 'timestamp'", "line 3", "before 1970"], interactions=path)


def test_timestamp_in_future(tmp_path):
    future = int(time.time()) * 1000  # milliseconds by mistake
    path = write(tmp_path, "i.csv", f"user_id,item_id,timestamp\na,b,{future}\na,c,{future}\n")
    raises([path, "column 'timestamp'", "line 2", "future", "2 rows"], interactions=path)


def test_missing_id(tmp_path):
    path = write(tmp_path, "i.csv", "user_id,item_id,timestamp\na,b,1600000000\na,,1600000000\n")
    raises([path, "column 'item_id'", "line 3", "missing item id"], interactions=path)


def test_missing_id_parquet(tmp_path):
    path = tmp_path / "i.parquet"
    frame = pd.DataFrame({"user_id": ["a", None], "item_id": ["b", "c"], "timestamp": [1600000000, 1600000000]})
    frame.to_parquet(path)
    raises([str(path), "column 'user_id'", "row 2", "missing user id"], interactions=str(path))


def test_missing_feature_key(tmp_path):
    users = write(tmp_path, "u.csv", "user_id,f\nu1,x\n ,y\n")
    raises([users, "column 'user_id'", "line 3", "missing user id"],
           interactions=write(tmp_path, "i.csv", INTERACTIONS), users=users)  # fmt: skip


def test_duplicate_feature_key(tmp_path):
    items = write(tmp_path, "items.csv", "sku,f\ni1,a\ni2,b\ni1,c\n")
    inter = write(tmp_path, "i.csv", INTERACTIONS)
    raises([items, "column 'sku'", "'i1'", "lines 2, 4", "2 rows"], interactions=inter, items=items)


def test_user_absent_from_feature_table(tmp_path):
    inter = write(tmp_path, "i.csv", INTERACTIONS)
    users = write(tmp_path, "users.csv", "user_id,age\nu1,3\n")
    raises([inter, users, "column 'user_id'", "line 3", "'u2'", "1 row has"], interactions=inter, users=users)


def test_item_absent_from_feature_table_in_split(tmp_path):
    header = "user_id,item_id,timestamp\n"
    test = write(tmp_path, "test.csv", header + "a,x,1600000003\na,zz,1600000004\n")
    items = write(tmp_path, "items.csv", "item_id\nx\n")
    raises([test, items, "column 'item_id'", "line 3", "'zz'"],
           train=write(tmp_path, "train.csv", header + "a,x,1600000000\n"),
           val=write(tmp_path, "val.csv", header + "a,x,1600000001\n"), test=test, items=items)  # fmt: skip


def test_blank_lines_keep_line_numbers(tmp_path):
    path = write(tmp_path, "i.csv", "user_id,item_id,timestamp\na,b,1600000000\n\na,c,oops\n")
    raises([path, "line 4"], interactions=path)


def test_truncated_csv_line_is_refused(tmp_path):
    # A copy cut short: the last line ends two digits into its timestamp ("a,d,16" would be 1970).
    text = "user_id,item_id,timestamp,rating\na,b,1600000000,4\na,c,1600000001,5\na,d,16"
    path = write(tmp_path, "i.csv", text)
    raises([path, "line 4 has 3 field(s) but the header has 4", "truncated", "1 line has"], interactions=path)


def test_short_lines_in_the_middle_are_counted(tmp_path):
    text = 'user_id,item_id,timestamp,genre\na,b,1600000000,"x,y"\na,c\na,d,1600000002,z\na,e,1600000003\n'
    path = write(tmp_path, "i.csv", text)
    raises([path, "line 3 has 2 field(s)", "2 lines have this problem"], interactions=path)


def test_empty_last_field_is_not_a_short_line(tmp_path):
    text = 'user_id,item_id,timestamp,rating\na,b,1600000000,\na,"c,1",1600000001,\n'
    data = load_tables(interactions=write(tmp_path, "i.csv", text))
    assert data.interactions["item_id"].tolist() == ["b", "c,1"] and data.interactions["rating"].isna().all()


def test_truncated_parquet_is_refused(tmp_path):
    whole = tmp_path / "whole.parquet"
    pd.DataFrame({"user_id": range(50), "item_id": range(50), "timestamp": range(1600000000, 1600000050)}).to_parquet(whole)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert len(load_tables(interactions=str(whole)).interactions) == 50
    raises([str(cut), "cannot read as Parquet", "expected a Parquet file"], interactions=str(cut))


def test_non_numeric_timestamp_among_numbers(tmp_path):
    path = write(tmp_path, "i.csv", "user_id,item_id,timestamp\na,b,1600000000\na,c,16000O0000\n")
    raises([path, "column 'timestamp'", "line 3", "'16000O0000'", "seconds since the epoch"], interactions=path)


def test_absent_ids_are_counted(tmp_path):
    inter = write(tmp_path, "i.csv", "user_id,item_id,timestamp\nu1,a,1600000000\nu2,a,1600000000\nu3,b,1600000000\nu2,b,1600000000\n")
    users = write(tmp_path, "users.csv", "user_id,age\nu1,3\n")
    raises([inter, "line 3", "'u2'", "3 rows have this problem", "2 distinct user ids are missing"], interactions=inter, users=users)


# ---- ids kept exact, odd rows counted, absurd values refused ----


def test_uint64_ids_beyond_int64_are_kept_exactly(tmp_path):
    # 5 and 2**63 + 5 differ only in bit 63; read as int64, the big ids would wrap to negative numbers.
    big = [5, 2**63 + 5, 2**64 - 1]
    path = tmp_path / "i.parquet"
    pd.DataFrame({"user_id": np.array([1, 1, 2], dtype=np.uint64), "item_id": np.array(big, dtype=np.uint64),
                  "timestamp": [1600000000, 1600000001, 1600000002]}).to_parquet(path)  # fmt: skip
    items = write(tmp_path, "items.csv", "item_id,f\n" + "".join(f"{i},x\n" for i in reversed(big)))
    data = load_tables(interactions=str(path), items=items)
    assert data.interactions["item_id"].tolist() == [str(i) for i in big]  # exact decimal strings, all distinct
    assert data.items.index.tolist() == [str(i) for i in reversed(big)]  # the feature table joins on them
    assert data.interactions["user_id"].dtype == np.int64 and data.interactions["user_id"].tolist() == [1, 1, 2]


def test_csv_line_with_extra_fields_is_refused(tmp_path):
    # A stray trailing separator on the first data line (pandas would shift every column by one) and an
    # unquoted separator further down; a quoted one is a single field.
    text = 'user_id,item_id,timestamp,rating\na,b,1600000000,4,\na,"c,1",1600000001,5\na,d,1600000002,5,5\n'
    path = write(tmp_path, "i.csv", text)
    message = raises([path, "line 2 has 5 field(s) but the header has 4", "a stray separator?", "2 lines have"],
                     interactions=path)  # fmt: skip
    assert message.startswith(f"{path}: line 2 ")
    items = write(tmp_path, "items.tsv", "item_id\tgenre\nb\tx\nc\ty\tz\n")
    raises([items, "line 3 has 3 field(s) but the header has 2", "1 line has"],
           interactions=write(tmp_path, "ok.csv", "user_id,item_id,timestamp\na,b,1\n"), items=items)  # fmt: skip


def test_field_counts_across_read_blocks(tmp_path, monkeypatch):
    # Blocks far smaller than a line: line numbers still count every line, and a good file still loads.
    monkeypatch.setattr(tabular, "_BLOCK", 7)
    lines = [f"u{n},i{n},{1600000000 + n}" for n in range(30)]
    good = write(tmp_path, "good.csv", "user_id,item_id,timestamp\n" + "\n".join(lines))  # no final newline
    assert load_tables(interactions=good).interactions["user_id"].tolist() == [f"u{n}" for n in range(30)]
    lines[20] += ",x"
    bad = write(tmp_path, "bad.csv", "user_id,item_id,timestamp\n" + "\n".join(lines) + "\n")
    raises([bad, "line 22 has 4 field(s)", "1 line has"], interactions=bad)


def test_spaces_around_ids_are_ignored_with_a_warning(tmp_path, caplog):
    text = "user_id,item_id,timestamp\n 12,a ,1600000000\n12,a,1600000001\n12 ,b,1600000002\n"
    inter = write(tmp_path, "i.csv", text)
    users = write(tmp_path, "u.csv", "user_id,age\n12 ,30\n")
    with caplog.at_level(logging.WARNING, logger="twotower"):
        data = load_tables(interactions=inter, users=users)
    assert data.interactions["user_id"].tolist() == [12, 12, 12]
    assert data.interactions["item_id"].tolist() == ["a", "a", "b"]
    assert data.users.index.tolist() == [12] and data.users["age"].tolist() == [30]  # the join still works
    assert (
        f"{inter}: column 'user_id': 2 row(s) (2 distinct value(s)) have spaces around the user id, "
        "the first on line 2 (' 12')"
    ) in caplog.text
    assert f"{inter}: column 'item_id': 1 row(s) (1 distinct value(s))" in caplog.text
    assert f"{users}: column 'user_id': 1 row(s)" in caplog.text


def test_exact_duplicate_rows_are_kept_and_counted(tmp_path, caplog):
    rows = ["a,x,1600000000,4", "b,x,1600000000,4", "a,x,1600000000,4", "a,x,1600000000,5", "a,x,1600000000,4"]
    path = write(tmp_path, "i.csv", "user_id,item_id,timestamp,rating\n" + "\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="twotower"):
        data = load_tables(interactions=path)
    assert len(data.interactions) == len(rows)  # kept
    repeats = len(rows) - len(set(rows))
    assert f"{path}: {repeats} row(s) repeat an earlier row exactly" in caplog.text
    assert "the first on line 4" in caplog.text


def test_split_users_and_items_unseen_in_train_are_counted(tmp_path, caplog):
    header = "user_id,item_id,timestamp\n"
    train_pairs = [(f"u{n}", f"i{n % 5}") for n in range(10)]
    test_pairs = [(f"u{n}", f"i{n % 4}") for n in range(8)] + [("new1", "i0"), ("new2", "j1"), ("new2", "i1")]
    val_pairs = [("u0", "i1")]
    paths = {role: write(tmp_path, f"{role}.csv", header + "".join(f"{u},{i},1600000000\n" for u, i in pairs))
             for role, pairs in (("train", train_pairs), ("val", val_pairs), ("test", test_pairs))}  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="twotower"):
        load_tables(**paths)
    seen_users, seen_items = {u for u, _ in train_pairs}, {i for _, i in train_pairs}
    users, items = {u for u, _ in test_pairs}, {i for _, i in test_pairs}
    assert (
        f"{paths['test']}: {len(users - seen_users)} of {len(users)} users and {len(items - seen_items)} of "
        f"{len(items)} items never appear in {paths['train']}; "
        "users without training data are evaluated as cold users"
    ) in caplog.text
    assert "items without training data stay in the catalogue" in caplog.text
    assert paths["val"] not in caplog.text  # every validation user and item has training data


def test_overlong_id_is_refused(tmp_path):
    ok, long = "u" * MAX_ID_LENGTH, "u" * (1 << 20)
    header = "user_id,item_id,timestamp\n"
    path = write(tmp_path, "i.csv", f"{header}{ok},a,1600000000\nb,{long},1600000000\n")
    expected = [path, "column 'item_id'", "line 3", "is too long", f"at most {MAX_ID_LENGTH} characters", "1 row has"]
    message = raises(expected, interactions=path)
    assert len(message) < 3 * MAX_ID_LENGTH  # the value is cut, not copied
    parquet = tmp_path / "i.parquet"
    pd.DataFrame({"user_id": [ok, long], "item_id": ["a", "b"], "timestamp": [1600000000] * 2}).to_parquet(parquet)
    raises([str(parquet), "column 'user_id'", "row 2", "is too long"], interactions=str(parquet))
    ok_path = write(tmp_path, "ok.csv", f"{header}{ok},a,1600000000\n")
    assert load_tables(interactions=ok_path).interactions["user_id"].tolist() == [ok]  # at the limit: kept whole
    items = write(tmp_path, "items.csv", f"sku,f\na,x\n{long},y\n")
    raises([items, "column 'sku'", "line 3", "is too long"], interactions=ok_path, items=items)


def test_overlong_feature_value_is_refused(tmp_path):
    inter = write(tmp_path, "i.csv", "user_id,item_id,timestamp\na,x,1600000000\na,y,1600000000\n")
    at_limit, beyond = "g" * MAX_VALUE_LENGTH, "g" * (MAX_VALUE_LENGTH + 1)
    items = write(tmp_path, "items.csv", f"item_id,genre\nx,{at_limit}\ny,{beyond}\n")
    raises([items, "column 'genre'", "line 3", f"at most {MAX_VALUE_LENGTH} characters", "1 row has"],
           interactions=inter, items=items)  # fmt: skip
