"""What a run prints: Lightning's start-up lines that say nothing about the run are dropped."""

from __future__ import annotations

import logging

from lightning.pytorch.utilities.rank_zero import rank_zero_info

from twotower.loggers import quiet_lightning


def test_lightning_advertisement_and_absent_accelerators_are_dropped(caplog):
    quiet_lightning()
    quiet_lightning()  # idempotent: one filter
    assert sum(type(f).__name__ == "LightningNoise" for f in logging.getLogger("lightning.pytorch.utilities.rank_zero").filters) == 1
    with caplog.at_level(logging.INFO):
        for line in ["GPU available: False, used: False", "TPU available: False, using: 0 TPU cores",
                     "\N{ELECTRIC LIGHT BULB} Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]",
                     "GPU available: True (cuda), used: False", "`Trainer.fit` stopped: `max_epochs=3` reached."]:  # fmt: skip
            rank_zero_info(line)
    assert [r.getMessage() for r in caplog.records] == ["GPU available: True (cuda), used: False", "`Trainer.fit` stopped: `max_epochs=3` reached."]
