"""A tiny interaction table for real runs that take a few seconds (tests import it)."""

from pathlib import Path

import pandas as pd

T0 = 1_600_000_000
HOUR = 3600


def tiny_interactions() -> pd.DataFrame:
    """40 rated interactions, one an hour: users 1-6 take turns over items 1-8; the last four
    hours belong to user 99 (twice, never seen before) and user 1 (twice). The temporal split
    (0.1 / 0.1) puts rows 32-35 in validation and rows 36-39 in test. With ``data=custom``'s
    positive_threshold=null every interaction is a positive."""
    rows = [(k % 6 + 1, (k * 3 + k // 6) % 8 + 1, T0 + k * HOUR) for k in range(36)]
    rows += [(99, 1, T0 + 36 * HOUR), (99, 2, T0 + 37 * HOUR), (1, 4, T0 + 38 * HOUR), (1, 6, T0 + 39 * HOUR)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return frame.assign(rating=[float(k % 5 + 1) for k in range(len(frame))])


def write_csv(folder: Path, frame: pd.DataFrame, name: str = "interactions.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    frame.to_csv(path, index=False)
    return path


def custom(interactions: Path, *extra: str) -> list[str]:
    """Overrides for a real run on the tiny table (8 items, so K <= 8)."""
    return ["data=custom", f"data.source.interactions={interactions}", "eval.ks=[1,2]", "eval.monitor=val/ndcg@2",
            "data.batch_size=8", *extra]  # fmt: skip
