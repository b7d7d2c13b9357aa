"""twotower: an experiment platform for two-tower retrieval models."""

from pathlib import Path

__version__ = "0.1.0"

# conf/ sits at the repository root, beside src/ (the package is installed in editable mode).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"
