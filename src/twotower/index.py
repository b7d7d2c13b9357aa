"""The item index: item vectors in a FAISS index, searched by inner product.

Retrieval is affordable only because the score factorizes as
``<f(user), g(item)>`` (reference section 1): the item vectors ``g(item)`` are
computed once, offline, and put into a nearest-neighbour index; at request time
the user tower runs once and the index returns the top-K. Only a factorizing
model may feed this index (``twotower.models.early_fusion.require_factorized``);
this module itself knows nothing about models.

Kinds (``config["kind"]``; default parameters in :data:`KINDS`):

- ``exact``: ``IndexFlatIP``, brute force; the reference every ANN kind is
  measured against (reference section 7).
- ``hnsw``: ``IndexHNSWFlat``; parameters ``M``, ``ef_construction``, ``ef_search``. No
  training. Inner-product search is reduced to nearest-neighbour search (:func:`lift_items`):
  an HNSW graph built on inner products finds the best items well only when they share one
  norm (unit vectors), and a popularity prior's coordinate (``twotower.prior``) breaks that.
- ``ivfpq``: ``IndexIVFPQ`` with inner product (a flat inner-product coarse
  quantizer); parameters ``nlist``, ``m`` (sub-quantizers, must divide the
  dimension), ``nbits`` (bits per sub-quantizer code), ``nprobe``. Trained on
  the item vectors themselves, so it needs at least ``39 * max(nlist, 2**nbits)``
  of them (FAISS's own minimum of 39 training points per centroid).

Search returns raw item ids (ints or strings, as given), scores and positions
(rows of the vectors the index was built from). On disk an index is a folder:
``index.faiss`` (``faiss.write_index``), ``ids.json`` and ``manifest.json``;
nothing is ever pickled.

Pure: numpy, torch and faiss only (no Lightning, no Hydra).

Why one module of about 500 lines: :class:`ItemIndex` builds, searches, saves and loads
three FAISS kinds that share the checks of their parameters and of their files, and the
quality measure against exact search (at the end) is what export and the tests share.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from twotower.fsutil import fsync_path, swap_in
from twotower.topk import chunked_top_k

FORMAT = "twotower-item-index"
FORMAT_VERSION = 2  # 2: hnsw searches lifted vectors by L2 (max_norm in the manifest)
MANIFEST_FILE = "manifest.json"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.json"
FILES = (MANIFEST_FILE, INDEX_FILE, IDS_FILE)

#: FAISS's minimum of training points per centroid (below it, it warns; below 1, it fails).
MIN_POINTS_PER_CENTROID = 39

#: Every kind, its default parameters (``twotower-export --param KEY=VALUE`` overrides them).
KINDS: dict[str, dict[str, int]] = {
    "exact": {},
    "hnsw": {"M": 32, "ef_construction": 200, "ef_search": 128},
    "ivfpq": {"nlist": 1024, "m": 8, "nbits": 8, "nprobe": 32},
}

#: Parameters that only change how the index is searched (settable after building or loading).
SEARCH_PARAMS = {"hnsw": ("ef_search",), "ivfpq": ("nprobe",)}


# ----------------------------------------------------------------------------- inputs


def _as_matrix(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    """A C-contiguous float32 ``[rows, D]`` numpy array with finite values; else ``ValueError``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name}: expected a numeric array, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array [rows, dim], got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name}: dimension mismatch, got vectors of dimension {x.shape[1]}, the index holds dimension {dim}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.size and not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise ValueError(f"{name}: {len(bad)} row(s) hold NaN or infinite values (first rows: {bad[:5].tolist()})")
    return x


def _as_ids(ids: Any, count: int) -> np.ndarray:
    """Raw item ids as an int64 or unicode numpy array of length ``count``, all distinct."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)):
        raise TypeError(f"ids: expected a list or 1-D array of raw item ids (int or str), got {type(ids).__name__}")
    if isinstance(ids, np.ndarray) and ids.ndim != 1:
        raise ValueError(f"ids: expected a 1-D array of raw item ids, got shape {ids.shape}")
    if isinstance(ids, np.ndarray) and np.issubdtype(ids.dtype, np.integer):
        values = ids.astype(np.int64)  # fast path: no per-id type check needed
    else:
        values = list(ids.tolist() if isinstance(ids, np.ndarray) else ids)
    if len(values) != count:
        raise ValueError(f"ids: got {len(values)} ids for {count} item vectors; expected one id per vector")
    if isinstance(values, np.ndarray):
        arr = values
    elif all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values):
        arr = np.asarray(values, dtype=np.int64) if values else np.zeros(0, np.int64)
    elif all(isinstance(v, (str, np.str_)) for v in values):
        arr = np.asarray(values, dtype=str)
    else:
        kinds = sorted({type(v).__name__ for v in values})
        raise TypeError(f"ids: every raw id must be an int, or every one a str; got types {kinds}")
    uniq, counts = np.unique(arr, return_counts=True)
    if len(uniq) != len(arr):
        dup = uniq[counts > 1][:5].tolist()
        raise ValueError(f"ids: {int((counts > 1).sum())} id(s) occur more than once (e.g. {dup}); each item needs one id")
    return arr


def _positive_int(kind: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"index kind {kind!r}: parameter {key}={value!r} must be a positive integer")
    return int(value)


def resolve_config(config: Mapping[str, Any] | str | None) -> tuple[str, dict[str, int]]:
    """``{"kind": ..., **params}`` (or just a kind name) -> ``(kind, params with defaults)``.

    Unknown kinds and unknown parameter names are refused (a typo would
    otherwise silently fall back to a default)."""
    if config is None:
        config = {"kind": "exact"}
    elif isinstance(config, str):
        config = {"kind": config}
    elif not isinstance(config, Mapping):
        raise TypeError(f"index config: expected a mapping with a 'kind' key, got {type(config).__name__}")
    config = dict(config)
    kind = config.pop("kind", None)
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {sorted(KINDS)}")
    unknown = sorted(set(config) - set(KINDS[kind]))
    if unknown:
        expected = f"expected some of {sorted(KINDS[kind])}" if KINDS[kind] else "this kind takes no parameters"
        raise ValueError(f"index kind {kind!r}: unknown parameter(s) {unknown}; {expected}")
    params = {**KINDS[kind], **config}
    params = {k: _positive_int(kind, k, v) for k, v in params.items()}
    if kind == "hnsw" and params["M"] < 2:
        raise ValueError(f"index kind 'hnsw': M={params['M']} must be at least 2")
    if kind == "ivfpq" and not 1 <= params["nbits"] <= 16:
        raise ValueError(f"index kind 'ivfpq': nbits={params['nbits']} must be between 1 and 16")
    return kind, params


def ivfpq_min_points(nlist: int, nbits: int) -> int:
    """Training points an IVF-PQ index needs: 39 per coarse centroid and per PQ centroid."""
    return MIN_POINTS_PER_CENTROID * max(nlist, 2**nbits)


def _check_ivfpq(params: dict[str, int], count: int, dim: int) -> None:
    nlist, m, nbits = params["nlist"], params["m"], params["nbits"]
    if dim % m:
        divisors = [d for d in range(1, dim + 1) if dim % d == 0]
        raise ValueError(f"index kind 'ivfpq': m={m} sub-quantizers must divide the dimension {dim}; choose m in {divisors}")
    need = ivfpq_min_points(nlist, nbits)
    if count < need:
        max_nlist = count // MIN_POINTS_PER_CENTROID
        max_nbits = int(math.floor(math.log2(max(1, max_nlist))))
        hint = (
            f"use nlist <= {max_nlist} and nbits <= {max_nbits} (e.g. nlist ~ 4*sqrt(N) = {int(4 * math.sqrt(count))}, capped), "
            "or the 'hnsw' or 'exact' kind for a catalogue this small"
            if max_nlist >= 1 and max_nbits >= 1
            else "use the 'hnsw' or 'exact' kind for a catalogue this small"
        )
        raise ValueError(
            f"index kind 'ivfpq': {count} item vectors are too few to train nlist={nlist}, nbits={nbits}: "
            f"it needs at least {MIN_POINTS_PER_CENTROID} * max(nlist, 2**nbits) = {need} points; {hint}"
        )


# ----------------------------------------------------------------------------- the index


class ItemIndex:
    """Item vectors ``[N, D]`` and their raw ids in a FAISS inner-product index.

    ``ItemIndex(vectors, ids, {"kind": "hnsw", "M": 32, ...})`` builds it (and
    trains it, for ``ivfpq``); ``config`` may also be just a kind name, or
    ``None`` for ``exact``. Missing parameters take the defaults in
    :data:`KINDS`. ``vectors`` is a float numpy array or torch tensor
    (converted to float32); ``ids`` one raw id (int or str) per row, distinct.
    """

    def __init__(self, vectors: Any, ids: Any, config: Mapping[str, Any] | str | None = None):
        kind, params = resolve_config(config)
        vectors = _as_matrix(vectors, "item vectors")
        count, dim = vectors.shape
        if count == 0 or dim == 0:
            raise ValueError(f"item vectors: expected at least one vector of dimension >= 1, got shape {vectors.shape}")
        self.ids = _as_ids(ids, count)
        self.kind, self.params, self.dim = kind, params, dim
        if kind == "exact":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            self.max_norm = float(np.linalg.norm(vectors, axis=1).max())
            vectors = lift_items(vectors, self.max_norm)
            index = faiss.IndexHNSWFlat(dim + 1, params["M"], faiss.METRIC_L2)
            index.hnsw.efConstruction = params["ef_construction"]
        else:
            _check_ivfpq(params, count, dim)
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFPQ(quantizer, dim, params["nlist"], params["m"], params["nbits"], faiss.METRIC_INNER_PRODUCT)
            self._quantizer = quantizer  # keep the quantizer alive as long as the index
            index.train(vectors)
        index.add(vectors)
        self.index = index
        self.source: dict[str, Any] = {}
        self._apply_search_params()

    # -- properties

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def count(self) -> int:
        return len(self)

    @property
    def config(self) -> dict[str, Any]:
        """``{"kind": ..., **params}``: enough to build the same kind of index again."""
        return {"kind": self.kind, **self.params}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"ItemIndex(kind={self.kind!r}, count={len(self)}, dim={self.dim}{', ' + params if params else ''})"

    def set_search_params(self, **params: int) -> ItemIndex:
        """Change search-time parameters (``ef_search`` for hnsw, ``nprobe`` for ivfpq)."""
        allowed = SEARCH_PARAMS.get(self.kind, ())
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            expected = f"expected some of {list(allowed)}" if allowed else "this kind has no search-time parameters"
            raise ValueError(f"index kind {self.kind!r}: {unknown} cannot be set at search time; {expected}")
        for k, v in params.items():
            self.params[k] = _positive_int(self.kind, k, v)
        self._apply_search_params()
        return self

    def _apply_search_params(self) -> None:
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = self.params["ef_search"]
        elif self.kind == "ivfpq":
            self.index.nprobe = min(self.params["nprobe"], self.params["nlist"])

    # -- search

    @property
    def missing_id(self) -> int | str:
        """The id returned where the index found fewer than ``k`` items (``positions == -1``)."""
        return "" if self.ids.dtype.kind == "U" else -1

    def search(self, queries: Any, k: int, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-``k`` items by inner product for each query.

        ``queries``: ``[Q, D]`` (numpy or torch). ``k`` larger than the
        catalogue is clipped to it. Returns numpy ``(scores [Q, k] float32,
        item_ids [Q, k] raw ids, positions [Q, k] int64)``, best first.
        An approximate index may find fewer than ``k`` items for a query
        (e.g. IVF with a small ``nprobe``): those slots have position ``-1``,
        score ``-inf`` and id :attr:`missing_id`.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k={k!r}: expected a positive integer")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
        queries = _as_matrix(queries, "queries", dim=self.dim)
        k = min(int(k), len(self))
        num = len(queries)
        scores = np.empty((num, k), dtype=np.float32)
        positions = np.empty((num, k), dtype=np.int64)
        for start in range(0, num, batch_size):
            stop = min(start + batch_size, num)
            batch = queries[start:stop]
            if self.kind == "hnsw":  # squared distances to the lifted items -> inner products
                distances, positions[start:stop] = self.index.search(lift_queries(batch), k)
                scores[start:stop] = inner_products_from_distances(distances, batch, self.max_norm)
            else:
                scores[start:stop], positions[start:stop] = self.index.search(batch, k)
        missing = positions < 0
        item_ids = self.ids[np.where(missing, 0, positions)]
        if missing.any():
            scores[missing] = -np.inf
            item_ids[missing] = self.missing_id
        return scores, item_ids, positions

    # -- persistence

    def save(self, directory: str | os.PathLike, source: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
        """Write the index to the folder ``directory``: ``index.faiss``,
        ``ids.json`` and ``manifest.json`` (kind, params, dimension, count,
        format version, and ``source``, a free-form JSON-serializable dict:
        e.g. the model config and checkpoint path; by default the ``source``
        the index was loaded with).

        Atomic: everything is written to a temporary sibling folder, then
        renamed, so an interrupted save leaves either no index or the previous
        one. An existing index folder is replaced only with
        ``overwrite=True`` (and only if it holds a manifest: a folder that is
        not an index is never deleted)."""
        target = Path(directory)
        if source is None:
            source = self.source
        if not isinstance(source, Mapping):
            raise TypeError(f"source: expected a dict (e.g. model config, checkpoint path), got {type(source).__name__}")
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "kind": self.kind,
            "params": dict(self.params),
            "metric": "inner_product",
            **({"max_norm": self.max_norm} if self.kind == "hnsw" else {}),
            "dimension": self.dim,
            "count": len(self),
            "id_type": "str" if self.ids.dtype.kind == "U" else "int",
            "files": {"index": INDEX_FILE, "ids": IDS_FILE},
            "faiss_version": faiss.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source": dict(source),
        }
        try:
            manifest_text = json.dumps(manifest, indent=2, default=_json_default)
        except (TypeError, ValueError) as err:
            raise TypeError(f"source: must be JSON-serializable (convert an OmegaConf config with OmegaConf.to_container): {err}") from err
        if target.exists():
            if not overwrite:
                raise FileExistsError(f"{target} exists; pass overwrite=True to replace the index there")
            if not target.is_dir() or not (target / MANIFEST_FILE).is_file():
                raise FileExistsError(f"{target} exists and is not an item index (no {MANIFEST_FILE}); refusing to replace it")
        target.parent.mkdir(parents=True, exist_ok=True)
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = target.parent / f".{target.name}.tmp-{tag}"
        tmp.mkdir()
        try:
            faiss.write_index(self.index, str(tmp / INDEX_FILE))
            _write_text(tmp / IDS_FILE, json.dumps(self.ids.tolist()))
            _write_text(tmp / MANIFEST_FILE, manifest_text)  # last: its presence marks a complete folder
            fsync_path(tmp / INDEX_FILE)
            fsync_path(tmp)
            swap_in(tmp, target)
            fsync_path(target.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ItemIndex:
        """Read an index written by :meth:`save`. Every file must be there and
        the manifest's format version must be this module's; the index must
        agree with the manifest (kind, dimension, count). Nothing is unpickled."""
        folder = Path(directory)
        if not folder.is_dir():
            raise FileNotFoundError(f"item index folder {folder} does not exist")
        missing = [name for name in FILES if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"item index {folder} is incomplete: missing {', '.join(missing)} (expected {', '.join(FILES)})")
        try:
            manifest = json.loads((folder / MANIFEST_FILE).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{folder / MANIFEST_FILE} is not valid JSON: {err}") from err
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError(f"{folder / MANIFEST_FILE} is not an item index manifest (expected format {FORMAT!r})")
        if manifest.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{folder / MANIFEST_FILE}: format version {manifest.get('version')!r} is not supported "
                f"(this code reads version {FORMAT_VERSION}); rebuild the index"
            )
        kind, params = resolve_config({"kind": manifest.get("kind"), **manifest.get("params", {})})
        try:
            ids = json.loads((folder / IDS_FILE).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{folder / IDS_FILE} is not valid JSON: {err}") from err
        try:
            index = faiss.read_index(str(folder / INDEX_FILE))
        except RuntimeError as err:  # FAISS reports a short or corrupt file as a RuntimeError
            raise ValueError(
                f"{folder / INDEX_FILE}: cannot read the FAISS index ({str(err).strip().splitlines()[-1].strip()}); "
                "expected the file ItemIndex.save wrote (is it truncated?)"
            ) from err
        self = cls.__new__(cls)
        self.kind, self.params, self.index = kind, params, index
        self.dim = int(index.d) - (kind == "hnsw")  # hnsw holds the lifted vectors: one more coordinate
        if kind == "hnsw":
            max_norm = manifest.get("max_norm")
            if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not math.isfinite(max_norm) or max_norm < 0:
                raise ValueError(f"item index {folder}: manifest max_norm={max_norm!r}; expected the largest item norm, a number >= 0")
            self.max_norm = float(max_norm)
        self.ids = _as_ids(ids, len(ids))
        expected = {"dimension": self.dim, "count": int(index.ntotal)}
        for key, actual in expected.items():
            if manifest.get(key) != actual:
                raise ValueError(f"item index {folder}: manifest says {key}={manifest.get(key)!r}, {INDEX_FILE} holds {actual}")
        if len(self.ids) != index.ntotal:
            raise ValueError(f"item index {folder}: {IDS_FILE} holds {len(self.ids)} ids for {index.ntotal} vectors")
        expected_type = {"exact": faiss.IndexFlat, "hnsw": faiss.IndexHNSWFlat, "ivfpq": faiss.IndexIVFPQ}[kind]
        expected_metric = faiss.METRIC_L2 if kind == "hnsw" else faiss.METRIC_INNER_PRODUCT
        if not isinstance(index, expected_type) or index.metric_type != expected_metric:
            raise ValueError(f"item index {folder}: {INDEX_FILE} holds a {type(index).__name__} (metric {index.metric_type}), not the {kind!r} index ItemIndex builds")
        self.source = manifest.get("source", {})
        self._apply_search_params()
        return self


def lift_items(vectors: np.ndarray, max_norm: float) -> np.ndarray:
    """``[N, D] -> [N, D + 1]``: each item gets ``sqrt(max_norm^2 - |x|^2)``, so every lifted item
    has norm ``max_norm``; with queries lifted by a 0 (:func:`lift_queries`),
    ``|q - x|^2 = |q|^2 + max_norm^2 - 2 q.x``: the nearest item is the best by inner product."""
    extra = np.sqrt(np.maximum(max_norm**2 - np.einsum("ij,ij->i", vectors, vectors), 0.0))
    return np.ascontiguousarray(np.concatenate([vectors, extra[:, None]], axis=1), dtype=np.float32)


def lift_queries(queries: np.ndarray) -> np.ndarray:
    """``[Q, D] -> [Q, D + 1]``: a 0 appended (see :func:`lift_items`)."""
    return np.ascontiguousarray(np.concatenate([queries, np.zeros((len(queries), 1), queries.dtype)], axis=1))


def inner_products_from_distances(distances: np.ndarray, queries: np.ndarray, max_norm: float) -> np.ndarray:
    """``q.x = (|q|^2 + max_norm^2 - |q - x|^2) / 2`` for squared distances ``[Q, k]`` to lifted items."""
    norms = np.einsum("ij,ij->i", queries.astype(np.float64), queries.astype(np.float64))
    return ((norms[:, None] + max_norm**2 - distances.astype(np.float64)) / 2).astype(np.float32)


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):  # e.g. an OmegaConf DictConfig nested in source
        return dict(value)
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())




# ----------------------------------------------------------------------------- evaluation


def exact_topk(queries: Any, items: Any, k: int, chunk_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force reference: the top-``k`` items by inner product, in torch.

    ``queries [Q, D]``, ``items [N, D]`` (numpy or torch) -> ``(scores [Q, k],
    positions [Q, k])`` as torch tensors, best first; ``k`` is clipped to N.
    Chunks of ``chunk_size`` queries bound the ``[chunk, N]`` score matrix."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k={k!r}: expected a positive integer")
    items_np = _as_matrix(items, "item vectors")
    if len(items_np) == 0:
        raise ValueError("item vectors: expected at least one vector")
    queries_np = _as_matrix(queries, "queries", dim=items_np.shape[1])
    return chunked_top_k(torch.from_numpy(queries_np), torch.from_numpy(items_np), min(int(k), len(items_np)), chunk_size)


def recall_against(approx_positions: Any, exact_positions: Any) -> float:
    """Mean over queries of ``|approx top-k ∩ exact top-k| / k`` (``k``: the
    exact result's width; ``-1`` positions, i.e. missing results, never count)."""
    approx = torch.as_tensor(np.asarray(approx_positions), dtype=torch.long)
    exact = torch.as_tensor(np.asarray(exact_positions), dtype=torch.long)
    if approx.shape[0] != exact.shape[0]:
        raise ValueError(f"recall: {approx.shape[0]} approximate result rows for {exact.shape[0]} exact ones")
    k = exact.shape[1]
    if len(exact) == 0 or k == 0:
        return float("nan")
    hits = torch.zeros(len(exact), dtype=torch.float64)
    for start in range(0, len(exact), 1024):  # bounds the [rows, k, k] comparison
        a, e = approx[start : start + 1024], exact[start : start + 1024]
        hits[start : start + 1024] = ((a[:, :, None] == e[:, None, :]) & (a[:, :, None] >= 0)).any(dim=2).sum(dim=1).double()
    return float((hits / k).mean())


def ann_quality(index: ItemIndex, exact: ItemIndex | Any, queries: Any, k: int, batch_size: int = 4096) -> dict[str, float]:
    """Quality of ``index`` against exact search (reference section 7).

    ``exact``: an exact :class:`ItemIndex` over the same items (same order),
    or the item vectors ``[N, D]`` themselves (then :func:`exact_topk`).
    Returns ``{"recall@k", "recall@<k>", "k", "qps", "search_s", "queries"}``:
    recall of the index's top-k against the exact top-k (mean over queries
    of ``|ann ∩ exact| / k``, ``k`` clipped to the catalogue) and queries per
    second of ``index.search`` (wall clock, whatever threads FAISS uses)."""
    queries = _as_matrix(queries, "queries", dim=index.dim)
    if len(queries) == 0:
        raise ValueError("queries: expected at least one query")
    start = time.perf_counter()
    _, _, approx = index.search(queries, k, batch_size=batch_size)
    elapsed = time.perf_counter() - start
    if isinstance(exact, ItemIndex):
        if exact.kind != "exact":
            raise ValueError(f"ann_quality: the reference must be an 'exact' index, got kind {exact.kind!r}")
        if len(exact) != len(index) or exact.dim != index.dim:
            raise ValueError(f"ann_quality: the reference holds {len(exact)} x {exact.dim} vectors, the index {len(index)} x {index.dim}")
        _, _, truth = exact.search(queries, k, batch_size=batch_size)
    else:
        items = _as_matrix(exact, "exact item vectors", dim=index.dim)
        if len(items) != len(index):
            raise ValueError(f"ann_quality: {len(items)} reference vectors for an index of {len(index)} items")
        _, truth = exact_topk(queries, items, k)
    recall = recall_against(approx, truth)
    k_eff = truth.shape[1]
    return {
        "recall@k": recall,
        f"recall@{k_eff}": recall,
        "k": k_eff,
        "qps": len(queries) / elapsed if elapsed > 0 else float("inf"),
        "search_s": elapsed,
        "queries": len(queries),
    }
