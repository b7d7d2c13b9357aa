"""Bring-your-own-data loader: interaction and feature tables from CSV/TSV or Parquet.

:func:`load_tables` reads either one interaction file (split later by the
platform) or a ready-made train/val/test split, plus optional user and item
feature tables, checks everything, and returns an :class:`InteractionData`.

Every problem is reported as a :class:`DataError` before anything is returned;
the message names the file, the column, the first offending place (``line N``
for CSV/TSV, counting the header as line 1; ``row N`` for Parquet, 1-based),
what was expected and how many rows share the problem. Line numbers assume one
record per physical line (no line breaks inside quoted fields). Lines that are
entirely empty are skipped; a line with fewer fields than the header (the last line
of a truncated file) or more (a separator inside an unquoted value) is refused, though
a file cut inside its very last field cannot be told from a complete one.

Rows may come in any order: timestamps need not increase down the file (splits and
histories order by timestamp), but each must lie between 1970-01-01 and a day from now.

Ids are kept exactly: an integer id beyond int64 (a uint64 above 2**63-1) becomes its
decimal string rather than wrapping around. Spaces around an id are not part of it
(``" 12"`` and ``"12"`` are one id, in interaction and feature tables alike), and a
warning counts the ids so trimmed. An id longer than ``MAX_ID_LENGTH`` characters, or a
feature value longer than ``MAX_VALUE_LENGTH``, is refused. Rows repeated exactly
(same user, item, timestamp and rating) are kept, with a warning that counts them:
repeat interactions are real data in many logs (check-ins, re-purchases), and only the
user can tell them from an export that wrote rows twice. In a ready-made split, val/test
users and items that never appear in the training file are kept, with a warning.

Why one module of about 600 lines: it is where a user's files arrive, and every check
reports through the same reading state (the file, its format, the line or row numbers of
:class:`_Table`); split by column kind, each part would pass that state around.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from twotower.data.schema import InteractionData
from twotower.errors import DataError

_KEYS = ("user_id", "item_id", "timestamp", "rating", "label")
_REQUIRED = ("user_id", "item_id")
_CSV_SEPARATORS = {".csv": ",", ".tsv": "\t"}
_PARQUET_SUFFIXES = (".parquet", ".pq")
# An integer written the canonical way: no sign but '-', no leading zeros ("007" stays a string id).
_CANONICAL_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
# A value with a leading zero ("02139") looks like a code: a feature column holding one stays text.
_LEADING_ZERO = re.compile(r"[+-]?0[0-9]")
_MAX_LISTED = 10
_DAY = 86_400
# Ids are copied into every vocabulary, checkpoint and export: a UUID has 36 characters, a SHA-256
# 64, so a longer "id" is a misparsed field (a whole line, a text blob), not a key worth keeping.
MAX_ID_LENGTH = 256
# Generous for a title or a few thousand |-joined tags; a bigger cell is a blob or a misparse.
MAX_VALUE_LENGTH = 65_536
_BLOCK = 1 << 24  # bytes read at a time when counting fields

log = logging.getLogger("twotower")


@dataclass
class _Table:
    """One file's selected columns, with the place (line or row) each row came from."""

    path: str
    frame: pd.DataFrame
    places: np.ndarray  # 1-based line (CSV, header = line 1) or row (Parquet) of each row
    unit: str  # "line" | "row"
    text: bool  # CSV: every value is the raw string, "" where empty


def _format_of(path: str) -> str | None:
    lower = path.lower()
    for suffix, sep in _CSV_SEPARATORS.items():
        if lower.endswith(suffix):
            return sep
    if lower.endswith(_PARQUET_SUFFIXES):
        return None
    raise DataError(
        f"{path}: unsupported file extension; expected .csv, .tsv (tab-separated), .parquet or .pq"
    )


def _header(path: str, role: str) -> list[str]:
    """The file's column names; raises if the file is missing, unreadable or empty."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found (the {role} file)")
    sep = _format_of(path)
    if sep is None:
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(path)
        except Exception as error:  # pyarrow raises several types for a broken file
            raise DataError(f"{path}: cannot read as Parquet ({error}); expected a Parquet file") from error
        # A named pandas index (e.g. saved with set_index("user_id")) counts as a column.
        index = [i for i in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(i, dict)]
        names = [i["name"] for i in index if i.get("name") is not None]
        return names + [n for n in schema.names if not n.startswith("__index_level_") and n not in names]
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: empty file; expected a header line and at least one data row")
    try:
        return [str(c) for c in pd.read_csv(path, sep=sep, nrows=0, dtype=str).columns]
    except pd.errors.EmptyDataError as error:
        raise DataError(f"{path}: empty file; expected a header line and at least one data row") from error
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot parse the header ({error}); expected CSV with a header line") from error


def _read(path: str, usecols: list[str]) -> _Table:
    sep = _format_of(path)
    if sep is None:
        import pyarrow.parquet as pq

        try:
            stored = set(pq.read_schema(path).names)
            frame = pq.read_table(path, columns=[c for c in usecols if c in stored], use_pandas_metadata=True)
            frame = frame.to_pandas()
        except Exception as error:
            raise DataError(f"{path}: cannot read as Parquet ({error}); expected a Parquet file") from error
        if any(n is not None for n in frame.index.names):
            frame = frame.reset_index()
        frame = frame[usecols]
        places = np.arange(1, len(frame) + 1)
        table = _Table(path, frame.reset_index(drop=True), places, "row", text=False)
    else:
        try:
            header = pd.read_csv(path, sep=sep, nrows=0, dtype=str).columns
            # Before pandas reads the lines: it pads a short one, drops the extra fields of a long one.
            _check_field_counts(path, sep, len(header))
            frame = pd.read_csv(
                path, sep=sep, usecols=usecols, dtype=str, keep_default_na=False, skip_blank_lines=False
            )
        except DataError:
            raise  # a ValueError too, but already worded
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
            raise DataError(f"{path}: cannot parse ({error}); expected one record per line") from error
        places = np.arange(2, len(frame) + 2)
        blank = (frame == "").all(axis=1).to_numpy() if len(frame.columns) else np.zeros(len(frame), bool)
        table = _Table(path, frame[~blank].reset_index(drop=True), places[~blank], "line", text=True)
    if len(table.frame) == 0:
        raise DataError(f"{path}: empty file (no data rows); expected at least one row after the header")
    return table


def _check_field_counts(path: str, sep: str, width: int) -> None:
    """Raise if a non-empty data line has fewer fields than the header's ``width`` (a line cut
    short, as the last line of a truncated file is) or more (an unquoted separator inside a value,
    or a stray one at the end of the line).
    pandas cannot tell: it pads a short line, and drops a long line's extra fields (or, on the
    first data line, shifts every column). Counted on the raw bytes, a block at a time."""
    number, rest, first, count = 1, b"", None, 0  # number: the line the next block starts on
    with open(path, "rb") as f:
        while True:
            block = f.read(_BLOCK)
            data = rest + block
            cut = data.rfind(b"\n") + 1 if block else len(data)
            lines, rest = data[:cut], data[cut:]
            if lines:
                lines = lines if lines.endswith(b"\n") else lines + b"\n"
                numbers, fields = _bad_field_counts(lines, number, sep, width)
                count += len(numbers)
                if first is None and len(numbers):
                    first = (int(numbers[0]), int(fields[0]))
                number += lines.count(b"\n")
            if not block:
                break
    if first:
        line, fields = first
        hint = "is the file truncated, or a line cut short?" if fields < width else "a stray separator?"
        many = "1 line has this problem" if count == 1 else f"{count} lines have this problem, the first shown"
        raise DataError(
            f"{path}: line {line} has {fields} field(s) but the header has {width}; expected every line to have "
            f"{width} fields ({hint}) ({many})"
        )


def _bad_field_counts(lines: bytes, number: int, sep: str, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The line numbers and field counts of the data lines in ``lines`` (whole lines, the first
    numbered ``number``) whose field count is not ``width``. Fields are counted as separators + 1;
    only a line with a quote (which may hold a separator) is parsed as CSV."""
    raw = np.frombuffer(lines, np.uint8)
    ends = np.flatnonzero(raw == ord("\n"))
    starts = np.concatenate([[0], ends[:-1] + 1])

    def per_line(char: str) -> np.ndarray:
        at = np.flatnonzero(raw == ord(char))
        return np.searchsorted(at, ends) - np.searchsorted(at, starts)

    fields, quoted = per_line(sep) + 1, per_line('"') > 0
    length = ends - starts
    blank = (length == 0) | ((length == 1) & (raw[starts] == ord("\r")))
    numbers = np.arange(number, number + len(ends))
    for i in np.flatnonzero(quoted & ~blank):
        text = lines[starts[i] : ends[i]].decode("utf-8", errors="replace").rstrip("\r")
        fields[i] = len(next(csv.reader([text], delimiter=sep), []))
    bad = (fields != width) & ~blank & (numbers > 1)  # line 1 is the header
    return numbers[bad], fields[bad]


def _show(value) -> str:
    """repr of a value, as a plain Python scalar ('u1', 7, not np.int64(7)); an overlong string is cut."""
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, str) and len(value) > MAX_ID_LENGTH:
        return repr(value[:MAX_ID_LENGTH]) + "..."
    return repr(value)


def _count(n: int) -> str:
    return "1 row has this problem" if n == 1 else f"{n} rows have this problem, the first shown"


def _fail(table: _Table, column: str, mask: np.ndarray, problem: str, expected: str) -> None:
    """Raise for the first row in ``mask``; ``problem`` may use ``{value}``."""
    hits = np.flatnonzero(mask)
    if len(hits) == 0:
        return
    first = hits[0]
    value = table.frame[column].iloc[first]
    shown = "" if value is None or (isinstance(value, float) and np.isnan(value)) else value
    raise DataError(
        f"{table.path}: column '{column}', {table.unit} {table.places[first]}: "
        f"{problem.format(value=_show(shown))}; expected {expected} ({_count(len(hits))})"
    )


def _text(series: pd.Series, strip: bool = True) -> pd.Series:
    """Values as (stripped) strings, "" where missing."""
    text = series.astype(object).where(series.notna(), "").astype(str)
    return text.str.strip() if strip else text


def _check_lengths(table: _Table, column: str, text: pd.Series, what: str, limit: int) -> None:
    too_long = (text.str.len() > limit).to_numpy()
    _fail(table, column, too_long, f"{what} {{value}} is too long", f"at most {limit} characters")


def _ids(table: _Table, column: str, what: str) -> pd.Series:
    """An id column as int64 when integral (and within int64), else as exact strings, stripped;
    a missing or overlong id raises."""
    s = table.frame[column]
    expected = f"a non-empty {what} (an integer or a string)"
    if pd.api.types.is_integer_dtype(s.dtype):
        _fail(table, column, s.isna().to_numpy(), f"missing {what}", expected)
        # A uint64 above int64's range would wrap to a negative number: keep its exact decimal string.
        if pd.api.types.is_unsigned_integer_dtype(s.dtype) and s.max() > np.iinfo(np.int64).max:
            return s.astype(str)
        return s.astype(np.int64)
    if pd.api.types.is_float_dtype(s.dtype):
        values = s.to_numpy(dtype=np.float64, na_value=np.nan)
        _fail(table, column, np.isnan(values), f"missing {what}", expected)
        if np.all(values == np.round(values)) and np.all(np.abs(values) < 2**53):
            return pd.Series(values.astype(np.int64))
        return s.astype(str)
    raw = _text(s, strip=False)
    text = raw.str.strip()
    _fail(table, column, (text == "").to_numpy(), f"missing {what}", expected)
    _check_lengths(table, column, text, what, MAX_ID_LENGTH)
    _warn_padded(table, column, raw, text, what)
    if table.text and bool(text.str.fullmatch(_CANONICAL_INT.pattern).all()):
        try:
            return text.astype(np.int64)
        except (OverflowError, ValueError):
            pass  # beyond int64: keep as strings
    return text


def _warn_padded(table: _Table, column: str, raw: pd.Series, text: pd.Series, what: str) -> None:
    """Spaces around an id are not part of it (the module's policy): say how many ids lost some."""
    padded = (raw != text).to_numpy()
    if padded.any():
        first = np.flatnonzero(padded)[0]
        log.warning(
            f"{table.path}: column '{column}': {int(padded.sum())} row(s) ({raw[padded].nunique()} distinct "
            f"value(s)) have spaces around the {what}, the first on {table.unit} {table.places[first]} "
            f"({_show(raw.iloc[first])}); the spaces are ignored, so ' 12' and '12' are the same {what}"
        )


def _timestamps(table: _Table, column: str, timestamp_format: str | None) -> pd.Series:
    """Seconds since the epoch as int64; unparseable or absurd values raise."""
    s = table.frame[column]
    latest = int(time.time()) + _DAY
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        _fail(table, column, s.isna().to_numpy(), "missing timestamp", "a datetime")
        stamps = s if s.dt.tz is not None else s.dt.tz_localize("UTC")
        seconds = ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.float64)
        expected_kind = "a datetime"
    elif pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype) and not timestamp_format:
        seconds = s.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(seconds)
        _fail(table, column, bad, "missing or non-finite timestamp {value}", "seconds since the epoch")
        expected_kind = "seconds since the epoch"
    else:
        text = _text(s)
        empty = (text == "").to_numpy()
        _fail(table, column, empty, "missing timestamp", "seconds since the epoch or a datetime")
        as_dates = pd.to_datetime(text, format=timestamp_format or "ISO8601", utc=True, errors="coerce")
        dated = as_dates.notna().to_numpy()
        if timestamp_format:
            numeric, use_numbers = np.zeros(len(text), bool), False
            expected_kind = f"a datetime in the format {timestamp_format!r}"
        else:
            numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
            numeric = np.isfinite(numbers)
            use_numbers = numeric.sum() >= dated.sum()  # the column's kind is what most rows hold
            expected_kind = (
                "seconds since the epoch (like the other rows)"
                if use_numbers
                else "an ISO-8601 datetime such as 2021-03-04T05:06:07 (like the other rows), or set timestamp_format"
            )
        ok = numeric if use_numbers else dated
        _fail(table, column, ~ok, "cannot parse timestamp {value}", expected_kind)
        if use_numbers:
            seconds = numbers
        else:
            seconds = ((as_dates - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.float64)
    _fail(
        table, column, seconds < 0, "timestamp {value} is before 1970-01-01",
        f"{expected_kind}, between 1970-01-01 and now",
    )  # fmt: skip
    _fail(
        table, column, seconds > latest, "timestamp {value} is more than a day in the future",
        f"{expected_kind}, between 1970-01-01 and now (milliseconds instead of seconds?)",
    )  # fmt: skip
    return pd.Series(np.floor(seconds).astype(np.int64))


def _numbers(table: _Table, column: str, what: str, allow_missing: bool) -> np.ndarray:
    s = table.frame[column]
    if pd.api.types.is_bool_dtype(s.dtype):
        values = s.to_numpy(dtype=np.float64, na_value=np.nan)
        invalid = np.zeros(len(values), bool)
    elif pd.api.types.is_numeric_dtype(s.dtype):
        values = s.to_numpy(dtype=np.float64, na_value=np.nan)
        invalid = np.isinf(values)
    else:
        text = _text(s)
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        invalid = ((text != "").to_numpy() & ~np.isfinite(values)) | np.isinf(values)
    expected = "a number" if what == "rating" else "0 or 1"
    _fail(table, column, invalid, f"non-numeric {what} {{value}}", expected)
    if not allow_missing:
        _fail(table, column, np.isnan(values), f"missing {what}", expected)
    return values


@dataclass
class _Columns:
    user_id: str
    item_id: str
    timestamp: str
    rating: str
    label: str
    explicit: frozenset[str]


def _column_names(columns: Mapping | None) -> _Columns:
    given = {} if columns is None else {str(k): str(v) for k, v in dict(columns).items()}
    unknown = sorted(set(given) - set(_KEYS))
    if unknown:
        raise DataError(f"columns: unknown key(s) {unknown}; expected some of {list(_KEYS)} mapped to the file's names")
    if "rating" in given and "label" in given:
        raise DataError("columns: map either 'rating' or 'label', not both")
    return _Columns(**{k: given.get(k, k) for k in _KEYS}, explicit=frozenset(given))


def _read_interactions(path: str, role: str, names: _Columns, timestamp_format: str | None):
    """Returns (table, frame with user_id/item_id/timestamp/rating, the score column used or None)."""
    found = _header(path, role)
    optional = [k for k in ("rating", "label") if k in names.explicit] or [
        k for k in ("rating", "label") if getattr(names, k) in found
    ][:1]
    # A timestamp column is optional unless named in `columns`: only splits by time need one.
    timed = "timestamp" in names.explicit or names.timestamp in found
    keys = [*_REQUIRED, *(["timestamp"] if timed else []), *(k for k in ("rating", "label") if k in names.explicit)]
    missing = [(k, getattr(names, k)) for k in keys if getattr(names, k) not in found]
    if missing:
        listed = ", ".join(f"'{c}'" + ("" if c == k else f" (for {k})") for k, c in missing)
        raise DataError(
            f"{path}: missing required column(s) {listed}; found {found}; expected "
            "user_id, item_id and optionally timestamp and rating or label (rename with `columns`)"
        )
    score = optional[0] if optional else None
    usecols = [getattr(names, k) for k in keys if k in _REQUIRED or k == "timestamp"]
    usecols = list(dict.fromkeys(usecols + ([getattr(names, score)] if score else [])))
    table = _read(path, usecols)
    frame = pd.DataFrame(
        {
            "user_id": _ids(table, names.user_id, "user id"),
            "item_id": _ids(table, names.item_id, "item id"),
            "timestamp": _timestamps(table, names.timestamp, timestamp_format) if timed else np.int64(0),
        }
    )
    if score == "rating":
        frame["rating"] = _numbers(table, names.rating, "rating", allow_missing=True)
    elif score == "label":
        labels = _numbers(table, names.label, "label", allow_missing=False)
        _fail(table, names.label, ~np.isin(labels, (0.0, 1.0)), "label {value} is not 0 or 1", "0 or 1")
        frame["rating"] = labels
    else:
        frame["rating"] = np.nan
    frame["rating"] = frame["rating"].astype(np.float64)
    _warn_repeated(table, frame)
    return table, frame, score, timed


def _warn_repeated(table: _Table, frame: pd.DataFrame) -> None:
    """Exact repeats are kept (the module's policy) but counted: they may be an export's duplicates."""
    repeated = frame.duplicated().to_numpy()
    if repeated.any():
        first = table.places[np.flatnonzero(repeated)[0]]
        log.warning(
            f"{table.path}: {int(repeated.sum())} row(s) repeat an earlier row exactly (same user, item, timestamp "
            f"to the second and rating/label), the first on {table.unit} {first}; kept as repeat interactions "
            "(remove them from the file if they were written twice by mistake)"
        )


@dataclass
class _Features:
    path: str
    key: str  # user_id | item_id
    table: _Table
    key_column: str  # the key's name in the file
    ids: pd.Series
    features: pd.DataFrame


def _read_features(path: str, role: str, key: str, mapped: str) -> _Features:
    found = _header(path, role)
    if not found:
        raise DataError(f"{path}: no columns; expected the key column '{key}' (or the first column) and features")
    key_column = next((c for c in (mapped, key) if c in found), found[0])
    table = _read(path, found)
    ids = _ids(table, key_column, key.replace("_", " "))
    features = table.frame.drop(columns=[key_column])
    for column in features.columns:
        if not pd.api.types.is_numeric_dtype(features[column].dtype):
            _check_lengths(table, column, _text(features[column], strip=False), "value", MAX_VALUE_LENGTH)
    if table.text:
        features = pd.DataFrame({c: _feature_column(features[c]) for c in features.columns}, index=features.index)
    return _Features(path, key, table, key_column, ids, features)


def _feature_column(raw: pd.Series) -> pd.Series:
    """A CSV feature column: numbers when every non-empty value is one (and none looks like a code), else text;
    empty cells are missing (NaN)."""
    present = raw != ""
    if not present.any():
        return pd.Series(np.nan, index=raw.index, dtype=np.float64)
    numbers = pd.to_numeric(raw.where(present).str.strip(), errors="coerce")
    if numbers[present].notna().all() and not raw[present].str.match(_LEADING_ZERO.pattern).any():
        return numbers
    return raw.where(present)


def _check_duplicates(table: _Table, column: str, ids: pd.Series, key: str) -> None:
    duplicated = ids.duplicated(keep=False).to_numpy()
    if not duplicated.any():
        return
    first = np.flatnonzero(duplicated)[0]
    value = ids.iloc[first]
    places = table.places[(ids == value).to_numpy()]
    listed = ", ".join(str(p) for p in places[:_MAX_LISTED]) + (", ..." if len(places) > _MAX_LISTED else "")
    n_ids = ids[duplicated].nunique()
    raise DataError(
        f"{table.path}: column '{column}': duplicate {key} {_show(value)} on {table.unit}s {listed}; expected each "
        f"{key} once ({int(duplicated.sum())} rows share {n_ids} duplicated id(s), the first shown)"
    )


def _unify(series: list[pd.Series]) -> list[pd.Series]:
    """One id type everywhere: int64 if every side is integral, else strings."""
    if all(pd.api.types.is_integer_dtype(s.dtype) for s in series):
        return [s.astype(np.int64) for s in series]
    return [s if pd.api.types.is_string_dtype(s.dtype) else s.astype(str) for s in series]


def _warn_unseen_in_train(split: dict[str, pd.DataFrame], sources: dict[str, str]) -> None:
    """Say how many val/test users and items have no training interaction, and what becomes of them
    (see ``prepare``: both stay, with their ids mapped to the unknown row of the id vocabulary)."""
    for role in ("val", "test"):
        counts = []
        for key in ("user_id", "item_id"):
            ids = pd.Series(split[role][key].unique())
            counts.append((int((~ids.isin(split["train"][key])).sum()), len(ids)))
        (new_users, users), (new_items, items) = counts
        if new_users or new_items:
            log.warning(
                f"{sources[role]}: {new_users} of {users} users and {new_items} of {items} items never appear in "
                f"{sources['train']}; users without training data are evaluated as cold users (from their features, "
                "reported apart under cold/), items without training data stay in the catalogue and their "
                "interactions stay in the split (positives are still targets), ranked from their features alone (their "
                "id maps to the unknown row)"
            )


def load_tables(
    interactions: str | None = None,
    train: str | None = None,
    val: str | None = None,
    test: str | None = None,
    users: str | None = None,
    items: str | None = None,
    columns: Mapping | None = None,
    timestamp_format: str | None = None,
    name: str = "custom",
) -> InteractionData:
    """Load user-supplied tables.

    Give either ``interactions`` (one file, split by the platform) or all of
    ``train``/``val``/``test`` (a split used as given). Files are CSV (``.csv``),
    TSV (``.tsv``) or Parquet (``.parquet``/``.pq``).

    Interaction columns: ``user_id``, ``item_id``, optionally ``timestamp`` (needed only by
    the splits by time) and ``rating`` (a number) or ``label`` (0/1, stored as the rating); ``columns``
    maps these names to the file's, e.g. ``{"user_id": "uid"}``. Ids are int64
    when every value everywhere is an integer within int64, else (exact) strings. Timestamps are
    seconds since the epoch or datetimes (``timestamp_format``, else ISO-8601;
    naive ones are UTC), returned as int64 seconds.

    ``users``/``items``: feature tables keyed by their ``user_id``/``item_id``
    column (or the mapped name; else the first column); the other columns are
    raw features (a multi-valued one is a ``|``-joined string; in CSV, a column
    of numbers is numeric, empty cells are missing).
    """
    given_split = {k: v for k, v in (("train", train), ("val", val), ("test", test)) if v}
    if interactions and not given_split:
        sources = {"interactions": str(interactions)}
    elif not interactions and len(given_split) == 3:
        sources = {k: str(v) for k, v in given_split.items()}
    else:
        got = [k for k, v in (("interactions", interactions), *given_split.items()) if v] or ["nothing"]
        raise DataError(
            f"{name}: give either `interactions` (one file, split by the platform) or all three of `train`, `val` "
            f"and `test` (a split you already have), not both; got {', '.join(got)}"
        )
    sources = {k: os.path.expanduser(v) for k, v in sources.items()}
    names = _column_names(columns)

    parts = {}
    for role, path in sources.items():
        parts[role] = _read_interactions(path, role, names, timestamp_format)
    scores = {role: score for role, (_, _, score, _) in parts.items()}
    if len(set(scores.values())) > 1:
        described = ", ".join(f"{sources[r]}: {s or 'neither'}" for r, s in scores.items())
        raise DataError(f"{name}: the split files disagree on rating/label columns ({described}); expected the same")

    tables: dict[str, _Features] = {}
    for role, path, key in (("users", users, "user_id"), ("items", items, "item_id")):
        if path:
            tables[role] = _read_features(os.path.expanduser(str(path)), role, key, getattr(names, key))

    # One id type per key across every interaction file and the feature table.
    for key, role in (("user_id", "users"), ("item_id", "items")):
        sides = [frame[key] for _, frame, _, _ in parts.values()] + ([tables[role].ids] if role in tables else [])
        unified = _unify(sides)
        for (_, frame, _, _), ids in zip(parts.values(), unified):
            frame[key] = ids
        if role in tables:
            tables[role].ids = unified[-1]

    feature_frames = {}
    for role, t in tables.items():
        _check_duplicates(t.table, t.key_column, t.ids, t.key.replace("_", " "))
        feature_frames[role] = t.features.set_axis(pd.Index(t.ids.to_numpy(), name=t.key, dtype=t.ids.dtype), axis=0)

    for table, frame, _, _ in parts.values():
        for key, owner in (("user_id", "users"), ("item_id", "items")):
            if owner not in tables:
                continue
            absent = (~frame[key].isin(feature_frames[owner].index)).to_numpy()
            if absent.any():
                first = np.flatnonzero(absent)[0]
                what = key.replace("_", " ")
                n_ids = int(frame[key][absent].nunique())
                raise DataError(
                    f"{table.path}: column '{getattr(names, key)}', {table.unit} {table.places[first]}: "
                    f"{what} {_show(frame[key].iloc[first])} is not in the {owner} table {tables[owner].path}; "
                    f"expected every {what} to have a row there ({_count(int(absent.sum()))}; "
                    f"{n_ids} distinct {what}{'s are' if n_ids > 1 else ' is'} missing from that table)"
                )

    frames = {role: frame for role, (_, frame, _, _) in parts.items()}
    timed = {role: has_time for role, (_, _, _, has_time) in parts.items()}
    if len(set(timed.values())) > 1:
        described = ", ".join(f"{sources[r]}: {'has' if t else 'has none'}" for r, t in timed.items())
        raise DataError(f"{name}: the split files disagree on a timestamp column ({described}); expected all or none")
    if "interactions" in frames:
        all_interactions, split = frames["interactions"], None
    else:
        split = {role: frames[role] for role in ("train", "val", "test")}
        _warn_unseen_in_train(split, sources)
        all_interactions = pd.concat(list(split.values()), ignore_index=True)
    return InteractionData(
        name=name,
        interactions=all_interactions,
        users=feature_frames.get("users"),
        items=feature_frames.get("items"),
        predefined_split=split,
        has_timestamps=all(timed.values()),
    )
