import os

import pytest

# Tests never talk to Weights & Biases, whatever the developer's environment says.
os.environ["WANDB_MODE"] = "disabled"
os.environ.pop("WANDB_API_KEY", None)

TINY = [
    "debug=fast",
    "logger.wandb.mode=disabled",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
]


@pytest.fixture
def tiny_overrides() -> list[str]:
    """Overrides that make a real run take a few seconds."""
    return list(TINY)
