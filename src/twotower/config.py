"""Config helpers: where the configs live, the one route to ``instantiate``,
checks that run before any work, and the secrets that must never be logged."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import yaml
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


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# A ranking metric as logged: val/ndcg@20, test/cold/recall@10, val/coverage@50 ...
_RANKED_METRIC = re.compile(r"(?:val|test)/(?:warm/|cold/)?([a-z_]+)@(-?\d+)")


def check_config(cfg: DictConfig) -> None:
    """Refuse values that cannot work, before any data is read or file written; the message
    names the key, the value and what was expected. Checks what no constructor sees early:
    ``eval`` (cut-offs, the monitored metric), the batch sizes, the positive threshold, sparse
    embeddings with an optimizer that refuses them, and a hard-negative rank window. The
    losses check their own parameters when built, the data its files when read."""
    ev = cfg.get("eval")
    if ev is not None:
        ks = ev.get("ks")
        ks = OmegaConf.to_container(ks, resolve=True) if OmegaConf.is_config(ks) else ks
        if not isinstance(ks, list) or not ks or not all(_is_int(k) and k >= 1 for k in ks):
            raise ConfigError(f"eval.ks={ks}: expected a non-empty list of positive integers (cut-offs K, e.g. [10, 20, 50])")
        from twotower.metrics import METRIC_NAMES

        monitor = ev.get("monitor")
        match = _RANKED_METRIC.fullmatch(str(monitor)) if monitor is not None else None
        names = (*METRIC_NAMES, "coverage", "mean_popularity")
        if match and match.group(1) not in names:
            raise ConfigError(f"eval.monitor={monitor}: no metric {match.group(1)!r}; expected one of {list(names)} at a K of eval.ks")
        if match and int(match.group(2)) not in ks:
            raise ConfigError(
                f"eval.monitor={monitor}: the metric is computed only at the cut-offs eval.ks={ks}; "
                f"expected K in {ks} (e.g. eval.monitor={str(monitor).rsplit('@', 1)[0]}@{max(ks)})"
            )
        if ev.get("mode") not in ("max", "min"):
            raise ConfigError(f"eval.mode={ev.get('mode')}: expected max or min")
        patience = ev.get("patience")
        if patience is not None and not (_is_int(patience) and patience >= 0):
            raise ConfigError(f"eval.patience={patience}: expected a non-negative integer, or null to never stop early")
    refresh = cfg.get("progress_bar_refresh_steps")
    if refresh is not None and not (_is_int(refresh) and refresh >= 1):
        raise ConfigError(f"progress_bar_refresh_steps={refresh}: expected a positive integer (steps between updates)")
    data = cfg.get("data")
    if data is not None:
        for key in ("batch_size", "eval_batch_size"):
            value = data.get(key)
            if value is not None and not (_is_int(value) and value >= 1):
                raise ConfigError(f"data.{key}={value}: expected a positive integer")
        threshold = data.get("positive_threshold")
        if threshold is not None and not _is_number(threshold):
            raise ConfigError(f"data.positive_threshold={threshold}: expected a number (a rating >= it is a positive) or null")
        split = data.get("split") or {}
        monitor = str(ev.get("monitor")) if ev is not None else ""
        trainable = cfg.get("model") is not None and cfg.model.get("optimizer") is not None
        if (
            trainable and monitor.startswith("val/") and split.get("kind", "temporal") in ("temporal", "random")
            and split.get("val_ratio", 0.1) == 0
        ):  # fmt: skip
            raise ConfigError(
                f"data.split.val_ratio=0 leaves no validation split, but eval.monitor={monitor} chooses the checkpoint "
                "on it; expected val_ratio > 0 (e.g. 0.1)"
            )
    model = cfg.get("model")
    net, optimizer = (model.get("net"), model.get("optimizer")) if model is not None else (None, None)
    if net is not None and net.get("sparse_embeddings") and optimizer is not None:
        target = str(optimizer.get("_target_"))
        if target in ("torch.optim.Adam", "torch.optim.AdamW"):
            raise ConfigError(
                f"model.net.sparse_embeddings=true with model.optimizer._target_={target}: {target} refuses sparse "
                "gradients; expected model.optimizer._target_=twotower.optim.Adam (the same Adam, lazy on sparse rows)"
            )
    sampler = cfg.get("sampler")
    if sampler is not None and "lo" in sampler and "hi" in sampler:
        lo, hi = sampler.lo, sampler.hi
        if not (_is_int(lo) and _is_int(hi) and 1 <= lo <= hi):
            raise ConfigError(
                f"sampler.lo={lo}, sampler.hi={hi}: the hard-negative rank window lo..hi (1-based, inclusive) "
                "expects integers with 1 <= lo <= hi"
            )


def check_eval_ks(ks, num_items: int) -> None:
    """Refuse cut-offs beyond the catalogue: the top K of ``num_items`` items has no K-th item.
    Needs the data, so it runs once the data is prepared (before any file is written)."""
    ks = list(ks)
    too_large = [k for k in ks if k > num_items]
    if too_large:
        raise ConfigError(
            f"eval.ks={ks}: K={too_large[0]} exceeds the catalogue of {num_items} items; expected every K <= {num_items}"
        )


def resolved_config(cfg: DictConfig) -> dict:
    """The full resolved config as plain containers, for saving with the run. A config that
    :func:`check_config` refuses is never resolved for saving: the check runs here first."""
    check_config(cfg)
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
    from hydra.errors import HydraException

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        try:
            return compose(config_name="train", overrides=overrides)
        except HydraException as err:  # an unknown key or option, a malformed override: one line, no traceback
            raise ConfigError(_one_line(err)) from err


def _one_line(err: BaseException) -> str:
    """Hydra's multi-line message (and its cause's first line) as one line, without the search path."""
    text = str(err).split("Config search path:")[0]
    if err.__cause__ is not None:
        text += "\n" + str(err.__cause__).strip().splitlines()[0]
    text = text.replace(":\n\t", ": ").replace("\n\t", ", ")
    return "; ".join(line.strip().rstrip(".") for line in text.splitlines() if line.strip())


# What may change when a run resumes: how it reports, not what it computes.
REPORTING_KEYS = ("logger.", "trainer.enable_progress_bar", "progress_bar_refresh_steps")
RESUME_OVERRIDABLE = (*REPORTING_KEYS, "resume=", "hydra.")


def resumed_config(run_dir: str | os.PathLike, overrides: list[str]) -> DictConfig:
    """The config a run was started with (its ``config.yaml``), to continue it in
    ``run_dir``. Overrides other than logging ones are refused: a run resumes as it
    was configured, or it would not reach the result of an uninterrupted run."""
    run_dir = Path(run_dir).resolve()
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError(
            f"resume={run_dir}: no config.yaml there; expected the run directory of an earlier twotower-train run"
        )
    changed = [o for o in overrides if not o.lstrip("+~").startswith(RESUME_OVERRIDABLE)]
    if changed:
        raise ConfigError(
            f"resume={run_dir}: a resumed run keeps its config; refusing the override(s) {changed} "
            "(only logger.*, trainer.enable_progress_bar and progress_bar_refresh_steps may change; "
            "start a new run to change the rest)"
        )
    cfg = OmegaConf.load(saved)
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key.startswith(REPORTING_KEYS):
            OmegaConf.update(cfg, key, yaml.safe_load(value) if value else None, force_add=True)
    cfg.resume = str(run_dir)
    cfg.paths.output_dir = str(run_dir)
    return cfg
