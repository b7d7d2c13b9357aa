"""Config helpers: where the configs live, the one route to ``instantiate``,
checks that run before any work, and the secrets that must never be logged."""

from __future__ import annotations

import math
import os
import re
import secrets
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from twotower import CONFIG_DIR
from twotower.errors import ConfigError

if TYPE_CHECKING:
    import torch


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
    if getattr(loss, "walk_label_weight", 0) and (
        not hasattr(sampler, "label_logq") or getattr(sampler, "logq", None) == "streaming"
    ):
        raise ConfigError(
            f"{pair}: loss.walk_label_weight scores the walk's label as the positive is scored, which this sampler "
            "does not say how to do; use sampler=in_batch (logq counts or none), mixed, uniform or popularity"
        )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# A metric logged at every validation: val/ndcg@20, val/cold/recall@10, val/coverage@50 ...
_VALIDATION_METRIC = re.compile(r"val/(warm/|cold/)?([a-z_]+)@(-?\d+)")


def _check_monitor(monitor, mode, ks: list[int]) -> None:
    """``eval.monitor`` must be a metric logged at validation, at a K of ``eval.ks``, watched in
    its direction: the ranking metrics and coverage grow better (max); mean popularity has no
    better direction, so either mode is taken for it."""
    from twotower.metric_names import METRIC_NAMES

    higher_is_better = (*METRIC_NAMES, "coverage")
    names = (*higher_is_better, "mean_popularity")
    example = f"eval.monitor=val/ndcg@{max(ks)}"
    match = _VALIDATION_METRIC.fullmatch(str(monitor))
    if match is None:
        raise ConfigError(
            f"eval.monitor={monitor}: not a metric logged at validation; expected val/<metric>@K "
            f"(or val/warm/..., val/cold/...) with a metric in {list(names)} and K in eval.ks={ks}, e.g. {example}"
        )
    if match.group(2) not in names:
        raise ConfigError(f"eval.monitor={monitor}: no metric {match.group(2)!r}; expected one of {list(names)} at a K of eval.ks")
    if int(match.group(3)) not in ks:
        raise ConfigError(
            f"eval.monitor={monitor}: the metric is computed only at the cut-offs eval.ks={ks}; "
            f"expected K in {ks} (e.g. eval.monitor={str(monitor).rsplit('@', 1)[0]}@{max(ks)})"
        )
    if mode not in ("max", "min"):
        raise ConfigError(f"eval.mode={mode}: expected max or min")
    if match.group(2) in higher_is_better and mode != "max":
        raise ConfigError(f"eval.monitor={monitor} with eval.mode={mode}: a higher {match.group(2)} is better; expected eval.mode=max")


def check_config(cfg: DictConfig) -> None:
    """Refuse values that cannot work, before any data is read or file written; the message
    names the key, the value and what was expected. Checks what no constructor sees early:
    ``eval`` (cut-offs, the monitored metric), the batch sizes, the positive threshold, sparse
    embeddings with an optimizer that refuses them, and a hard-negative rank window. The
    losses check their own parameters when built, the data its files when read."""
    if "seed" in cfg and not _is_int(cfg.get("seed")):
        raise ConfigError(f"seed={cfg.get('seed')}: expected an integer")
    wandb = cfg.get("logger", {}).get("wandb")
    if wandb is not None and wandb.get("enabled"):
        from twotower.wandb_runs import resolve_wandb_mode

        try:  # also the WANDB_MODE of the environment, which `auto` follows
            resolve_wandb_mode(str(wandb.get("mode", "auto")))
        except ValueError as err:
            raise ConfigError(str(err)) from None
    ev = cfg.get("eval")
    if ev is not None:
        ks = ev.get("ks")
        ks = OmegaConf.to_container(ks, resolve=True) if OmegaConf.is_config(ks) else ks
        if not isinstance(ks, list) or not ks or not all(_is_int(k) and k >= 1 for k in ks):
            raise ConfigError(f"eval.ks={ks}: expected a non-empty list of positive integers (cut-offs K, e.g. [10, 20, 50])")
        if ev.get("monitor") is not None:  # null: no checkpoint selection, the last epoch is tested
            _check_monitor(ev.get("monitor"), ev.get("mode"), ks)
        patience = ev.get("patience")
        if patience is not None and not (_is_int(patience) and patience >= 0):
            raise ConfigError(f"eval.patience={patience}: expected a non-negative integer, or null to never stop early")
        bands = ev.get("popularity_bands", [0.2, 0.5])
        bands = list(bands) if isinstance(bands, (list, ListConfig)) else bands
        if not (isinstance(bands, list) and len(bands) == 2 and all(_is_number(b) for b in bands) and 0 < bands[0] < bands[1] < 1):
            raise ConfigError(f"eval.popularity_bands={bands}: expected the ends of the head and the torso as shares of the items, 0 < head < torso < 1 (e.g. [0.2, 0.5])")
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
                "on it; expected val_ratio > 0 (e.g. 0.1), or eval.monitor=null to test the last epoch"
            )
    model = cfg.get("model")
    net, optimizer = (model.get("net"), model.get("optimizer")) if model is not None else (None, None)
    scheduler = model.get("scheduler") if model is not None else None
    if scheduler is not None and "ReduceLROnPlateau" in str(scheduler.get("_target_")) and ev is not None and ev.get("monitor") is None:
        raise ConfigError("scheduler=plateau watches eval.monitor, which is null; expected a monitored metric or scheduler=cosine/none")
    if optimizer is not None and "lr" in optimizer:
        lr = optimizer.get("lr")
        if not (_is_number(lr) and lr > 0):
            raise ConfigError(f"model.optimizer.lr={lr}: expected a finite number > 0 (e.g. 0.001)")
    if net is not None and net.get("sparse_embeddings") and optimizer is not None:
        target = str(optimizer.get("_target_"))
        if target in ("torch.optim.Adam", "torch.optim.AdamW"):
            raise ConfigError(
                f"model.net.sparse_embeddings=true with model.optimizer._target_={target}: {target} refuses sparse "
                "gradients; expected model.optimizer._target_=twotower.optim.Adam (the same Adam, lazy on sparse rows)"
            )
    sampler = cfg.get("sampler")
    if sampler is not None and "num_negatives" in sampler:
        count = sampler.get("num_negatives")
        if not (_is_int(count) and count >= 1):
            raise ConfigError(f"sampler.num_negatives={count}: expected a positive integer")
    limit = (cfg.get("limits") or {}).get("step_memory_gb")
    if limit is not None and not (_is_number(limit) and limit > 0):
        raise ConfigError(f"limits.step_memory_gb={limit}: expected a number of GB > 0, or null (80% of this machine's memory)")
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


def check_monitor_groups(monitor: str, warm: torch.Tensor) -> None:
    """A monitored metric needs validation users (``warm``: ``[U]`` bool), and a warm/cold one
    both groups among them: else the metric is never logged and the run would fail after an epoch."""
    if len(warm) == 0:
        raise ConfigError(
            f"eval.monitor={monitor}: the data has no validation split to compute it on; expected data.split.val_ratio > 0, "
            "or eval.monitor=null to test the last epoch"
        )
    group = _VALIDATION_METRIC.fullmatch(str(monitor)).group(1)
    if group and (bool(warm.all()) or not bool(warm.any())):
        only = "warm" if bool(warm.all()) else "cold"
        raise ConfigError(
            f"eval.monitor={monitor}: the validation split has {only} users only, so no {group}-user metric is "
            f"logged; expected eval.monitor={str(monitor).replace(group, '')}"
        )


def check_training_step(cfg: DictConfig, negatives, num_items: int, num_examples: int, item_row_floats: int) -> None:
    """Refuse negatives beyond the catalogue and a training step that cannot fit in memory
    (:mod:`twotower.step_memory`). ``negatives``: what the sampler gives one example."""
    from twotower.step_memory import GB, default_limit_bytes, step_bytes

    items = negatives.items
    per_example = items.shape[1] if items is not None and items.dim() == 2 else 0
    shared = len(items) if items is not None and items.dim() == 1 else 0
    if max(per_example, shared) > num_items:
        raise ConfigError(
            f"sampler.num_negatives={max(per_example, shared)} exceeds the catalogue of {num_items} items; "
            f"expected at most {num_items}"
        )
    batch = min(cfg.data.batch_size, num_examples)  # a batch holds at most every training example
    needed = step_bytes(batch, per_example, shared, negatives.in_batch, num_items, item_row_floats)
    limit_gb = (cfg.get("limits") or {}).get("step_memory_gb")
    limit = int(limit_gb * GB) if limit_gb is not None else default_limit_bytes()
    if needed > limit:
        sources = [f"{per_example} negatives per example"] * bool(per_example) + [f"{shared} shared negatives"] * bool(shared)
        sources += ["in-batch negatives"] * bool(negatives.in_batch)
        raise ConfigError(
            f"a training step needs at least {needed / GB:.1f} GB (data.batch_size={cfg.data.batch_size}, {', '.join(sources)}), "
            f"more than limits.step_memory_gb allows ({limit / GB:.1f} GB); expected a smaller sampler.num_negatives "
            "or data.batch_size (or a larger limits.step_memory_gb)"
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

    register_resolvers()
    overrides = list(overrides or [])
    if output_dir is not None:
        overrides.append(f"paths.output_dir={Path(output_dir).resolve()}")
    from hydra.errors import HydraException

    from twotower.cli import one_line

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        try:
            return compose(config_name="train", overrides=overrides)
        except HydraException as err:  # an unknown key or option, a malformed override: one line, no traceback
            raise ConfigError(one_line(err)) from err


# How prepared_arguments (twotower.cli) passes a secret typed on the command line.
# (Hydra escapes the braces and the colon in a sweep job's overrides: $\{oc.env\:...\}.)
_SECRET_REFERENCE = re.compile(r"\$\\?\{oc\.env\\?:TWOTOWER_ARG_\d+_SECRET\\?\}")


def new_run_id() -> str:
    """Date, time to the microsecond and a random suffix: two jobs started in the
    same second (or microsecond, on another machine) never share a directory.
    ``TWOTOWER_RUN_ID``, when set, is used instead: every rank that torchrun starts
    runs the command itself and must find the same run directory."""
    given = os.environ.get("TWOTOWER_RUN_ID")
    if given:
        return safe_dirname(given)
    return f"{datetime.now():%Y-%m-%d_%H-%M-%S_%f}_{secrets.token_hex(2)}"


def safe_dirname(text: str, max_len: int = 180) -> str:
    """A sweep subdirectory name from ``key=value,key=value``: secrets typed on the command
    line shown as ``redacted``, path separators and odd characters replaced, long names cut
    (readable, never nested)."""
    name = re.sub(r"[^A-Za-z0-9._=,+\-]", "_", _SECRET_REFERENCE.sub("redacted", text)) or "default"
    return name[:max_len]


def register_resolvers() -> None:
    """``${run_id:}``, ``${dirname:...}`` and ``${first_set:...}`` for ``conf/train.yaml``'s Hydra section."""
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", new_run_id, use_cache=True)
    if not OmegaConf.has_resolver("dirname"):
        OmegaConf.register_new_resolver("dirname", safe_dirname)
    if not OmegaConf.has_resolver("first_set"):
        # `${first_set:${resume},default}`: a resumed run writes into its own directory.
        OmegaConf.register_new_resolver("first_set", lambda given, default: given if given else default)
