"""Retrieval from an export (``twotower-export``'s folder): its files read and checked, and
:class:`Retriever`, the export loaded once to answer top-k queries for known users (their
training items left out unless asked), for new users from their raw features, and for
items like a given one. ``twotower-retrieve`` and ``twotower-serve`` both answer through it.

An export is untrusted input: every file is checked against ``checksums.json`` first, JSON
is read as values, tensors with ``weights_only=True``, arrays with ``allow_pickle=False``; a
file that is missing, unreadable or corrupted is refused with an :class:`ExportError` (or
``FileNotFoundError``) naming it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import twotower
from twotower.artifacts import check_plain_values, first_line, load_weights
from twotower.covisit import CoVisitation, is_weight, top_k_with_walks
from twotower.data.features import encode_feature
from twotower.index import FILES as INDEX_FILES
from twotower.index import MANIFEST_FILE, ItemIndex
from twotower.integrity import file_digest
from twotower.models import Tower
from twotower.prior import PopularityPrior, append_column

INDEX_DIR = "index"
SEEN_FILES = ("seen_ptr.npy", "seen_items.npy", "seen_positive.npy")  # each user's training items, CSR over user_ids.json
PRIOR_FILE = "popularity_prior.json"  # the model's popularity prior (twotower.prior), or null
USER_WARM_FILE = "user_warm.npy"  # [U] bool over user_ids.json: the user has training data
LOG_PRIOR_FILE = "item_log_prior.npy"  # [N] float32: the prior's column of the index (zeros without a prior)
COVISIT_FILE = "covisit.json"  # {"weight": w}: the co-visitation score's weight at ranking (twotower.covisit), 0 for none
EXPORT_FILES = ("item_vectors.npy", "item_ids.json", "user_tower.pt", "user_tower.json", "user_features.pt",
                "user_ids.json", "features.json", "ann_quality.json", *SEEN_FILES, PRIOR_FILE, USER_WARM_FILE,
                LOG_PRIOR_FILE, COVISIT_FILE)  # fmt: skip
CHECKSUMS = "checksums.json"  # SHA-256 of every other file of an export, written last
ENCODE_CHUNK = 65536


class ExportError(ValueError):
    """An export folder with a file that cannot be read; the message names the file."""


def check_export(export_dir: str | os.PathLike) -> Path:
    """The export folder, if every exported file is there and matches its SHA-256 in
    ``checksums.json``; else ``FileNotFoundError`` naming the missing files, or
    ``ExportError`` naming the first corrupted one."""
    folder = Path(export_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"export folder {folder} does not exist")
    missing = [name for name in (*EXPORT_FILES, CHECKSUMS) if not (folder / name).is_file()]
    missing += [f"{INDEX_DIR}/"] if not (folder / INDEX_DIR).is_dir() else []
    if missing:
        raise FileNotFoundError(f"export {folder} is incomplete: missing {', '.join(missing)} "
                                "(an export by an earlier twotower lacks the newer files: export again)")  # fmt: skip
    recorded = read_json(folder / CHECKSUMS)
    if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
        raise ExportError(f"{folder / CHECKSUMS}: expected {{file: sha256}}, as twotower-export writes it (export again)")
    for name, digest in sorted(recorded.items()):
        path = folder / name
        if ".." in Path(name).parts or Path(name).is_absolute() or not path.is_file():
            raise ExportError(f"{folder / CHECKSUMS} lists {name!r}, which is not a file of the export (export again)")
        if file_digest(path) != digest:
            raise ExportError(f"{path}: its SHA-256 does not match {CHECKSUMS}: the file is corrupted (export again)")
    unlisted = [name for name in (*EXPORT_FILES, *(f"{INDEX_DIR}/{f}" for f in INDEX_FILES)) if name not in recorded]
    if unlisted:
        raise ExportError(f"{folder / CHECKSUMS} does not cover {', '.join(unlisted)} (export again)")
    return folder


def read_json(path: Path):
    """A JSON file of an export; a file that is not valid JSON (e.g. cut short) raises ``ExportError``."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExportError(f"{path}: not valid JSON ({first_line(err)}); expected the file as twotower wrote it (is it truncated?)") from err


def read_tensors(path: Path) -> dict:
    """A ``{name: tensor}`` file of an export, loaded with ``weights_only=True``."""
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for a broken file
        raise ExportError(
            f"{path}: cannot read ({first_line(err)}); expected the file twotower-export wrote (is it truncated? export again)"
        ) from err
    if not isinstance(value, dict) or not all(isinstance(v, torch.Tensor) for v in value.values()):
        raise ExportError(f"{path}: expected a dict of tensors, as twotower-export writes it (export again)")
    return value


def load_user_tower(export_dir: str | os.PathLike) -> Tower:
    """The exported user tower (eval mode), from ``user_tower.json`` and ``user_tower.pt`` only."""
    folder = Path(export_dir)
    spec = read_json(folder / "user_tower.json")
    check_plain_values(spec, str(folder / "user_tower.json"))
    try:
        tower = Tower(spec["fitted"], **spec["args"])
    except (KeyError, TypeError, ValueError) as err:
        raise ExportError(f"{folder / 'user_tower.json'}: not a user tower description ({err!r}); expected the file twotower-export wrote") from err
    load_weights(folder / "user_tower.pt", tower, read_tensors(folder / "user_tower.pt"), "the user tower user_tower.json describes", ExportError)
    return tower.eval()


def encode_new_users(spec: dict, raw_users: list[dict]) -> dict[str, torch.Tensor]:
    """Encode users unseen in training from their raw features, with the exported fitted
    transforms of ``spec`` (``user_tower.json``): ``[{"age": "25", "gender": "M", ...}]`` ->
    ``{name: [U, ...]}``. Their ID maps to the unknown row; a feature left out counts as
    missing (unknown row, or the mean)."""
    names = [f["name"] for f in spec["fitted"] if f["kind"] != "id"]
    continuous = {f["name"] for f in spec["fitted"] if f["kind"] == "continuous"}
    for raw in raw_users:
        unknown = sorted(set(raw) - set(names))
        if unknown:
            raise ValueError(f"new user features {unknown} are not features of this model; expected some of {names}")
        for name in sorted(continuous & set(raw)):
            value = raw[name]
            number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
            if value not in (None, "") and not np.isfinite(number):
                raise ValueError(f"new user feature {name}={value!r}: expected a number (or leave it out: missing)")
    table = pd.DataFrame([{n: raw.get(n) for n in names} for raw in raw_users], columns=names)
    features: dict[str, torch.Tensor] = {}
    for fitted in spec["fitted"]:
        values = pd.Series([None] * len(raw_users), dtype=object) if fitted["kind"] == "id" else table[fitted["name"]]
        features.update(encode_feature(fitted, values))
    return features


@torch.no_grad()
def encode(tower: torch.nn.Module, features: dict[str, torch.Tensor], count: int) -> torch.Tensor:
    """``{name: [count, ...]}`` -> ``[count, D]`` float32 vectors, in chunks."""
    chunks = [tower({k: v[s : s + ENCODE_CHUNK] for k, v in features.items()}) for s in range(0, count, ENCODE_CHUNK)]
    return torch.cat(chunks).float()


def read_array(path: Path, dtype_kind: str, ndim: int) -> np.ndarray:
    """A ``.npy`` file of an export (never unpickled) of the expected kind (``i``/``f``) and rank."""
    try:
        value = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ExportError(f"{path}: cannot read ({first_line(err)}); expected the array twotower-export wrote (export again)") from err
    if value.dtype.kind != dtype_kind or value.ndim != ndim:
        raise ExportError(f"{path}: a {value.ndim}-d {value.dtype} array; expected {ndim}-d of kind {dtype_kind!r} (export again)")
    return value


def read_prior(path: Path) -> PopularityPrior | None:
    """``popularity_prior.json``: ``null``, or the prior's three numbers."""
    values = read_json(path)
    if values is None:
        return None
    try:
        if not isinstance(values, dict):
            raise TypeError("not an object")
        return PopularityPrior(**values)
    except (TypeError, ValueError) as err:
        raise ExportError(f"{path}: not a popularity prior ({first_line(err)}); expected null or warm_weight, cold_weight, half_life_days (export again)") from None


def read_covisit_weight(path: Path) -> float:
    """``covisit.json``: ``{"weight": w}``, a number ``w >= 0``."""
    value = read_json(path)
    weight = value.get("weight") if isinstance(value, dict) and set(value) == {"weight"} else None
    if not is_weight(weight):
        raise ExportError(f"{path}: {json.dumps(value)[:80]}; expected {{\"weight\": a number >= 0}} (export again)")
    return float(weight)


def read_seen(folder: Path, num_users: int, num_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ptr [U+1], items [S], positive [S] bool)``: user ``u``'s training items are the item
    rows ``items[ptr[u]:ptr[u+1]]`` (rows of ``item_ids.json``), ``positive`` those that were clicks."""
    ptr, items = (read_array(folder / name, "i", 1) for name in SEEN_FILES[:2])
    positive = read_array(folder / SEEN_FILES[2], "b", 1)
    if len(ptr) != num_users + 1 or ptr[0] != 0 or ptr[-1] != len(items) or (np.diff(ptr) < 0).any():
        raise ExportError(f"{folder / SEEN_FILES[0]}: not the offsets of {num_users} users into {len(items)} items (export again)")
    if len(items) and (items.min() < 0 or items.max() >= num_items):
        raise ExportError(f"{folder / SEEN_FILES[1]}: item rows outside 0..{num_items - 1} (export again)")
    if len(positive) != len(items):
        raise ExportError(f"{folder / SEEN_FILES[2]}: {len(positive)} flags for {len(items)} seen items; expected one per item (export again)")
    return ptr, items, positive


class Retriever:
    """An export, loaded and checked once: ``recommend`` for known users (by raw id) and
    new users (by raw features), ``similar`` items, and the export's ``metadata``.
    Safe to call from several threads (read-only state; the tower runs without gradients)."""

    def __init__(self, export_dir: str | os.PathLike):
        folder = check_export(export_dir)
        self.folder = folder
        self.user_ids = [str(u) for u in read_json(folder / "user_ids.json")]
        self.user_row = {u: i for i, u in enumerate(self.user_ids)}
        self.item_ids = read_json(folder / "item_ids.json")
        self.item_row = {str(i): r for r, i in enumerate(self.item_ids)}
        titles_file = folder / "item_titles.json"
        self.titles = [str(t) for t in read_json(titles_file)] if titles_file.is_file() else None
        self.tower = load_user_tower(folder)
        self.spec = read_json(folder / "user_tower.json")
        self.user_features = read_tensors(folder / "user_features.pt")
        short = {n: len(t) for n, t in self.user_features.items() if len(t) != len(self.user_ids)}
        if short:
            raise ExportError(f"{folder / 'user_features.pt'}: rows {short} for {len(self.user_ids)} user ids in user_ids.json; expected one row per user (export again)")
        self.seen_ptr, self.seen_items, seen_positive = read_seen(folder, len(self.user_ids), len(self.item_ids))
        self.index = ItemIndex.load(folder / INDEX_DIR)
        self.item_vectors = read_array(folder / "item_vectors.npy", "f", 2)
        if len(self.item_vectors) != len(self.item_ids) or len(self.index) != len(self.item_ids):
            raise ExportError(f"{folder}: {len(self.item_vectors)} item vectors and {len(self.index)} indexed items for {len(self.item_ids)} item ids (export again)")
        self.manifest = read_json(folder / INDEX_DIR / MANIFEST_FILE)
        self.prior = read_prior(folder / PRIOR_FILE)
        warm = read_array(folder / USER_WARM_FILE, "b", 1)
        if len(warm) != len(self.user_ids):
            raise ExportError(f"{folder / USER_WARM_FILE}: {len(warm)} flags for {len(self.user_ids)} user ids; expected one per user (export again)")
        log_prior = read_array(folder / LOG_PRIOR_FILE, "f", 1).astype(np.float32)
        if len(log_prior) != len(self.item_ids) or not np.isfinite(log_prior).all():
            raise ExportError(f"{folder / LOG_PRIOR_FILE}: {len(log_prior)} values for {len(self.item_ids)} item ids; expected one finite value per item (export again)")
        # What the index holds, for scoring the co-visitation's items exactly (twotower.covisit.top_k_with_walks).
        self.indexed = self.item_vectors if self.prior is None else np.concatenate([self.item_vectors, log_prior[:, None]], axis=1)
        self.covisit_weight = read_covisit_weight(folder / COVISIT_FILE)
        users = np.repeat(np.arange(len(self.user_ids)), np.diff(self.seen_ptr))  # the walks go over the seen positives
        self.covisit = (CoVisitation(users[seen_positive], self.seen_items[seen_positive], len(self.user_ids), len(self.item_ids))
                        if self.covisit_weight else None)  # fmt: skip
        # Known users' vectors are fixed, like the items': computed once here, so a request for
        # a known user is one index search (the tower runs per request for new users only).
        self.user_vectors = self._query(encode(self.tower, self.user_features, len(self.user_ids)), torch.as_tensor(warm))
        if self.user_vectors.shape[1] != self.index.dim or self.item_vectors.shape[1] + (self.prior is not None) != self.index.dim:
            raise ExportError(f"{folder}: user vectors of {self.user_vectors.shape[1]} and item vectors of {self.item_vectors.shape[1]} dimensions for an index of {self.index.dim} (export again)")

    def _query(self, vectors: torch.Tensor, warm: torch.Tensor) -> np.ndarray:
        """Users' index queries: their vectors, and the prior's weight for each when there is one."""
        return (vectors if self.prior is None else append_column(vectors, self.prior.user_weights(warm))).numpy()

    # -- queries

    def encode_known(self, user_ids: list[str]) -> np.ndarray:
        """``[U, D]`` queries of known users by raw id (``KeyError`` naming the unknown ones); ``D`` counts the prior's weight."""
        unknown = [u for u in user_ids if u not in self.user_row]
        if unknown:
            raise KeyError(f"unknown user id(s) {unknown}; known ids include {self.user_ids[:5]} ({len(self.user_ids)} users)")
        return self.user_vectors[[self.user_row[u] for u in user_ids]]

    def encode_new(self, raw_users: list[dict]) -> np.ndarray:
        """``[U, D]`` queries of users unseen in training, from their raw features (cold users)."""
        vectors = encode(self.tower, encode_new_users(self.spec, raw_users), len(raw_users))
        return self._query(vectors, torch.zeros(len(raw_users), dtype=torch.bool))

    def seen(self, user_id: str) -> np.ndarray:
        row = self.user_row[user_id]
        return self.seen_items[self.seen_ptr[row] : self.seen_ptr[row + 1]]

    def search(self, queries: np.ndarray, k: int, exclude: list[np.ndarray], user_rows: np.ndarray | None = None) -> list[list[dict]]:
        """Top-``k`` items per query ``[Q, D]``, leaving out each query's ``exclude`` item rows:
        the index is asked for ``k`` plus the most any query excludes, so ``k`` remain. With a
        co-visitation weight, the known users of ``user_rows [Q]`` (rows of ``user_ids.json``,
        ``-1``: none) are ranked by the index's score plus the weighted co-visitation score over
        the index's candidates and the items their walks reach (:func:`~twotower.covisit.top_k_with_walks`)."""
        if len(queries) == 0:
            return []
        extra = max((len(e) for e in exclude), default=0)
        scores, _, positions = self.index.search(queries, min(k + extra, len(self.item_ids)))
        walks = self._walks(np.full(len(queries), -1) if user_rows is None else user_rows)
        results = []
        for q in range(len(queries)):
            if walks[q] is not None:  # an item the index did not return scores at most the last one it did
                found = positions[q] >= 0
                bound = float(scores[q][found].min()) if 0 < found.sum() < len(self.item_ids) else -np.inf
                rows, best = top_k_with_walks(queries[q], self.indexed, positions[q], bound, *walks[q], self.covisit_weight, exclude[q], k)
            else:
                keep = positions[q] >= 0
                if len(exclude[q]):
                    keep &= ~np.isin(positions[q], exclude[q])
                rows, best = positions[q][keep][:k], scores[q][keep][:k]
            results.append([self._item(int(r), float(s), rank) for rank, (r, s) in enumerate(zip(rows, best), start=1)])
        return results

    def _walks(self, user_rows: np.ndarray) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Per user row (``-1``: not a known user): ``(item rows [S], co-visitation scores [S])``
        of the items its walks reach, or ``None`` (no weight, no walks)."""
        walks: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(user_rows)
        if self.covisit is None:
            return walks
        known = np.flatnonzero(user_rows >= 0)
        ends = self.covisit.sparse_scores(user_rows[known])  # [K, N] CSR
        ends.sort_indices()  # each row's items ascending, as top_k_with_walks looks them up
        for row, q in enumerate(known):
            span = slice(ends.indptr[row], ends.indptr[row + 1])
            if span.start < span.stop:
                walks[q] = (ends.indices[span], ends.data[span])
        return walks

    def recommend(self, user_ids: list[str] = (), new_users: list[dict] = (), k: int = 10, exclude_seen: bool = True) -> list[list[dict]]:
        """Top-``k`` items for each known user (raw ids, as strings; vectors computed at load),
        then for each new user (raw features; one tower pass for all of them), in one index
        search. A known user's training items are left out unless ``exclude_seen`` is false;
        a new user has none."""
        user_ids, new_users = [str(u) for u in user_ids], list(new_users)
        parts = []
        if user_ids:
            parts.append(self.encode_known(user_ids))
        if new_users:
            parts.append(self.encode_new(new_users))
        if not parts:
            return []
        none = np.empty(0, dtype=np.int64)
        exclude = [self.seen(u) if exclude_seen else none for u in user_ids] + [none] * len(new_users)
        user_rows = np.array([self.user_row[u] for u in user_ids] + [-1] * len(new_users), dtype=np.int64)
        return self.search(np.concatenate(parts), k, exclude, user_rows)

    def similar(self, item_id: str, k: int = 10) -> list[dict]:
        """The ``k`` items nearest to ``item_id`` by item vector (itself left out)."""
        row = self.item_row.get(str(item_id))
        if row is None:
            raise KeyError(f"unknown item id {item_id!r}; known ids include {[str(i) for i in self.item_ids[:5]]} ({len(self.item_ids)} items)")
        query = self.item_vectors[row : row + 1]
        if self.prior is not None:  # the index's prior column weighted 0: the items' own similarity
            query = np.concatenate([query, np.zeros((1, 1), dtype=query.dtype)], axis=1)
        return self.search(query, k, [np.array([row])])[0]

    def metadata(self) -> dict:
        source = self.manifest.get("source", {})
        return {
            "model": source.get("model"),
            "checkpoint": source.get("checkpoint"),
            "index": {"kind": self.index.kind, "params": dict(self.index.params), "count": len(self.index), "dimension": self.index.dim},
            "exported": self.manifest.get("created"),
            "users": len(self.user_ids),
            "items": len(self.item_ids),
            "user_features": [f["name"] for f in self.spec["fitted"] if f["kind"] != "id"],
            "popularity_prior": None if self.prior is None else asdict(self.prior),
            "covisit_weight": self.covisit_weight,
            "package_version": twotower.__version__,
        }

    def _item(self, row: int, score: float, rank: int) -> dict:
        item_id = self.item_ids[row]
        out = {"rank": rank, "id": item_id, "score": score}
        if self.titles is not None:
            out["title"] = self.titles[row]
        return out
