"""fedfm: federated learning with foundation models."""

__version__ = "0.1.0"
