"""``per_user.npz``: each test user's metrics, kept by every run so that ``twotower-compare``
can pair two configurations user by user without evaluating again.

One compressed NumPy archive (no pickles): ``user`` (``[U]`` text, the raw user ids), ``warm``
(``[U]`` bool) and one ``[U]`` float32 array per metric, named as in ``results.json``
(``test/recall@10``; the run's popularity reference as ``popularity/test/recall@10``). Run
folders come from others: the file is read with ``allow_pickle=False`` and every array is
checked before a value is used.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twotower.fsutil import write_bytes_atomic
from twotower.metric_names import METRIC_NAMES

FILENAME = "per_user.npz"
METRIC_KEY = re.compile(rf"^(?:popularity/)?test/(?:{'|'.join(METRIC_NAMES)})@\d+$")


@dataclass
class PerUserMetrics:
    """``users``: ``[U]`` raw ids (text); ``warm``: ``[U]`` bool; ``metrics``: name -> ``[U]`` float."""

    users: np.ndarray
    warm: np.ndarray
    metrics: dict[str, np.ndarray]


def write_per_user(run_dir: Path, users: list, warm, metrics: dict[str, object]) -> Path:
    """Write ``<run_dir>/per_user.npz`` atomically; ``metrics``: name -> ``[U]`` values (tensors or
    arrays), only the names of :data:`METRIC_KEY` kept (the ranking metrics at each K)."""
    arrays = {"user": np.asarray([str(u) for u in users]), "warm": np.asarray(warm, dtype=bool)}
    arrays.update({name: np.asarray(v, dtype=np.float32) for name, v in metrics.items() if METRIC_KEY.match(name)})
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path = Path(run_dir) / FILENAME
    write_bytes_atomic(path, buffer.getvalue())
    return path


def read_per_user(path: Path) -> PerUserMetrics:
    """Read and check a ``per_user.npz``; raises ValueError naming the file and what is wrong."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable per-user metrics file ({str(err).splitlines()[0] if str(err) else type(err).__name__}); expected the per_user.npz twotower-train writes") from None
    users, warm = arrays.pop("user", None), arrays.pop("warm", None)
    if users is None or users.ndim != 1 or users.dtype.kind != "U":
        raise ValueError(f"{path}: expected a 1-D text array 'user'")
    size = len(users)
    if warm is None or warm.shape != (size,) or warm.dtype != bool:
        raise ValueError(f"{path}: expected a bool array 'warm' of {size} values, one per user")
    if len(set(users.tolist())) != size:
        raise ValueError(f"{path}: a user appears twice in 'user'; expected one row per test user")
    for name, values in arrays.items():
        if not METRIC_KEY.match(name):
            raise ValueError(f"{path}: unexpected array {name!r}; expected test/<metric>@K or popularity/test/<metric>@K")
        if values.shape != (size,) or values.dtype.kind != "f" or not np.all((values >= 0) & (values <= 1 + 1e-6)):
            raise ValueError(f"{path}: {name} must hold {size} numbers in [0, 1], one per user")
    return PerUserMetrics(users, warm, {name: v.astype(np.float64) for name, v in arrays.items()})
