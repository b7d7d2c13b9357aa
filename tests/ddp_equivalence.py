"""One training step of the same model, twice: one process with the global batch, and
2 CPU processes (DDP over gloo) with half of it each. The ranks are forked (Lightning's
``ddp_fork``), not spawned, so they skip the 10 s of imports a spawned process repeats;
forking is safe here because the test runs this script with OMP_NUM_THREADS=1 (no OpenMP
thread pool to inherit). ``trainer=ddp_cpu`` itself spawns, and is tested end to end.
For each variant (a comma-separated list of overrides, ``-`` for none) it writes each
run's loss and gradients to ``OUT_DIR/VARIANT_INDEX/{single,ddp_rank0,ddp_rank1}.pt`` for
tests/test_distributed.py to compare. Run as ``python ddp_equivalence.py OUT_DIR VARIANT
[VARIANT ...]``: in its own process, so a hung rank cannot stall pytest.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch

from twotower.config import compose_config
from twotower.wiring import build_run


class RecordFirstStep(L.Callback):
    """Saves the loss and the (DDP-synchronized) gradients of the first step, before the update."""

    def __init__(self, path: Path):
        self.path = path
        self.grads: dict[str, torch.Tensor] = {}

    def on_after_backward(self, trainer, module) -> None:
        if not self.grads:
            self.grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        name = "single" if trainer.world_size == 1 else f"ddp_rank{trainer.global_rank}"
        torch.save({"loss": outputs["loss"].detach(), "grads": self.grads}, self.path / f"{name}.pt")


def one_step(out_dir: Path, overrides: list[str], devices: int) -> None:
    cfg = compose_config(overrides, output_dir=out_dir / "run")
    run = build_run(cfg, for_training=False)  # the devices are this test's, not the config's
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_fork" if devices > 1 else "auto",
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[RecordFirstStep(out_dir)],
    )
    trainer.fit(run.module, datamodule=run.datamodule)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    for number, variant in enumerate(sys.argv[2:]):
        overrides = [] if variant == "-" else variant.split(",")
        (out / str(number)).mkdir(parents=True, exist_ok=True)
        one_step(out / str(number), overrides, devices=1)
        one_step(out / str(number), overrides, devices=2)
