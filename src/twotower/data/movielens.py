"""MovieLens loaders: each returns an :class:`InteractionData` in the platform schema.

MovieLens-100K ships inside the package (``twotower/resources/ml-100k.zip``,
GroupLens terms in ``resources/MOVIELENS_LICENSE.md``). MovieLens-1M and -20M
are downloaded from GroupLens into ``data_dir`` on first use, checksum-verified
and extracted there (both cached for later runs).
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from twotower.data.download import fetch_archive, safe_extract
from twotower.data.schema import MULTI_VALUE_SEPARATOR, InteractionData
from twotower.errors import DataError

ML1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
ML1M_SHA256 = "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"
ML1M_MD5 = "c4d9eecfca2ab87c1945afe126590906"
ML20M_URL = "https://files.grouplens.org/datasets/movielens/ml-20m.zip"
ML20M_MD5 = "cd245b17a1ae2cc31bb14903e1204af3"

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


def bundled_ml100k_path() -> str:
    """Path of the MovieLens-100K archive shipped with the package."""
    return str(resources.files("twotower") / "resources" / "ml-100k.zip")


def _read_member(archive: zipfile.ZipFile, name: str, archive_path: str) -> bytes:
    matches = [n for n in archive.namelist() if n.endswith("/" + name) or n == name]
    if not matches:
        raise DataError(f"{archive_path}: member '{name}' not found; expected the GroupLens ml-100k layout")
    return archive.read(matches[0])


def load_ml100k(path: str | None = None) -> InteractionData:
    """MovieLens-100K: 943 users, 1,682 movies, 100,000 ratings.

    User features: age (years), gender, occupation, zip_prefix (first two
    characters of the zip code). Item features: title, release_year (NaN for
    the one movie without a date), genres (``|``-joined).
    """
    path = path or bundled_ml100k_path()
    with zipfile.ZipFile(path) as archive:
        ratings = pd.read_csv(
            io.BytesIO(_read_member(archive, "u.data", path)),
            sep="\t", header=None, names=["user_id", "item_id", "rating", "timestamp"],
            dtype={"user_id": np.int64, "item_id": np.int64, "rating": np.float64, "timestamp": np.int64},
        )  # fmt: skip
        users = pd.read_csv(
            io.BytesIO(_read_member(archive, "u.user", path)),
            sep="|", header=None, names=["user_id", "age", "gender", "occupation", "zip"],
            dtype={"zip": str}, keep_default_na=False,
        )  # fmt: skip
        item_columns = ["item_id", "title", "release_date", "video_release_date", "url", *ML100K_GENRES]
        items = pd.read_csv(
            io.BytesIO(_read_member(archive, "u.item", path)),
            sep="|", header=None, names=item_columns, encoding="latin-1", keep_default_na=False,
        )  # fmt: skip

    users["zip_prefix"] = users["zip"].str.slice(0, 2)
    users = users.drop(columns=["zip"]).set_index("user_id")
    users["age"] = users["age"].astype(np.float64)

    flags = items[list(ML100K_GENRES)].to_numpy(dtype=bool)
    names = np.array(ML100K_GENRES, dtype=object)
    genres = [MULTI_VALUE_SEPARATOR.join(names[row]) for row in flags]
    release = pd.to_datetime(items["release_date"].replace("", None), format="%d-%b-%Y", errors="coerce")
    items = pd.DataFrame(
        {
            "title": items["title"].astype(str).to_numpy(),
            "release_year": release.dt.year.astype(np.float64).to_numpy(),
            "genres": genres,
        },
        index=pd.Index(items["item_id"].astype(np.int64), name="item_id"),
    )
    interactions = ratings[["user_id", "item_id", "timestamp", "rating"]]
    return InteractionData(name="ml-100k", interactions=interactions, users=users, items=items)


# --- downloaded archives: MovieLens-1M and MovieLens-20M -------------------------------------

_YEAR_AT_END = re.compile(r"\((\d{4})(?:[-\u2013]\d{0,4})?\)\s*$")


def _release_years(titles: pd.Series) -> np.ndarray:
    """The year in a title's trailing ``(YYYY)`` as float, NaN where there is none."""
    return pd.to_numeric(titles.str.extract(_YEAR_AT_END, expand=False), errors="coerce").astype(np.float64).to_numpy()


def _fetch_and_extract(data_dir: str | Path, url: str, sha256: str | None, md5: str | None) -> Path:
    data_dir = Path(data_dir).expanduser()
    archive = fetch_archive(url, data_dir, sha256=sha256, md5=md5)
    stem = archive.name.removesuffix(".zip")
    return safe_extract(archive, data_dir / stem)


def _find_file(root: Path, name: str, layout: str) -> Path:
    matches = sorted(root.rglob(name), key=lambda p: len(p.parts))
    if not matches:
        raise DataError(f"{root}: file '{name}' not found; expected the GroupLens {layout} layout")
    return matches[0]


def _read_double_colon(path: Path, names: list[str], dtype: dict, encoding: str = "latin-1") -> pd.DataFrame:
    """Read a ``::``-separated ml-1m file with pandas' C parser (the python engine is ~10x slower).

    ``::`` becomes a tab, which no ml-1m field holds; quoting is off since titles hold bare quotes.
    """
    raw = path.read_bytes().replace(b"::", b"\t")
    try:
        frame = pd.read_csv(
            io.BytesIO(raw), sep="\t", header=None, names=names, dtype=dtype, encoding=encoding,
            index_col=False, quoting=csv.QUOTE_NONE, keep_default_na=False, na_filter=False,
        )  # fmt: skip
    except (ValueError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: cannot parse as '::'-separated {names}: {err}") from err
    if frame.isna().any().any():
        raise DataError(f"{path}: some lines have fewer than {len(names)} '::'-separated fields {names}")
    return frame


def load_ml1m(
    data_dir: str,
    url: str = ML1M_URL,
    sha256: str | None = ML1M_SHA256,
    md5: str | None = ML1M_MD5,
) -> InteractionData:
    """MovieLens-1M: 6,040 users, 3,883 movies, 1,000,209 ratings; downloaded into ``data_dir`` once.

    User features: gender, age (the bracket code 1/18/25/35/45/50/56, as
    float), occupation (the code 0-20, as str), zip_prefix (first two
    characters of the zip code). Item features: title, release_year (from the
    title's trailing ``(YYYY)``, NaN if absent), genres (``|``-joined).
    """
    root = _fetch_and_extract(data_dir, url, sha256, md5)
    ratings = _read_double_colon(
        _find_file(root, "ratings.dat", "ml-1m"), ["user_id", "item_id", "rating", "timestamp"],
        dtype={"user_id": np.int64, "item_id": np.int64, "rating": np.float64, "timestamp": np.int64},
    )  # fmt: skip
    users = _read_double_colon(
        _find_file(root, "users.dat", "ml-1m"), ["user_id", "gender", "age", "occupation", "zip"],
        dtype={"user_id": np.int64, "gender": str, "age": np.float64, "occupation": str, "zip": str},
    )  # fmt: skip
    movies = _read_double_colon(
        _find_file(root, "movies.dat", "ml-1m"), ["item_id", "title", "genres"],
        dtype={"item_id": np.int64, "title": str, "genres": str},
    )  # fmt: skip

    users["zip_prefix"] = users["zip"].str.slice(0, 2)
    users = users.drop(columns=["zip"]).set_index("user_id")
    items = pd.DataFrame(
        {
            "title": movies["title"].to_numpy(),
            "release_year": _release_years(movies["title"]),
            "genres": movies["genres"].to_numpy(),
        },
        index=pd.Index(movies["item_id"], name="item_id"),
    )
    interactions = ratings[["user_id", "item_id", "timestamp", "rating"]]
    return InteractionData(name="ml-1m", interactions=interactions, users=users, items=items)


def _read_csv(path: Path, dtype: dict) -> pd.DataFrame:
    columns = list(dtype)
    try:
        try:
            frame = pd.read_csv(path, dtype=dtype, keep_default_na=False, encoding="utf-8")
        except UnicodeDecodeError:
            frame = pd.read_csv(path, dtype=dtype, keep_default_na=False, encoding="latin-1")
    except (ValueError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: cannot parse as CSV with columns {columns}: {err}") from err
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: header lacks column(s) {missing}; expected {columns}")
    return frame


def load_ml20m(data_dir: str, url: str = ML20M_URL, md5: str | None = ML20M_MD5) -> InteractionData:
    """MovieLens-20M: 138,493 users, 27,278 movies, 20,000,263 ratings; downloaded into ``data_dir`` once.

    No user features. Item features: title, release_year (from the title's
    trailing ``(YYYY)``, NaN if absent), genres (``|``-joined; empty for
    ``(no genres listed)``).
    """
    root = _fetch_and_extract(data_dir, url, None, md5)
    ratings = _read_csv(
        _find_file(root, "ratings.csv", "ml-20m"),
        {"userId": np.int64, "movieId": np.int64, "rating": np.float64, "timestamp": np.int64},
    ).rename(columns={"userId": "user_id", "movieId": "item_id"})
    movies = _read_csv(_find_file(root, "movies.csv", "ml-20m"), {"movieId": np.int64, "title": str, "genres": str})

    genres = movies["genres"].where(movies["genres"] != "(no genres listed)", "")
    items = pd.DataFrame(
        {
            "title": movies["title"].to_numpy(),
            "release_year": _release_years(movies["title"].str.strip()),
            "genres": genres.to_numpy(),
        },
        index=pd.Index(movies["movieId"], name="item_id"),
    )
    interactions = ratings[["user_id", "item_id", "timestamp", "rating"]]
    return InteractionData(name="ml-20m", interactions=interactions, users=None, items=items)
