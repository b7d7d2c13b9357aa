"""Feature transforms: fitted on the training split only, then applied unchanged.

A tower's features are declared as a list of specs (see ``conf/data/*.yaml``):
  - ``id``: the entity's own id, one embedding row per id seen in training;
  - ``categorical``: a vocabulary of the training values, or ``hash_buckets: N``;
  - ``multi_categorical``: ``|``-joined values, mean-pooled by the tower;
  - ``history`` (user tower only): the user's training positives, most recent
    ``max_len`` of them (without timestamps: the last in the source's order, which the
    LightGCN files sort by item ID), mean-pooled like a multi-valued feature; built from
    the training split by ``prepare``, and the item being predicted is masked
    out of it in every training batch (else the model learns to look it up);
  - ``continuous``: ``transforms: [normalize]`` (z-score, optionally after
    ``log1p``) and/or ``[bucketize]`` (quantile boundaries, a row per bucket).
Row 0 of every vocabulary and bucket table is the *unknown* row: values unseen
in training, missing values and padding all map there.

``fit_features`` returns plain JSON-able dicts (saved with the run as
``features.json``); ``encode_features`` turns a feature table into tensors
with one row per entity, so a batch is built by indexing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from twotower.data.schema import MULTI_VALUE_SEPARATOR
from twotower.errors import DataError

FEATURE_KINDS = ("id", "categorical", "multi_categorical", "history", "continuous")
POOLED_KINDS = ("multi_categorical", "history")
CONTINUOUS_TRANSFORMS = ("normalize", "bucketize")
BUCKET_SUFFIX = "__bucket"


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    kind: str
    transforms: tuple[str, ...] = ("normalize",)
    log1p: bool = False
    num_buckets: int = 10
    hash_buckets: int | None = None
    max_len: int | None = None  # multi-valued kinds: keep at most this many values

    @classmethod
    def from_config(cls, raw: dict, tower: str) -> "FeatureSpec":
        raw = dict(raw)
        unknown = set(raw) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise DataError(f"{tower} feature {raw.get('name')!r}: unknown key(s) {sorted(unknown)}")
        if "transforms" in raw:
            raw["transforms"] = tuple(raw["transforms"])
        spec = cls(**raw)
        spec.validate(tower)
        return spec

    def validate(self, tower: str) -> None:
        where = f"{tower} feature {self.name!r}"
        if self.kind not in FEATURE_KINDS:
            raise DataError(f"{where}: kind={self.kind!r}, expected one of {list(FEATURE_KINDS)}")
        if self.kind == "continuous":
            bad = [t for t in self.transforms if t not in CONTINUOUS_TRANSFORMS]
            if bad or not self.transforms:
                raise DataError(f"{where}: transforms={list(self.transforms)}, expected a non-empty subset of {list(CONTINUOUS_TRANSFORMS)}")
            if self.num_buckets < 2:
                raise DataError(f"{where}: num_buckets={self.num_buckets}, expected >= 2")
        if self.hash_buckets is not None and (self.kind != "categorical" or self.hash_buckets < 1):
            raise DataError(f"{where}: hash_buckets applies to categorical features and must be >= 1")
        if self.max_len is not None and (self.kind not in POOLED_KINDS or self.max_len < 1):
            raise DataError(f"{where}: max_len applies to {list(POOLED_KINDS)} features and must be >= 1")
        if self.kind == "history" and tower != "user":
            raise DataError(f"{where}: kind 'history' (the user's past items) belongs to the user tower")


def parse_feature_specs(raw_specs: list[dict], tower: str, id_name: str) -> list[FeatureSpec]:
    specs = [FeatureSpec.from_config(dict(s), tower) for s in raw_specs]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise DataError(f"{tower} features: duplicate names in {names}")
    for s in specs:
        if s.kind == "id" and s.name != id_name:
            raise DataError(f"{tower} feature {s.name!r}: kind 'id' is only for the column {id_name!r}")
    return specs


def _stable_hash(values: pd.Series, buckets: int) -> np.ndarray:
    # pandas' hash is keyed by a fixed constant, so it is the same in every process (unlike hash()).
    hashed = pd.util.hash_pandas_object(values.astype(str), index=False).to_numpy()
    return (hashed % np.uint64(buckets)).astype(np.int64) + 1


def _as_str(values: pd.Series) -> pd.Series:
    return values.astype(object).where(values.notna(), None).map(lambda v: None if v is None else str(v))


def _split_multi(values: pd.Series) -> list[list[str]]:
    return [[] if v is None or v == "" else str(v).split(MULTI_VALUE_SEPARATOR) for v in _as_str(values)]


def fit_feature(spec: FeatureSpec, values: pd.Series) -> dict:
    """Fit one feature on its training values; returns a JSON-able artifact.

    ``values``: one value per training entity (for ``id``, the ids themselves).
    """
    fitted = {"name": spec.name, "kind": spec.kind}
    if spec.kind in ("id", "categorical"):
        if spec.hash_buckets:
            fitted.update(hash_buckets=spec.hash_buckets, cardinality=spec.hash_buckets + 1)
        else:
            vocab = sorted(set(_as_str(values).dropna()))
            fitted.update(vocab=vocab, cardinality=len(vocab) + 1)
    elif spec.kind in POOLED_KINDS:
        rows = _split_multi(values)
        vocab = sorted({v for row in rows for v in row})
        max_len = max((len(row) for row in rows), default=1)
        if spec.max_len is not None:
            max_len = min(max_len, spec.max_len)
        fitted.update(vocab=vocab, cardinality=len(vocab) + 1, max_len=max(1, max_len))
    else:
        x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        x = x[np.isfinite(x)]
        if len(x) == 0:
            raise DataError(f"continuous feature {spec.name!r}: no finite value in the training split")
        if spec.log1p and (x < 0).any():
            raise DataError(f"continuous feature {spec.name!r}: log1p needs values >= 0, found {x.min()}")
        fitted.update(transforms=list(spec.transforms), log1p=spec.log1p)
        if "normalize" in spec.transforms:
            z = np.log1p(x) if spec.log1p else x
            std = float(z.std())
            fitted.update(mean=float(z.mean()), std=std if std > 0 else 1.0)
        if "bucketize" in spec.transforms:
            qs = np.quantile(x, np.arange(1, spec.num_buckets) / spec.num_buckets)
            boundaries = sorted(set(float(q) for q in qs))
            # bucket k+1 holds boundaries[k-1] <= x < boundaries[k]; row 0 is for missing values
            fitted.update(boundaries=boundaries, cardinality=len(boundaries) + 2)
    return fitted


def encode_feature(fitted: dict, values: pd.Series) -> dict[str, torch.Tensor]:
    """Apply a fitted feature to values of every entity. Returns tensors keyed by
    input name: ``[N]`` long for ids/categoricals and buckets, ``[N, max_len]``
    long (0-padded) for multi-valued, ``[N]`` float for normalized values."""
    name, kind = fitted["name"], fitted["kind"]
    if kind in ("id", "categorical"):
        if "hash_buckets" in fitted:
            codes = _stable_hash(values, fitted["hash_buckets"])
            codes[values.isna().to_numpy()] = 0
        else:
            codes = pd.Index(fitted["vocab"]).get_indexer(_as_str(values)) + 1  # -1 (unseen) -> 0
        return {name: torch.as_tensor(codes, dtype=torch.long)}
    if kind in POOLED_KINDS:
        index = pd.Index(fitted["vocab"])
        rows = _split_multi(values)
        max_len = fitted["max_len"]
        kept = [row[:max_len] for row in rows]
        lengths = np.fromiter((len(row) for row in kept), dtype=np.int64, count=len(kept))
        # One vocabulary lookup for all entities' values at once (a lookup per entity took
        # minutes on a 1M-item catalogue), then each code goes to (entity, position).
        flat = [v for row in kept for v in row]
        codes = index.get_indexer(flat) + 1 if flat else np.zeros(0, dtype=np.int64)
        entity = np.repeat(np.arange(len(kept)), lengths)
        position = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out = np.zeros((len(rows), max_len), dtype=np.int64)
        out[entity, position] = codes
        return {name: torch.as_tensor(out)}
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    missing = ~np.isfinite(x)
    out: dict[str, torch.Tensor] = {}
    if "mean" in fitted:
        z = np.log1p(np.clip(x, 0, None)) if fitted["log1p"] else x
        z = (z - fitted["mean"]) / fitted["std"]
        out[name] = torch.as_tensor(np.where(missing, 0.0, z), dtype=torch.float32)  # missing -> the mean
    if "boundaries" in fitted:
        buckets = np.searchsorted(np.asarray(fitted["boundaries"]), np.where(missing, 0, x), side="right") + 1
        out[name + BUCKET_SUFFIX] = torch.as_tensor(np.where(missing, 0, buckets), dtype=torch.long)
    return out


def feature_columns(table: pd.DataFrame | None, ids: pd.Index, specs: list[FeatureSpec], id_name: str) -> pd.DataFrame:
    """One row per entity in ``ids`` order with every declared feature's raw value;
    a feature missing from the table is an error naming it."""
    frame = pd.DataFrame(index=ids)
    for spec in specs:
        if spec.kind == "id":
            frame[spec.name] = ids.to_numpy()
        elif spec.kind == "history":
            continue  # built from the training split by prepare()
        elif table is None or spec.name not in table.columns:
            found = [] if table is None else list(table.columns)
            raise DataError(f"feature {spec.name!r} is declared but the {id_name[:-3]} table has no such column (found {found})")
        else:
            values = table[spec.name].reindex(ids)
            if spec.kind == "continuous":
                _check_numeric(values, spec.name, id_name[:-3])
            frame[spec.name] = values.to_numpy()
    return frame


def _check_numeric(values: pd.Series, name: str, entity: str) -> None:
    """A continuous feature's values (indexed by entity id) must be finite numbers or missing:
    a word among numbers is a wrong type, not a missing value."""
    if pd.api.types.is_bool_dtype(values.dtype):
        return
    present = values.notna().to_numpy()
    if pd.api.types.is_numeric_dtype(values.dtype):
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        text = values.astype(object).where(values.notna(), "").astype(str).str.strip()
        present = present & (text != "").to_numpy()
        numbers = pd.to_numeric(text.where(text != ""), errors="coerce").to_numpy(dtype=np.float64)
    bad = present & ~np.isfinite(numbers)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        count = int(bad.sum())
        key, value = (v.item() if isinstance(v, np.generic) else v for v in (values.index[first], values.iloc[first]))
        raise DataError(
            f"continuous feature {name!r}: {entity} {key!r} has the value {value!r}, "
            f"not a finite number; expected a number or an empty cell (missing) "
            f"({count} {entity}{'s have' if count > 1 else ' has'} this problem, the first shown)"
        )


def fit_and_encode(
    specs: list[FeatureSpec], frame: pd.DataFrame, train_rows: np.ndarray
) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Fit every feature on ``frame.iloc[train_rows]`` (the entities seen in
    training) and encode all rows of ``frame``."""
    fitted, encoded = [], {}
    for spec in specs:
        f = fit_feature(spec, frame[spec.name].iloc[train_rows])
        fitted.append(f)
        encoded.update(encode_feature(f, frame[spec.name]))
    return fitted, encoded
