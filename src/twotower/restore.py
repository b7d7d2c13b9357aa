"""A trained run rebuilt from its checkpoint, for export and evaluation.

Checkpoints are read as data (:mod:`twotower.artifacts`): nothing is unpickled, and their
config may only name the package's own builders. A checkpoint that is missing, unreadable
(e.g. truncated), corrupted (its SHA-256 record), not twotower's, written by a newer
twotower, or whose weights do not fit the model its config builds is refused with a
:class:`~twotower.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import OmegaConf

from twotower.artifacts import first_line, load_weights, read_checkpoint
from twotower.config import check_config
from twotower.errors import CheckpointError, DataError
from twotower.wiring import Run, build_run


def checkpoint_path(path: str | os.PathLike, which: str = "best") -> Path:
    """A run directory (``<run>/checkpoints/<which>.ckpt``) or a checkpoint file -> the file."""
    path = Path(path)
    ckpt = path / "checkpoints" / f"{which}.ckpt" if path.is_dir() else path
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt} (a model that is not trained, e.g. popularity, has none)")
    return ckpt


def run_dir_of(ckpt: Path) -> Path:
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def load_run(path: str | os.PathLike, which: str = "best") -> tuple[Path, Run, dict]:
    """``(checkpoint file, run, checkpoint dict)``: the run a checkpoint was trained in, rebuilt
    by :func:`twotower.wiring.build_run` from its saved config, with its weights loaded.

    The data is prepared again from the saved config (deterministic for a config and seed)
    and must fit the same features as the checkpoint's ``twotower_features``."""
    ckpt_path = checkpoint_path(path, which)
    ckpt = read_checkpoint(ckpt_path)
    try:
        cfg = OmegaConf.create(ckpt["twotower_config"])
        check_config(cfg)
        run = build_run(cfg, config=ckpt["twotower_config"], fitted_features=ckpt["twotower_features"], for_training=False)
        name = f"the model its config builds ({cfg.model.get('name', type(run.model).__name__)})"
    except DataError:
        raise  # the data the config names is missing or broken: its message says which
    except Exception as err:  # noqa: BLE001 - whatever the stored values break, it is the checkpoint's config
        raise CheckpointError(
            f"{ckpt_path}: its twotower_config cannot rebuild the run ({first_line(err)}); expected the config "
            "saved by twotower-train"
        ) from err
    if json.loads(json.dumps(run.data.fitted)) != json.loads(json.dumps(ckpt["twotower_features"])):
        raise CheckpointError(f"{ckpt_path}: the data prepared from the saved config fits other features than the checkpoint's; has the data changed?")
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    load_weights(ckpt_path, run.model, state, name)
    try:
        run.module.load_prior_weights(ckpt)
    except ValueError as err:
        raise CheckpointError(f"{ckpt_path}: {err}") from None
    run.model.eval()
    return ckpt_path, run, ckpt
