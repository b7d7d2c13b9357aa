"""Training guards that are not part of the model: stopping at a non-finite loss."""

from __future__ import annotations

import math

import lightning as L
import torch


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class StopOnNonFiniteLoss(L.Callback):
    """Stops training at the first non-finite loss, before its backward pass and
    optimizer step, so no NaN reaches the weights and no checkpoint is written
    after it: the last good checkpoint stays the last one. The message gives the
    step, the epoch and batch, and what usually causes it."""

    def __init__(self, temperature: float | None = None, lr: float | None = None):
        self.temperature = temperature
        self.lr = lr

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        value = float(loss.detach())
        if math.isfinite(value):
            return
        hints = ["a learning rate too high (model.optimizer.lr" + (f"={self.lr}" if self.lr is not None else "") + ")"]
        if self.temperature is not None:
            hints.insert(0, f"a temperature too low (loss.temperature={self.temperature})")
        raise NonFiniteLossError(
            f"non-finite training loss ({value}) at step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {trainer.fit_loop.epoch_loop.batch_idx}); training stopped, the last good checkpoint is kept. "
            f"Usual causes: {' or '.join(hints)}"
        )
