"""Config helpers: where the configs live, the one route to ``instantiate``,
checks that run before any work, and the secrets that must never be logged."""

from __future__ import annotations

import os
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

# conf/ sits at the repository root, beside src/ (the package is installed in editable mode).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"


class ConfigError(ValueError):
    """A configuration that cannot work; the message says what to use instead."""


def build(node: DictConfig, **kwargs):
    """``hydra.utils.instantiate`` with the config path in the error message."""
    try:
        return instantiate(node, **kwargs)
    except Exception as err:  # noqa: BLE001 - re-raised with context
        target = node.get("_target_", "?") if isinstance(node, DictConfig) else "?"
        cause = err.__cause__ or err
        raise ConfigError(f"could not build {target}: {cause}") from err


def check_loss_sampler(loss, sampler, names: dict[str, str] | None = None) -> None:
    """Refuse a loss/sampler pair that cannot work, naming both and the way out.
    ``names``: the config choices (``{"loss": "mse", "sampler": "in_batch"}``) for the message."""
    names = names or {}
    pair = f"loss={names.get('loss', type(loss).__name__)} with sampler={names.get('sampler', type(sampler).__name__)}"
    if loss.needs_negatives and not sampler.provides_negatives:
        raise ConfigError(f"{pair}: the loss needs negatives and the sampler provides none; use sampler=in_batch, uniform, popularity or mixed")
    if not loss.needs_negatives and sampler.provides_negatives:
        raise ConfigError(
            f"{pair}: the loss regresses observed ratings and would ignore the negatives; "
            "use sampler=none (model=matrix_completion selects it)"
        )


def resolved_config(cfg: DictConfig) -> dict:
    """The full resolved config as plain containers, for saving with the run."""
    return OmegaConf.to_container(cfg, resolve=True)


def load_dotenv_file(path: str | os.PathLike | None = None) -> None:
    """Read ``.env`` (if any) into the environment without overriding what is already set."""
    from dotenv import load_dotenv

    load_dotenv(path or Path.cwd() / ".env", override=False)


def compose_config(overrides: list[str] | None = None, output_dir: str | os.PathLike | None = None) -> DictConfig:
    """Compose ``conf/train.yaml`` without running Hydra's app (tests, notebooks,
    benchmarks). The compose API sets no ``HydraConfig``, so the run directory
    is given here instead of read from ``${hydra:runtime.output_dir}``."""
    from hydra import compose, initialize_config_dir

    from twotower.runs import register_resolvers

    register_resolvers()
    overrides = list(overrides or [])
    if output_dir is not None:
        overrides.append(f"paths.output_dir={Path(output_dir).resolve()}")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)
