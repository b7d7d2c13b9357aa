"""Every loss with every negative source: one real training step each (finite loss and
gradients), or a refusal that names the pair and the way out."""

import pytest
import torch

from twotower.config import CONFIG_DIR, ConfigError, build, check_loss_sampler, compose_config
from twotower.module import RetrievalModule
from twotower.train import build_datamodule

# training_step is called without a Trainer: its self.log() call only warns.
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")

LOSSES = sorted(p.stem for p in (CONFIG_DIR / "loss").glob("*.yaml"))
SAMPLERS = sorted(p.stem for p in (CONFIG_DIR / "sampler").glob("*.yaml"))


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("loss_name", LOSSES)
def test_pair_trains_one_step_or_is_refused(loss_name, sampler, tmp_path):
    cfg = compose_config([f"loss={loss_name}", f"sampler={sampler}", "data.batch_size=64", "seed=0"], output_dir=tmp_path)
    loss = build(cfg.loss)
    dm = build_datamodule(cfg, train_on=loss.trains_on)
    dm.setup("fit")
    if loss.needs_negatives != dm.sampler.provides_negatives:
        with pytest.raises(ConfigError, match=f"loss={loss_name} with sampler={sampler}: .* use sampler="):
            check_loss_sampler(loss, dm.sampler, {"loss": loss_name, "sampler": sampler})
        return
    check_loss_sampler(loss, dm.sampler)
    model = build(cfg.model.net)(dm.data)
    module = RetrievalModule(model, loss, build(cfg.model.optimizer), [10], dm.data.item_counts)
    batch = next(iter(dm.train_dataloader()))
    value = module.training_step(batch, 0)
    value.backward()
    assert torch.isfinite(value), f"{loss_name} x {sampler}: loss {value}"
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_pair_specialization_is_applied():
    """conf/loss_sampler/<loss>_<sampler>.yaml overrides the sampler for that pair only."""
    assert compose_config(["loss=pairwise_hinge", "sampler=in_batch"]).sampler.logq == "none"
    assert compose_config(["loss=listwise", "sampler=in_batch"]).sampler.logq == "counts"
    assert compose_config(["loss=listwise", "sampler=popularity"]).sampler.logq_correction is True
    assert compose_config(["loss=pairwise_hinge", "sampler=popularity"]).sampler.logq_correction is False
