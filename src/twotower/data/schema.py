"""The platform's one data schema: every loader (MovieLens, the generic tables,
synthetic data) returns an :class:`InteractionData`, and everything after that
(splits, features, batches) only sees this shape.

Interactions are a DataFrame with the columns
  - ``user_id``, ``item_id``: ids, int or str (any hashable scalar);
  - ``timestamp``: int64 seconds since the epoch (0 throughout when the source has
    none: ``has_timestamps=False``, and only splits that need no time are allowed);
  - ``rating``: float64, NaN where the source has none.
Feature tables are DataFrames indexed by ``user_id`` / ``item_id`` (unique),
one column per raw feature. A multi-valued feature (a movie's genres) is one
string column whose values are joined by ``|``. An item table may carry a
``title`` column, used for display only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from twotower.errors import DataError

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "rating")
MULTI_VALUE_SEPARATOR = "|"
SPLIT_NAMES = ("train", "val", "test")


@dataclass
class InteractionData:
    """A data set before splitting.

    ``predefined_split`` is set when the user supplied their own
    train/val/test interaction files: then ``interactions`` is their
    concatenation and the split is used as given (an empty ``val`` part may be
    carved from ``train`` by ``split.val_ratio``). ``has_timestamps``: False when
    the source has no time of interaction (``timestamp`` is 0 throughout).
    """

    name: str
    interactions: pd.DataFrame
    users: pd.DataFrame | None = None
    items: pd.DataFrame | None = None
    predefined_split: dict[str, pd.DataFrame] | None = field(default=None)
    has_timestamps: bool = True

    def __post_init__(self) -> None:
        missing = [c for c in INTERACTION_COLUMNS if c not in self.interactions.columns]
        if missing:
            raise DataError(
                f"{self.name}: interactions lack column(s) {missing}; expected {list(INTERACTION_COLUMNS)}"
            )
        for table, key in ((self.users, "user_id"), (self.items, "item_id")):
            if table is not None and table.index.name != key:
                raise DataError(f"{self.name}: feature table must be indexed by '{key}', got {table.index.name!r}")
        if self.predefined_split is not None and set(self.predefined_split) != set(SPLIT_NAMES):
            raise DataError(
                f"{self.name}: a predefined split needs exactly {list(SPLIT_NAMES)}, got {sorted(self.predefined_split)}"
            )
