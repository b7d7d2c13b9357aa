"""Run a training that kills itself (SIGKILL, no clean-up) at a chosen point, for
tests/test_faults.py. ``python fault_injection.py RUN_DIR FAULT [OVERRIDE ...]`` where
FAULT is one of:

- ``train_step:N``  killed as global training step N starts (mid-epoch);
- ``validation:E``  killed during the validation of epoch E;
- ``checkpoint:K``  killed during the K-th checkpoint write, after the temporary file is
  written and before it replaces the old checkpoint (the worst moment for a non-atomic write).

The run directory, config and status are those of a real ``twotower-train`` run
(``run_task`` writes them), so the documented ``twotower-train resume=RUN_DIR`` continues it.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import lightning as L

import twotower.train
import twotower.training
from twotower.config import compose_config


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillAt(L.Callback):
    def __init__(self, where: str, when: int):
        self.where, self.when = where, when

    def on_train_batch_start(self, trainer, *args) -> None:
        if self.where == "train_step" and trainer.global_step == self.when:
            die()

    def on_validation_batch_start(self, trainer, *args) -> None:
        if self.where == "validation" and trainer.current_epoch == self.when:
            die()


def kill_on_checkpoint_write(k: int) -> None:
    """The K-th atomic write of a checkpoint dies between writing its temporary file and
    the rename: the temporary file is complete on disk, the old checkpoint untouched."""
    writes = {"n": 0}
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(".ckpt"):
            writes["n"] += 1
            if writes["n"] == k:
                die()
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace  # the process is about to die: other renames pass through unchanged


if __name__ == "__main__":
    run_dir, fault, overrides = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    where, _, when = fault.partition(":")
    callbacks = []
    if where == "checkpoint":
        kill_on_checkpoint_write(int(when))
    else:
        callbacks.append(KillAt(where, int(when)))
    cfg = compose_config(overrides, output_dir=run_dir)
    real_train = twotower.training.train
    twotower.training.train = lambda c: real_train(c, callbacks=callbacks)
    twotower.train.run_task(cfg)
