"""Config checks that need no training: the memory a step needs (by hand), the monitored
metric, and the command line as Hydra receives it (quoted resume paths, secrets moved out)."""

from __future__ import annotations

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser

from twotower.cli import SECRET_ENV, prepared_arguments
from twotower.config import check_config, check_monitor_groups, check_training_step, compose_config
from twotower.errors import ConfigError
from twotower.wandb_runs import resolve_wandb_mode
from twotower.samplers import Negatives
from twotower.step_memory import FLOAT_BYTES, GB, NEGATIVE_ID_BYTES, SCORE_BYTES, step_bytes


def test_step_memory_by_hand():
    # B=4 examples, 3 negatives each, in-batch: 1 + 3 + 4 = 8 candidate columns per example;
    # items encoded: 4 positives + min(4 * 3, 10 items) = 14 rows of 5 floats, values and gradients.
    expected = 4 * 8 * SCORE_BYTES + 4 * 3 * NEGATIVE_ID_BYTES + 14 * 5 * FLOAT_BYTES * 2
    assert step_bytes(4, 3, 0, True, num_items=10, item_row_floats=5) == expected == 4 * 8 * 25 + 12 * 16 + 560
    # 6 shared negatives and no in-batch ones: 7 columns, 4 + 6 rows encoded, no per-example ids.
    assert step_bytes(4, 0, 6, False, num_items=100, item_row_floats=5) == 4 * 7 * 25 + 10 * 5 * 4 * 2


def test_check_training_step_refuses_negatives_beyond_the_catalogue_and_steps_beyond_the_limit():
    cfg = compose_config(["data.batch_size=1000", "limits.step_memory_gb=1"])
    per_example = Negatives(items=torch.zeros(1, 50, dtype=torch.long))
    check_training_step(cfg, per_example, num_items=100, num_examples=10_000, item_row_floats=64)
    with pytest.raises(ConfigError, match="sampler.num_negatives=50 exceeds the catalogue of 40 items; expected at most 40"):
        check_training_step(cfg, per_example, num_items=40, num_examples=10_000, item_row_floats=64)
    # In-batch negatives over 40,000 examples: 40,000 x 40,001 scores of 25 bytes, about 37 GB.
    huge = compose_config(["data.batch_size=40000", "limits.step_memory_gb=1"])
    with pytest.raises(ConfigError, match=r"a training step needs at least 37\.3 GB \(data.batch_size=40000, in-batch negatives\)"):
        check_training_step(huge, Negatives(in_batch=True), num_items=100, num_examples=10**6, item_row_floats=64)
    # The batch cannot hold more than every training example: 1,000 examples need about 24 MB.
    check_training_step(huge, Negatives(in_batch=True), num_items=100, num_examples=1000, item_row_floats=64)
    assert step_bytes(1000, 0, 0, True, 100, 64) < 0.03 * GB


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["eval.monitor=val/loss"], "not a metric logged at validation"),
        (["eval.monitor=train/loss"], "not a metric logged at validation"),
        (["eval.monitor=val/ndcg@7"], "expected K in [10, 20, 50, 100]"),
        (["eval.monitor=val/ndgc@20"], "no metric 'ndgc'"),
        (["eval.mode=min"], "a higher ndcg is better; expected eval.mode=max"),
        (["seed=1.5"], "seed=1.5: expected an integer"),
        (["model.optimizer.lr=0"], "model.optimizer.lr=0: expected a finite number > 0"),
        (["sampler=mixed", "sampler.num_negatives=0"], "sampler.num_negatives=0: expected a positive integer"),
        (["limits.step_memory_gb=-2"], "limits.step_memory_gb=-2: expected a number of GB > 0"),
    ],
)
def test_check_config_refuses(overrides, message):
    with pytest.raises(ConfigError) as info:
        check_config(compose_config(overrides))
    assert message in str(info.value)


def test_check_config_accepts_monitors_that_validation_logs():
    for monitor, mode in [("val/cold/recall@10", "max"), ("val/coverage@50", "max"), ("val/mean_popularity@10", "min")]:
        check_config(compose_config([f"eval.monitor={monitor}", f"eval.mode={mode}"]))


def test_a_warm_or_cold_monitor_needs_both_groups():
    both = torch.tensor([True, False, True])
    check_monitor_groups("val/cold/ndcg@20", both)
    check_monitor_groups("val/ndcg@20", torch.tensor([True, True]))
    with pytest.raises(ConfigError, match="the validation split has warm users only.*expected eval.monitor=val/ndcg@20"):
        check_monitor_groups("val/cold/ndcg@20", torch.tensor([True, True]))
    with pytest.raises(ConfigError, match="cold users only"):
        check_monitor_groups("val/warm/recall@10", torch.tensor([False]))


@pytest.mark.parametrize("path", [
    "out/train/multiruns/2026-12-01_x/3_loss.temperature=0.2,sampler=uniform",
    "/tmp/it's here",
    "/tmp/ends with a backslash\\",
    "/tmp/a\\'b",
])  # fmt: skip
def test_a_pasted_resume_path_reaches_hydra_unchanged(path):
    (arg,) = prepared_arguments([f"resume={path}"], environ={})
    (override,) = OverridesParser.create().parse_overrides([arg])
    assert override.value() == path


def test_a_secret_override_is_moved_into_the_environment():
    environ = {}
    args = prepared_arguments(["-m", "+logger.wandb.api_key=sk-123456", "data.source.token=t0k3n0", "loss.temperature=0.1", "seed=3"], environ)
    assert args == ["-m", "+logger.wandb.api_key=${oc.env:TWOTOWER_ARG_1_SECRET}", "data.source.token=${oc.env:TWOTOWER_ARG_2_SECRET}",
                    "loss.temperature=0.1", "seed=3"]  # fmt: skip
    assert environ == {SECRET_ENV.format(1): "sk-123456", SECRET_ENV.format(2): "t0k3n0"}
    assert prepared_arguments(args, environ) == args  # already moved (a rank started again by DDP)


@pytest.mark.slow
def test_a_null_monitor_tests_the_last_epoch_and_needs_no_validation():
    check_config(compose_config(["eval.monitor=null", "data.split.val_ratio=0"]))  # accepted: nothing is selected
    with pytest.raises(ConfigError, match="scheduler=plateau watches eval.monitor, which is null"):
        check_config(compose_config(["eval.monitor=null", "scheduler=plateau"]))
    with pytest.raises(ConfigError, match="data.split.val_ratio=0 leaves no validation split.*or eval.monitor=null"):
        check_config(compose_config(["data.split.val_ratio=0"]))
    with pytest.raises(ConfigError, match="the data has no validation split to compute it on"):
        check_monitor_groups("val/recall@20", torch.zeros(0, dtype=torch.bool))


@pytest.mark.parametrize("environ,expected", [
    ({}, "offline"),
    ({"WANDB_API_KEY": "k"}, "online"),
    ({"WANDB_API_KEY": "k", "WANDB_MODE": "disabled"}, "disabled"),  # what the user told W&B wins over the key
    ({"WANDB_MODE": "dryrun"}, "offline"),
    ({"WANDB_MODE": "Online"}, "online"),
    ({"WANDB_DISABLED": "true", "WANDB_MODE": "online"}, "disabled"),
])  # fmt: skip
def test_wandb_auto_follows_the_environment(environ, expected):
    assert resolve_wandb_mode("auto", environ) == expected
    assert resolve_wandb_mode("offline", environ) == "offline"  # an explicit mode wins over the environment


def test_an_unknown_wandb_mode_is_refused_before_the_run(monkeypatch):
    with pytest.raises(ConfigError, match=r"logger.wandb.mode='bogus': expected one of"):
        check_config(compose_config(["logger.wandb.mode=bogus"]))
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ConfigError, match=r"WANDB_MODE='sometimes' in the environment: expected one of"):
        check_config(compose_config(["logger.wandb.mode=auto"]))
    check_config(compose_config(["logger.wandb.mode=disabled"]))  # not consulted when the mode is explicit
