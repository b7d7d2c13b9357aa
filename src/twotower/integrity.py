"""SHA-256 digests that let a load tell a corrupted artifact from an intact one.

A checkpoint records the digest of each tensor it holds (and of its config and fitted
features) when written; an export records the digest of each file. Every load recomputes
them and refuses a mismatch, naming the tensor or the file: flipped bytes inside a
weight tensor load without any error from torch, and would be served silently.

The digests guard against accidents (a bad disk, a cut copy, a hand edit), not against
an attacker, who can recompute them: that is why artifacts are also loaded as data only
(``weights_only=True``, and configs checked by :mod:`twotower.artifacts`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

ALGORITHM = "sha256"
RECORD_KEY = "twotower_integrity"  # where a checkpoint keeps its digests
# The checkpoint keys whose plain (JSON) content is digested besides the tensors.
DESCRIBING_KEYS = ("twotower_config", "twotower_features")
CHUNK = 1 << 20


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (a reshaped or retyped tensor differs)."""
    tensor = tensor.detach().cpu()
    if tensor.is_sparse:
        tensor = tensor.coalesce()
        parts = [tensor.indices(), tensor.values()]
    else:
        parts = [tensor]
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}{tensor.layout}".encode())
    for part in parts:
        # Bytes without a copy where possible: a uint8 view of the contiguous storage.
        flat = part.contiguous().reshape(-1)
        if flat.numel():
            digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()


def json_digest(value: Any) -> str:
    """SHA-256 of a plain value's canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def iter_tensors(value: Any, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """``(path, tensor)`` for every tensor inside nested dicts, lists and tuples; the path
    joins the keys with ``/`` (``state_dict/model.user_tower.mlp.0.weight``)."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from iter_tensors(item, f"{path}/{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from iter_tensors(item, f"{path}/{i}" if path else str(i))


def checkpoint_digests(checkpoint: dict) -> dict[str, str]:
    """``{tensor path or describing key: digest}`` of a checkpoint dict (its own record excluded)."""
    content = {k: v for k, v in checkpoint.items() if k != RECORD_KEY}
    digests = {path: tensor_digest(t) for path, t in iter_tensors(content)}
    digests.update({key: json_digest(checkpoint[key]) for key in DESCRIBING_KEYS if key in checkpoint})
    return digests



def seal_checkpoint(checkpoint: dict) -> dict:
    """The checkpoint with its integrity record added (the input is not changed)."""
    return {**checkpoint, RECORD_KEY: {"algorithm": ALGORITHM, "digests": checkpoint_digests(checkpoint)}}


def checkpoint_mismatch(checkpoint: dict) -> str | None:
    """What is wrong with a checkpoint's content against its integrity record, or ``None``
    when it matches: a missing record, a tensor whose bytes changed, tensors added or removed."""
    record = checkpoint.get(RECORD_KEY)
    if not isinstance(record, dict) or record.get("algorithm") != ALGORITHM or not isinstance(record.get("digests"), dict):
        return "it has no integrity record (twotower_integrity); expected a checkpoint written by twotower-train"
    expected, actual = record["digests"], checkpoint_digests(checkpoint)
    changed = sorted(k for k in expected.keys() & actual.keys() if expected[k] != actual[k])
    added, removed = sorted(actual.keys() - expected.keys()), sorted(expected.keys() - actual.keys())
    problems = [f"{label} {_some(keys)}" for label, keys in (("changed", changed), ("not recorded", added), ("missing", removed)) if keys]
    if problems:
        return f"its content does not match its SHA-256 record: {'; '.join(problems)} (the file is corrupted)"
    return None


def _some(keys: list[str], shown: int = 3) -> str:
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_digests(folder: Path) -> dict[str, str]:
    """``{relative path: digest}`` of every file under ``folder`` (sorted, ``/``-separated)."""
    return {p.relative_to(folder).as_posix(): file_digest(p) for p in sorted(Path(folder).rglob("*")) if p.is_file()}
