"""Reading and writing quantized models."""
from .checkpoint import CheckpointError, load, save

__all__ = ["CheckpointError", "load", "save"]
