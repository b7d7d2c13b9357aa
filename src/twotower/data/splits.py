"""Train / validation / test splits of an interaction table (pure pandas).

Every function takes the interactions in the platform schema and returns a
dict ``{"train": df, "val": df, "test": df}`` whose rows partition (a subset
of) the input. Vocabularies, statistics and popularity are fitted later on
``train`` only, so nothing here may look at features.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from twotower.errors import DataError


def _check_ratios(val_ratio: float, test_ratio: float) -> None:
    if not (0 <= val_ratio < 1 and 0 <= test_ratio < 1 and val_ratio + test_ratio < 1):
        raise DataError(
            f"split ratios val_ratio={val_ratio}, test_ratio={test_ratio}: expected each in [0, 1) and their sum < 1"
        )


def temporal_split(interactions: pd.DataFrame, val_ratio: float = 0.1, test_ratio: float = 0.1) -> dict[str, pd.DataFrame]:
    """Global temporal split: two cut-off times chosen so that about
    ``val_ratio`` / ``test_ratio`` of the interactions fall after them.

    Every train interaction is no later than every validation one, and every
    validation one no later than every test one (interactions at a cut-off
    time go to the later split). Users who only appear after a cut-off are cold users.
    """
    _check_ratios(val_ratio, test_ratio)
    times = np.sort(interactions["timestamp"].to_numpy())
    n = len(times)
    val_cut = times[min(n - 1, int(np.floor(n * (1 - val_ratio - test_ratio))))]
    test_cut = times[min(n - 1, int(np.floor(n * (1 - test_ratio))))]
    ts = interactions["timestamp"]
    train = interactions[ts < val_cut] if val_ratio > 0 else interactions[ts < test_cut]
    val = interactions[(ts >= val_cut) & (ts < test_cut)] if val_ratio > 0 else interactions.iloc[0:0]
    test = interactions[ts >= test_cut]
    return {"train": train, "val": val, "test": test}


def leave_last_out_split(interactions: pd.DataFrame, is_positive: np.ndarray) -> dict[str, pd.DataFrame]:
    """Per user: the last positive is the test item, the one before it the
    validation item; everything earlier than the validation item is training.

    ``is_positive``: bool array aligned with ``interactions``. Non-positive
    interactions later than the user's validation item are dropped (they
    would reveal the future). Users with fewer than three positives keep all
    of their interactions in training.
    """
    df = interactions.assign(_pos=np.asarray(is_positive, dtype=bool), _row=np.arange(len(interactions)))
    df = df.sort_values(["user_id", "timestamp", "_row"], kind="stable")
    positives = df[df["_pos"]]
    rank_from_end = positives.groupby("user_id", sort=False).cumcount(ascending=False)
    n_pos = positives.groupby("user_id", sort=False)["_pos"].transform("size")
    eligible = n_pos >= 3
    test_rows = positives.loc[eligible & (rank_from_end == 0), "_row"]
    val_rows = positives.loc[eligible & (rank_from_end == 1), "_row"]
    val_time = positives.loc[eligible & (rank_from_end == 1)].set_index("user_id")["timestamp"]
    held_out = set(test_rows) | set(val_rows)
    user_val_time = df["user_id"].map(val_time)
    keep_train = ~df["_row"].isin(held_out) & (user_val_time.isna() | (df["timestamp"] <= user_val_time))
    # A non-positive at the same second as the validation item is ambiguous; keep only strictly earlier ones.
    keep_train &= df["_pos"] | user_val_time.isna() | (df["timestamp"] < user_val_time)
    rows = {"train": df.loc[keep_train, "_row"], "val": val_rows, "test": test_rows}
    return {name: interactions.iloc[np.sort(r.to_numpy())] for name, r in rows.items()}


def random_split(
    interactions: pd.DataFrame, val_ratio: float = 0.1, test_ratio: float = 0.1, seed: int = 0, min_val_per_user: int = 0
) -> dict[str, pd.DataFrame]:
    """Random per-user ratio split (RecBole's protocol): each user's
    interactions are shuffled with ``seed``; ``floor(n * test_ratio)`` go to
    test, ``floor(n * val_ratio)`` to validation, the rest to training.

    ``min_val_per_user`` (with ``val_ratio > 0``): each user gets at least that many validation
    interactions as long as one stays in training. ``floor`` gives none to a user with fewer
    than ``1 / val_ratio`` interactions, so validation would average over the heavier users
    only while test averages over all of them.
    """
    _check_ratios(val_ratio, test_ratio)
    if isinstance(min_val_per_user, bool) or not isinstance(min_val_per_user, int) or min_val_per_user < 0:
        raise DataError(f"split.min_val_per_user={min_val_per_user!r}: expected an integer >= 0")
    rng = np.random.default_rng(seed)
    n = len(interactions)
    # Shuffle once globally, then order by user stably: each user's rows end up in a random order.
    shuffled = rng.permutation(n)
    users = interactions["user_id"].to_numpy()[shuffled]
    order = shuffled[np.argsort(pd.factorize(users)[0], kind="stable")]
    sorted_users = interactions["user_id"].to_numpy()[order]
    codes = pd.factorize(sorted_users)[0]
    counts = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.arange(n) - starts[codes]
    size = counts[codes]
    n_test = np.floor(size * test_ratio).astype(int)
    n_val = np.floor(size * val_ratio).astype(int)
    if val_ratio > 0 and min_val_per_user > 0:
        n_val = np.maximum(n_val, np.minimum(min_val_per_user, size - n_test - 1))
    n_train = size - n_test - n_val
    part = np.where(position < n_train, 0, np.where(position < n_train + n_val, 1, 2))
    return {
        name: interactions.iloc[np.sort(order[part == k])] for k, name in enumerate(("train", "val", "test"))
    }


TIMED_SPLITS = ("temporal", "leave_last_out")


def split_interactions(
    interactions: pd.DataFrame,
    kind: str,
    is_positive: np.ndarray,
    val_ratio: float = 0.1,
    test_ratio: float = 0.1,
    seed: int = 0,
    has_timestamps: bool = True,
    min_val_per_user: int = 0,
) -> dict[str, pd.DataFrame]:
    """Dispatch on the configured split kind; refuse a split that leaves nothing to train or
    test on, and a split by time of data that has no timestamps."""
    if min_val_per_user and kind != "random":
        raise DataError(f"split.min_val_per_user={min_val_per_user} applies to per-user ratio splits; expected 0 with split.kind={kind!r}")
    if kind in TIMED_SPLITS and not has_timestamps:
        raise DataError(f"split.kind={kind!r} orders interactions by time, but the data has no timestamps; expected split.kind=random")
    splitters = {
        "temporal": lambda: temporal_split(interactions, val_ratio, test_ratio),
        "leave_last_out": lambda: leave_last_out_split(interactions, is_positive),
        "random": lambda: random_split(interactions, val_ratio, test_ratio, seed, min_val_per_user),
    }
    if kind not in splitters:
        raise DataError(f"split.kind={kind!r}: expected one of {sorted(splitters)} (or 'predefined' with split files)")
    parts = splitters[kind]()
    for name in ("train", "test"):
        if len(parts[name]) == 0:
            raise DataError(f"split.kind={kind!r} left the {name} split empty; check the ratios and the data's time range")
    return parts
