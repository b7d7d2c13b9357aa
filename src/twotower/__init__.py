"""twotower: an experiment platform for two-tower retrieval models."""

__version__ = "0.1.0"
