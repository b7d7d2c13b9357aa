"""Reading what users get from others: checkpoints and the configs stored in them or in a
run folder. They supply values, never code.

- A checkpoint is loaded with ``torch.load(weights_only=True)`` (nothing is unpickled),
  must be a twotower checkpoint of this version or older, and must match the SHA-256
  record written with it (:mod:`twotower.integrity`).
- A config read from an artifact is rebuilt with Hydra's ``instantiate``, so a
  ``_target_`` in it would name any callable to run (``torch.load`` of a pickle,
  ``builtins.open``, ``os.system``). :func:`check_artifact_config` allows a ``_target_``
  only on the nodes the package builds (``loss``, ``sampler``, ``model.net``, ...), and
  only one that the package's own ``conf/`` names (or one of torch's optimizer and
  learning-rate scheduler classes); no interpolation (saved configs are resolved, and an
  ``${oc.env:...}`` would read the environment); a download URL only one that ``conf/`` names.

Everything here raises :class:`CheckpointError` or :class:`UnsafeArtifactError` (both
``ValueError``) with one line naming the file, the key and what was expected.
"""

from __future__ import annotations

import functools
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

import twotower
from twotower import CONFIG_DIR
from twotower.errors import CheckpointError, UnsafeArtifactError
from twotower.integrity import checkpoint_mismatch

# The nodes of a run config that twotower builds with ``instantiate``; a ``_target_`` anywhere
# else in an artifact's config is refused (no shipped config has one there).
BUILT_NODES = ("data.source", "sampler", "loss", "model.net", "model.optimizer", "model.scheduler", "trainer")


def first_line(err: BaseException) -> str:
    """The first sentence of an error's message (torch and pyarrow add paragraphs of advice)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[0].split(". ")[0].rstrip(".") if lines else type(err).__name__


# ----------------------------------------------------------------------------- checkpoints


def _version(text) -> tuple[int, int, int] | None:
    """``"1.2.3"`` (a suffix such as ``.dev0`` or ``rc1`` ignored) -> ``(1, 2, 3)``; ``None`` if not a version."""
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", str(text))
    return tuple(int(g) for g in match.groups()) if match else None


def check_version(ckpt_path: Path, written) -> None:
    """Refuse a checkpoint written by a newer twotower (major.minor.patch compared) or with a
    version that is not one; a checkpoint without ``twotower_version`` predates the field and is read."""
    if written is None:
        return
    theirs, ours = _version(written), _version(twotower.__version__)
    if theirs is None:
        raise CheckpointError(f"{ckpt_path}: twotower_version={written!r} is not a version; expected major.minor.patch")
    if ours is not None and theirs > ours:
        raise CheckpointError(
            f"{ckpt_path} was written by twotower {written}, newer than this twotower {twotower.__version__}; "
            f"expected a checkpoint from twotower {twotower.__version__} or older (upgrade twotower to read it)"
        )


def load_checkpoint_file(ckpt_path: Path) -> dict:
    """The checkpoint dict, loaded with ``weights_only=True``; nothing else checked yet."""
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{ckpt_path}: holds objects other than tensors and plain containers, refused (checkpoints are loaded "
            "with weights_only=True); expected a checkpoint written by twotower-train"
        ) from err
    except Exception as err:  # noqa: BLE001 - torch raises several types for a broken file
        raise CheckpointError(
            f"{ckpt_path}: cannot read the checkpoint ({first_line(err)}); expected a complete checkpoint "
            "written by twotower-train (is the file truncated?)"
        ) from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{ckpt_path}: holds a {type(ckpt).__name__}, not a checkpoint; expected a checkpoint written by twotower-train")
    return ckpt


def read_checkpoint(ckpt_path: Path) -> dict:
    """A twotower checkpoint: loaded as data, of this version or older, intact, its config safe."""
    ckpt = load_checkpoint_file(ckpt_path)
    if "twotower_config" not in ckpt or "twotower_features" not in ckpt:
        raise CheckpointError(f"{ckpt_path} is not a twotower checkpoint (no twotower_config / twotower_features)")
    check_version(ckpt_path, ckpt.get("twotower_version"))
    if not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{ckpt_path}: no state_dict (the model's weights); expected a checkpoint written by twotower-train")
    verify_integrity(ckpt, ckpt_path)
    check_artifact_config(ckpt["twotower_config"], f"{ckpt_path} (twotower_config)")
    return ckpt


def verify_integrity(ckpt: dict, ckpt_path: Path) -> None:
    """Refuse a checkpoint whose tensors or config do not match its SHA-256 record."""
    problem = checkpoint_mismatch(ckpt)
    if problem:
        raise CheckpointError(f"{ckpt_path}: {problem}")


# ----------------------------------------------------------------------------- configs


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted path, value)`` of every node under ``value`` (dicts and lists), itself first."""
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]")


@functools.cache
def _shipped() -> tuple[frozenset[str], frozenset[str]]:
    """The ``_target_`` values and the ``url`` values that the package's ``conf/`` names
    (outside Hydra's own section), read as plain YAML."""
    targets, urls = set(), set()
    for file in sorted(CONFIG_DIR.rglob("*.yaml")):
        content = yaml.safe_load(file.read_text()) or {}
        for path, value in _walk(content):
            if path == "hydra" or path.startswith("hydra."):
                continue
            key = path.rsplit(".", 1)[-1]
            if key == "_target_" and isinstance(value, str):
                targets.add(value)
            elif key == "url" and isinstance(value, str):
                urls.add(value)
    return frozenset(targets), frozenset(urls)


@functools.cache
def _torch_classes() -> frozenset[str]:
    """torch's optimizers and learning-rate schedulers: constructors of numbers and parameters."""
    from torch.optim import Optimizer, lr_scheduler

    names = {f"torch.optim.{n}" for n, c in vars(torch.optim).items() if isinstance(c, type) and issubclass(c, Optimizer)}
    schedulers = (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau)
    names |= {f"torch.optim.lr_scheduler.{n}" for n, c in vars(lr_scheduler).items() if isinstance(c, type) and issubclass(c, schedulers)}
    return frozenset(names)


def allowed_targets() -> frozenset[str]:
    return _shipped()[0] | _torch_classes()


def check_plain_values(value: Any, source: str) -> None:
    """Refuse a ``_target_`` key or an interpolation anywhere in ``value``: for an artifact's
    files that nothing builds from (an export's tower description), where either one can only
    be planted."""
    for path, item in _walk(value):
        if path.rsplit(".", 1)[-1] == "_target_" or (isinstance(item, str) and "${" in item):
            raise UnsafeArtifactError(f"{source}: {path} is refused: expected plain values, as twotower writes them")


def check_artifact_config(config: Any, source: str) -> None:
    """Refuse a config read from an artifact (``source`` names it in the message) that asks
    for anything but values: a ``_target_`` off the built nodes or not allowed, an
    interpolation, a download URL that ``conf/`` does not name."""
    if not isinstance(config, dict):
        raise UnsafeArtifactError(f"{source}: holds a {type(config).__name__}, not a config; expected a mapping")
    allowed, urls = allowed_targets(), _shipped()[1]
    for path, value in _walk(config):
        key = path.rsplit(".", 1)[-1]
        if isinstance(value, str) and "${" in value:
            raise UnsafeArtifactError(
                f"{source}: {path}={value!r} is an interpolation, refused; expected the resolved values a run saves"
            )
        if key == "_target_":
            node = path[: -len("._target_")] if path.endswith("._target_") else ""
            built = node in BUILT_NODES or (node.startswith("callbacks.") and node.count(".") == 1)
            if not built or not isinstance(value, str) or value not in allowed:
                raise UnsafeArtifactError(
                    f"{source}: {path}={value!r} is refused: a config read from a checkpoint or run folder may name "
                    f"only twotower's own builders (those in its conf/, or torch's optimizers and schedulers) on "
                    f"{', '.join(BUILT_NODES)}, callbacks.*"
                )
        if key == "url" and path.startswith("data.source.") and value not in urls:
            raise UnsafeArtifactError(
                f"{source}: {path}={value!r} is refused: a config read from a checkpoint or run folder may download "
                "only from the URLs in twotower's conf/"
            )


def load_weights(ckpt_path: Path, model: torch.nn.Module, state: dict, name: str, error: type = CheckpointError) -> None:
    """``model.load_state_dict(state)``, refusing weights that do not fit with one line naming the keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} instead of {tuple(expected[k].shape)}"
             for k in sorted(set(expected) & set(state)) if tuple(state[k].shape) != tuple(expected[k].shape)]  # fmt: skip
    problems = [f"{label} {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''} ({len(keys)})"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]  # fmt: skip
    if problems:
        raise error(
            f"{ckpt_path}: its weights do not fit {name}: {'; '.join(problems)}; expected the weights saved with it"
        )
    model.load_state_dict(state)
