"""From an :class:`InteractionData` to tensors: split, positives, dense indices,
fitted features, popularity counts and evaluation sets.

Everything data-derived that the model needs (vocabulary sizes, item counts)
is produced here from the training split only; nothing is typed into config.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from twotower.data.features import FeatureSpec, feature_columns, fit_and_encode
from twotower.data.positives import PositiveLookup
from twotower.data.schema import MULTI_VALUE_SEPARATOR, SPLIT_NAMES, InteractionData
from twotower.data.splits import random_split, split_interactions
from twotower.errors import DataError


@dataclass
class SplitArrays:
    """One split's interactions as dense indices; all tensors ``[n]``."""

    user: torch.Tensor  # long
    item: torch.Tensor  # long
    rating: torch.Tensor  # float32, NaN where unknown
    positive: torch.Tensor  # bool
    time: torch.Tensor | None = None  # float64 seconds; None when the data has no timestamps

    def positives(self) -> "SplitArrays":
        m = self.positive
        return SplitArrays(self.user[m], self.item[m], self.rating[m], self.positive[m], None if self.time is None else self.time[m])


@dataclass
class EvalSet:
    """Users to rank the whole catalogue for, with their held-out positives
    (targets) and the items to mask (already seen), both in CSR form:
    user ``users[u]`` has targets ``target_items[target_ptr[u]:target_ptr[u+1]]``."""

    users: torch.Tensor  # [U] long
    target_ptr: torch.Tensor  # [U+1] long
    target_items: torch.Tensor  # [T] long
    seen_ptr: torch.Tensor  # [U+1] long
    seen_items: torch.Tensor  # [S] long
    warm: torch.Tensor  # [U] bool: the user has training interactions


@dataclass
class PreparedData:
    name: str
    user_ids: pd.Index  # dense user index -> raw id
    item_ids: pd.Index  # dense item index -> raw id (the whole catalogue)
    splits: dict[str, SplitArrays]
    user_features: dict[str, torch.Tensor]  # each [num_users, ...]
    item_features: dict[str, torch.Tensor]  # each [num_items, ...]
    fitted: dict[str, list[dict]]  # {"user": [...], "item": [...]}: the artifact saved as features.json
    item_counts: torch.Tensor  # [num_items] float: training positives per item
    is_train_positive: PositiveLookup  # (user, item) -> whether it is a training positive
    eval_sets: dict[str, EvalSet]  # "val", "test"
    item_titles: list[str] | None = None

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def _positives_before(self, split: str) -> list[SplitArrays]:
        """The positives observed before ``split`` is ranked: the training ones for ``val``;
        training and validation ones for ``test`` (and for serving)."""
        return [self.splits["train"].positives()] + ([self.splits["val"].positives()] if split == "test" else [])

    def clicks_before(self, split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(items [M], times [M] or None)`` of the positives observed before ``split``."""
        parts = self._positives_before(split)
        times = None if any(p.time is None for p in parts) else torch.cat([p.time for p in parts])
        return torch.cat([p.item for p in parts]), times

    def pairs_before(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(users [M], items [M])`` of the positives observed before ``split``."""
        parts = self._positives_before(split)
        return torch.cat([p.user for p in parts]), torch.cat([p.item for p in parts])


def present(ids: np.ndarray, size: int) -> np.ndarray:
    """The sorted distinct values of dense ids in ``[0, size)`` (``np.unique``, in linear
    time: a hash-based unique over 10M ids took seconds)."""
    return np.flatnonzero(np.bincount(ids, minlength=size))


def _csr(owner: np.ndarray, values: np.ndarray, rows: np.ndarray, num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Group ``values`` by ``owner`` for the owners listed in ``rows``.

    ``owner``/``values``: ``[n]``; ``rows``: ``[U]`` dense owner ids;
    returns (ptr ``[U+1]``, items ``[m]``), deduplicated per row."""
    position = np.full(num_rows, -1, dtype=np.int64)
    position[rows] = np.arange(len(rows))
    pos = position[owner]
    keep = pos >= 0
    # Sort one packed key and drop repeats (np.unique over rows of pairs is ~10x slower at 10M).
    num_values = int(values.max()) + 1 if len(values) else 1
    keys = np.sort(pos[keep].astype(np.int64) * num_values + values[keep])
    keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if len(keys) else keys
    counts = np.bincount(keys // num_values, minlength=len(rows))
    ptr = np.concatenate([[0], np.cumsum(counts)])
    return torch.as_tensor(ptr, dtype=torch.long), torch.as_tensor(keys % num_values, dtype=torch.long)


def positive_mask(ratings: np.ndarray, threshold: float | None, name: str) -> np.ndarray:
    """A rating at or above ``threshold`` is a click; ``None`` makes every interaction one."""
    if threshold is None:
        return np.ones(len(ratings), dtype=bool)
    if np.isnan(ratings).all():
        raise DataError(
            f"{name}: positive_threshold={threshold} but the interactions carry no rating or label; "
            "set data.positive_threshold=null to treat every interaction as a positive"
        )
    return ratings >= threshold


def training_histories(train: pd.DataFrame, positive: np.ndarray, max_len: int | None) -> pd.Series:
    """Each user's training positives, oldest first, the last ``max_len`` of them,
    ``|``-joined (a multi-valued feature). ``train``: the training interactions;
    ``positive``: bool ``[n]`` aligned with them. Indexed by user id."""
    pos = train.loc[positive, ["user_id", "item_id", "timestamp"]].sort_values("timestamp", kind="stable")
    if max_len is not None:
        pos = pos.groupby("user_id", sort=False).tail(max_len)
    items = pos["item_id"].astype(str)
    return items.groupby(pos["user_id"], sort=False).agg(MULTI_VALUE_SEPARATOR.join)


def _expects_validation(split_kind: str, val_ratio: float, data: InteractionData) -> bool:
    """Whether the split was asked for a validation part (``val_ratio=0`` asks for none, with a
    temporal or random split, or a predefined one without a validation file)."""
    if data.predefined_split is not None:
        return len(data.predefined_split["val"]) > 0 or val_ratio > 0
    return split_kind not in ("temporal", "random") or val_ratio > 0


def prepare(
    data: InteractionData,
    user_specs: list[FeatureSpec],
    item_specs: list[FeatureSpec],
    positive_threshold: float | None,
    split_kind: str,
    val_ratio: float = 0.1,
    test_ratio: float = 0.1,
    seed: int = 0,
    min_val_per_user: int = 0,
) -> PreparedData:
    """Split ``data`` and turn it into tensors.

    Refused (:class:`DataError`): a training split where no user has a positive (nothing to
    learn), a test split without a positive, and a validation split without one unless none
    was asked for (``val_ratio=0`` with a temporal or random split). A user with no training
    interaction but positives in validation or test is a *cold* user: evaluated like the
    others from their features (their ID maps to the unknown row), flagged ``warm=False`` in
    the evaluation sets, and reported apart (``test/cold/...``, ``test/num_cold_users``).
    """
    inter = data.interactions.reset_index(drop=True)
    is_pos = positive_mask(inter["rating"].to_numpy(dtype=np.float64), positive_threshold, data.name)
    if split_kind == "predefined" or data.predefined_split is not None:
        if data.predefined_split is None:
            raise DataError(f"{data.name}: split.kind='predefined' needs train/val/test files in the data source")
        parts = {k: v.reset_index(drop=True) for k, v in data.predefined_split.items()}
        if len(parts["val"]) == 0 and val_ratio > 0:
            # No validation file (the LightGCN benchmarks): a share of each user's training
            # interactions, seeded; test stays as published.
            carved = random_split(parts["train"], val_ratio, 0.0, seed, min_val_per_user)
            parts.update(train=carved["train"].reset_index(drop=True), val=carved["val"].reset_index(drop=True))
    else:
        parts = split_interactions(
            inter.assign(_pos=is_pos), split_kind, is_pos, val_ratio, test_ratio, seed, data.has_timestamps, min_val_per_user
        )
        parts = {k: v.drop(columns="_pos") for k, v in parts.items()}

    # Every id anywhere (feature tables included) gets a dense index; the catalogue is every item.
    all_users = pd.concat([p["user_id"] for p in parts.values()] + ([data.users.index.to_series()] if data.users is not None else []))
    all_items = pd.concat([p["item_id"] for p in parts.values()] + ([data.items.index.to_series()] if data.items is not None else []))
    user_ids = pd.Index(pd.unique(all_users.to_numpy()), name="user_id")
    item_ids = pd.Index(pd.unique(all_items.to_numpy()), name="item_id")

    splits = {}
    for name in SPLIT_NAMES:
        p = parts[name]
        rating = p["rating"].to_numpy(dtype=np.float64)
        splits[name] = SplitArrays(
            user=torch.as_tensor(user_ids.get_indexer(p["user_id"]), dtype=torch.long),
            item=torch.as_tensor(item_ids.get_indexer(p["item_id"]), dtype=torch.long),
            rating=torch.tensor(rating, dtype=torch.float32),
            positive=torch.as_tensor(positive_mask(rating, positive_threshold, f"{data.name} {name}"), dtype=torch.bool),
            time=torch.as_tensor(p["timestamp"].to_numpy(dtype=np.float64)) if data.has_timestamps and "timestamp" in p else None,
        )
    train = splits["train"]
    if len(train.user) == 0 or not bool(train.positive.any()):
        # No user has training data: nothing to learn from. (Some users without any is normal: they are cold.)
        raise DataError(
            f"{data.name}: no user has a positive interaction in the training split ({len(train.user)} training "
            f"interactions, positive_threshold={positive_threshold}); expected at least one; check "
            "data.positive_threshold and the split"
        )

    # Fit features on the entities seen in training only.
    train_user_rows = present(train.user.numpy(), len(user_ids))
    train_item_rows = present(train.item.numpy(), len(item_ids))
    user_frame = feature_columns(data.users, user_ids, user_specs, "user_id")
    for spec in user_specs:
        if spec.kind == "history":
            user_frame[spec.name] = training_histories(parts["train"], splits["train"].positive.numpy(), spec.max_len).reindex(user_ids).to_numpy()
    item_frame = feature_columns(data.items, item_ids, item_specs, "item_id")
    user_fitted, user_features = fit_and_encode(user_specs, user_frame, train_user_rows)
    item_fitted, item_features = fit_and_encode(item_specs, item_frame, train_item_rows)

    num_items = len(item_ids)
    pos = train.positives()
    item_counts = torch.bincount(pos.item, minlength=num_items).float()

    warm = np.zeros(len(user_ids), dtype=bool)
    warm[train_user_rows] = True
    eval_sets = {}
    seen_u, seen_i = train.user.numpy(), train.item.numpy()
    for name in ("val", "test"):
        targets = splits[name].positives()
        users = present(targets.user.numpy(), len(user_ids))
        target_ptr, target_items = _csr(targets.user.numpy(), targets.item.numpy(), users, len(user_ids))
        seen_ptr, seen_items = _csr(seen_u, seen_i, users, len(user_ids))
        eval_sets[name] = EvalSet(
            users=torch.as_tensor(users, dtype=torch.long),
            target_ptr=target_ptr,
            target_items=target_items,
            seen_ptr=seen_ptr,
            seen_items=seen_items,
            warm=torch.as_tensor(warm[users]),
        )
        if len(users) == 0 and (name == "test" or _expects_validation(split_kind, val_ratio, data)):
            raise DataError(
                f"{data.name}: the {name} split has no positive interaction ({len(splits[name].user)} {name} "
                f"interactions, positive_threshold={positive_threshold}), so no user can be evaluated on it; "
                "expected at least one; check data.positive_threshold and the split ratios"
            )
        # For test, validation interactions are seen too.
        seen_u = np.concatenate([seen_u, splits["val"].user.numpy()])
        seen_i = np.concatenate([seen_i, splits["val"].item.numpy()])

    titles = None
    if data.items is not None and "title" in data.items.columns:
        titles = data.items["title"].reindex(item_ids).fillna("").astype(str).tolist()
    return PreparedData(
        name=data.name,
        user_ids=user_ids,
        item_ids=item_ids,
        splits=splits,
        user_features=user_features,
        item_features=item_features,
        fitted={"user": user_fitted, "item": item_fitted},
        item_counts=item_counts,
        is_train_positive=PositiveLookup(pos.user, pos.item, len(user_ids), num_items),
        eval_sets=eval_sets,
        item_titles=titles,
    )
