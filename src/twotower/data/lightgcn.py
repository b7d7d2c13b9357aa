"""The collaborative-filtering benchmarks in the format NGCF and LightGCN published
(Gowalla, Yelp2018, Amazon-Book): ``train.txt`` and ``test.txt``, one line per user,
``user item item ...`` (space-separated integer ids, already contiguous).

:func:`read_pairs` parses one file and refuses a malformed line with its number;
:func:`pairs_sha256` is the order-independent check of a file's content (the published
files list a user's items in any order); :func:`load_lightgcn` returns the split as an
:class:`InteractionData` with a predefined train/test split (no timestamps, no ratings:
every pair is a positive). The validation part is carved from the training pairs by the
split config (``split.val_ratio``), never from test.

The files come from ``path`` (a zip or a folder holding both), else from the copy shipped
with the package (``bundled``: Gowalla), else from ``data_dir`` (``<data_dir>/<name>/``),
where they are downloaded from ``url`` on first use. Every load verifies the pair counts,
and the SHA-256 of the sorted pairs where one is pinned (Gowalla; Yelp2018 and Amazon-Book
are verified by their counts until a hash is pinned); a download that fails the check is
deleted.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from twotower.data.download import download_file
from twotower.data.schema import InteractionData
from twotower.errors import DataError

log = logging.getLogger("twotower")

FILES = ("train.txt", "test.txt")


def read_pairs(text: str, source: str) -> pd.DataFrame:
    """``user item item ...`` lines -> ``(user_id, item_id)`` pairs, int64, in file order.
    Blank lines are skipped; a token that is not a non-negative integer, an item listed
    twice for a user, or a user on two lines is refused with the line number."""
    users, items, first_line = [], [], {}
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        bad = next((t for t in tokens if not t.isdigit()), None)  # isdigit: no sign, no decimal point
        if bad is not None:
            raise DataError(
                f"{source}: line {number}: {bad[:40]!r} is not a non-negative integer id; expected 'user item item ...'"
            )
        user, *line_items = (int(t) for t in tokens)
        if user in first_line:
            raise DataError(f"{source}: line {number}: user {user} was already listed on line {first_line[user]}; expected one line per user")
        first_line[user] = number
        if len(set(line_items)) != len(line_items):
            repeated = next(i for i in line_items if line_items.count(i) > 1)
            raise DataError(f"{source}: line {number}: item {repeated} is listed twice for user {user}; expected each item once")
        users.append(np.full(len(line_items), user, dtype=np.int64))
        items.append(np.asarray(line_items, dtype=np.int64))
    if not users:
        raise DataError(f"{source}: no user line; expected 'user item item ...' lines")
    return pd.DataFrame({"user_id": np.concatenate(users), "item_id": np.concatenate(items)})


def pairs_sha256(pairs: pd.DataFrame) -> str:
    """SHA-256 of the pairs sorted by (user, item), each written ``"{user} {item}\\n"``: the
    same for any order of the lines or of the items on a line."""
    order = np.lexsort((pairs["item_id"].to_numpy(), pairs["user_id"].to_numpy()))
    users, items = pairs["user_id"].to_numpy()[order].tolist(), pairs["item_id"].to_numpy()[order].tolist()
    # Formatting Python ints is 4x faster than numpy's string ops here (0.6 s for Gowalla's
    # 810,128 training pairs, checked at every load).
    return hashlib.sha256("".join([f"{u} {i}\n" for u, i in zip(users, items)]).encode()).hexdigest()


def _check(pairs: pd.DataFrame, source: str, expected_pairs: int | None, sha256: str | None) -> None:
    if expected_pairs is not None and len(pairs) != expected_pairs:
        raise DataError(f"{source}: {len(pairs):,} (user, item) pairs; expected {expected_pairs:,} (a different or cut copy?)")
    if sha256 and pairs_sha256(pairs) != sha256:
        raise DataError(f"{source}: the SHA-256 of its sorted pairs is not {sha256}; expected the published file (a different copy?)")


def _read_text(path: Path, name: str) -> tuple[str, str]:
    """The text of ``name`` in ``path`` (a zip, or a folder), and how to name it in messages."""
    if path.is_dir():
        file = path / name
        if not file.is_file():
            raise DataError(f"{path}: no {name}; expected {' and '.join(FILES)} in the folder")
        return file.read_text(), str(file)
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if m == name or m.endswith("/" + name)]
            if not members:
                raise DataError(f"{path}: no {name} inside; expected {' and '.join(FILES)} in the archive")
            return archive.read(members[0]).decode(), f"{path}:{members[0]}"
    except (zipfile.BadZipFile, FileNotFoundError, IsADirectoryError) as err:
        raise DataError(f"{path}: cannot read ({err}); expected a zip or a folder holding {' and '.join(FILES)}") from err


def _fetch(folder: Path, url: str, counts: dict, sha256: dict) -> None:
    """Download the files missing from ``folder``; each is checked before it takes its name."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        final = folder / name
        if final.is_file():
            continue
        part = folder / f"{name}.part"
        try:
            download_file(f"{url.rstrip('/')}/{name}", part, hint=f"place {name} at {final}")
            stem = name.split(".")[0]
            pairs = read_pairs(part.read_text(), f"{url}/{name}")
            _check(pairs, f"{url}/{name}", counts.get(stem), sha256.get(stem))
            part.replace(final)
            if not sha256.get(stem):
                log.info("%s: verified by its %s pairs; to pin it, data.source.sha256.%s=%s", final, f"{len(pairs):,}", stem, pairs_sha256(pairs))
        finally:
            part.unlink(missing_ok=True)


def load_lightgcn(
    name: str,
    data_dir: str | None = None,
    path: str | None = None,
    bundled: str | None = None,
    url: str | None = None,
    pairs: dict | None = None,
    sha256: dict | None = None,
) -> InteractionData:
    """A LightGCN-format benchmark as an :class:`InteractionData` with a predefined split.

    ``bundled``: the name of the package's own copy (in ``twotower/resources``);
    ``pairs``: the expected number of pairs per file (``{"train": 810128, "test": 217242}``);
    ``sha256``: the pinned SHA-256 of each file's sorted pairs (:func:`pairs_sha256`), when known.
    """
    counts, digests = dict(pairs or {}), dict(sha256 or {})
    if path:
        source = Path(path).expanduser()
    elif bundled:
        source = Path(str(resources.files("twotower") / "resources" / bundled))
    elif data_dir:
        source = Path(data_dir).expanduser() / name
        if url and not all((source / f).is_file() for f in FILES):
            _fetch(source, url, counts, digests)
    else:
        raise DataError(f"{name}: no path, bundled copy or data_dir; expected data.source.path (a zip or folder) or data.source.data_dir")
    split = {}
    for file in FILES:
        text, where = _read_text(source, file)
        frame = read_pairs(text, where)
        stem = file.split(".")[0]
        _check(frame, where, counts.get(stem), digests.get(stem))
        split[stem] = frame.assign(timestamp=np.int64(0), rating=np.nan)
    split["val"] = split["train"].iloc[0:0]  # carved from train by split.val_ratio (prepare)
    interactions = pd.concat([split["train"], split["test"]], ignore_index=True)
    return InteractionData(name=name, interactions=interactions, predefined_split=split, has_timestamps=False)
