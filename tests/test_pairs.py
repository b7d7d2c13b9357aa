"""Every loss with every negative source: one real training step each (finite loss and
gradients), or a refusal that names the pair and the way out."""

import pytest
import torch

from twotower.config import CONFIG_DIR, ConfigError, check_loss_sampler, compose_config
from twotower.wiring import build_run

# training_step is called without a Trainer: its self.log() call only warns.
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")

LOSSES = sorted(p.stem for p in (CONFIG_DIR / "loss").glob("*.yaml"))
SAMPLERS = sorted(p.stem for p in (CONFIG_DIR / "sampler").glob("*.yaml"))
# The fast tier: every loss with in-batch negatives, every sampler with the listwise loss, and
# the regression pair; the other pairs run with the slow tier.
FAST = {(loss, "in_batch") for loss in LOSSES} | {("listwise", sampler) for sampler in SAMPLERS} | {("mse", "none")}
PAIRS = [pytest.param(loss, sampler, marks=() if (loss, sampler) in FAST else pytest.mark.slow, id=f"{loss}-{sampler}")
         for loss in LOSSES for sampler in SAMPLERS]  # fmt: skip


@pytest.mark.parametrize("loss_name,sampler", PAIRS)
def test_pair_trains_one_step_or_is_refused(loss_name, sampler, tmp_path):
    cfg = compose_config([f"loss={loss_name}", f"sampler={sampler}", "data.batch_size=64", "seed=0"], output_dir=tmp_path)
    run = build_run(cfg, for_training=False)  # the pair's check is made here, with the names the user typed
    if run.loss.needs_negatives != run.datamodule.sampler.provides_negatives:
        with pytest.raises(ConfigError, match=f"loss={loss_name} with sampler={sampler}: .* use sampler="):
            check_loss_sampler(run.loss, run.datamodule.sampler, {"loss": loss_name, "sampler": sampler})
        return
    check_loss_sampler(run.loss, run.datamodule.sampler)
    batch = next(iter(run.datamodule.train_dataloader()))
    value = run.module.training_step(batch, 0)
    value.backward()
    assert torch.isfinite(value), f"{loss_name} x {sampler}: loss {value}"
    grads = [p.grad for p in run.module.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_pair_specialization_is_applied():
    """conf/loss_sampler/<loss>_<sampler>.yaml overrides the sampler for that pair only."""
    assert compose_config(["loss=pairwise_hinge", "sampler=in_batch"]).sampler.logq == "none"
    assert compose_config(["loss=listwise", "sampler=in_batch"]).sampler.logq == "counts"
    assert compose_config(["loss=listwise", "sampler=popularity"]).sampler.logq == "counts"
    assert compose_config(["loss=pairwise_hinge", "sampler=popularity"]).sampler.logq == "none"
