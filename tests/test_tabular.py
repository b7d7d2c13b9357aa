"""The generic table loader: valid inputs load in the platform schema, malformed ones raise a DataError
naming the file, the column and the line."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from twotower.data.schema import DataError
from twotower.data.tabular import load_tables

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


def test_predefined_split(tmp_path):
    header = "user_id,item_id,timestamp\n"
    paths = {
        "train": write(tmp_path, "train.csv", header + "a,x,1600000000\nb,y,1600000001\n"),
        "val": write(tmp_path, "val.csv", header + "a,y,1600000002\n"),
        "test": write(tmp_path, "test.csv", header + "b,x,1600000003\n"),
    }
    data = load_tables(**paths)
    assert set(data.predefined_split) == {"train", "val", "test"}
    assert len(data.predefined_split["train"]) == 2 and len(data.predefined_split["test"]) == 1
    assert data.predefined_split["val"]["item_id"].tolist() == ["y"]
    assert data.interactions["timestamp"].tolist() == [1600000000, 1600000001, 1600000002, 1600000003]


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
