"""twotower: an experiment platform for two-tower retrieval models."""

from pathlib import Path

__version__ = "0.1.0"

# Hydra's config groups ship inside the package, so any install (editable, wheel) finds them.
CONFIG_DIR = Path(__file__).resolve().parent / "conf"
