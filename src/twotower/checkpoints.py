"""Checkpoints that survive a crash, and finding the one to resume from.

Lightning writes checkpoints through a ``CheckpointIO``; this one serializes to
memory, writes a temporary file beside the target, flushes it to disk and renames
it over the target, so ``last.ckpt`` / ``best.ckpt`` are always complete: a run
killed while saving keeps its previous checkpoint. Loading is ``weights_only``
(tensors and plain containers only, never arbitrary pickled objects).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from twotower.fsutil import remove_stale_temporaries, write_bytes_atomic

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(Path(path), buffer.getvalue())

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = True) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location or "cpu", weights_only=True)


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The last complete checkpoint of ``run_dir`` (``checkpoints/last.ckpt``), or
    ``None`` when the run was killed before its first one. Temporary files of a
    write that was killed are removed."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    remove_stale_temporaries(folder)
    last = folder / LAST
    return last if last.is_file() else None


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
