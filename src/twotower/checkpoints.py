"""Checkpoints that survive a crash, and finding the one to resume from.

Lightning writes checkpoints through a ``CheckpointIO``; this one serializes to
memory, writes a temporary file beside the target, flushes it to disk and renames
it over the target, so ``last.ckpt`` / ``best.ckpt`` are always complete: a run
killed while saving keeps its previous checkpoint. Every checkpoint carries the SHA-256
of each tensor it holds (:mod:`twotower.integrity`). Loading is ``weights_only``
(tensors and plain containers only, never arbitrary pickled objects) and verifies the
digests, so a corrupted file is refused, naming the tensor, instead of trained on.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from twotower.artifacts import load_checkpoint_file, verify_integrity
from twotower.errors import CheckpointError
from twotower.fsutil import remove_stale_temporaries, write_bytes_atomic
from twotower.integrity import seal_checkpoint

log = logging.getLogger("twotower")

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
BEST = "best.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        buffer = io.BytesIO()
        torch.save(seal_checkpoint(checkpoint), buffer)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(Path(path), buffer.getvalue())

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = True) -> dict[str, Any]:
        return read_intact(Path(path))


def read_intact(path: Path) -> dict[str, Any]:
    """A checkpoint file loaded as data and checked against its SHA-256 record."""
    checkpoint = load_checkpoint_file(path)
    verify_integrity(checkpoint, path)
    return checkpoint


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest intact checkpoint of ``run_dir`` to continue from: ``last.ckpt`` (written
    after every validation), else ``best.ckpt`` when ``last.ckpt`` is damaged (the run then
    repeats the epochs after it, which batches seeded by epoch make equal); ``None`` when
    the run was killed before its first checkpoint. Temporary files of a write that was
    killed are removed. Raises :class:`CheckpointError` when checkpoints exist but none is intact."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    remove_stale_temporaries(folder)
    candidates = [folder / name for name in (LAST, BEST) if (folder / name).is_file()]
    intact, problems = [], []
    for path in candidates:
        try:
            intact.append((int(read_intact(path)["global_step"]), path))
        except (CheckpointError, KeyError, TypeError, ValueError) as err:
            problems.append(str(err))
    if intact:
        step, path = max(intact, key=lambda pair: pair[0])
        if problems:
            log.warning("resuming from %s (step %d): %s", path, step, "; ".join(problems))
        return path
    if problems:
        raise CheckpointError(f"no intact checkpoint to resume from: {'; '.join(problems)}; start a new run")
    return None


def checkpoint_step(path: Path) -> int:
    """The global step a checkpoint was saved at (memory-mapped: the weights are not read)."""
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def rng_state() -> dict[str, torch.Tensor]:
    """Torch's random states (CPU, and CUDA when present): dropout and the losses'
    random choices draw from them. Batches use their own seeded generators."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
