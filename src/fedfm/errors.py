"""The error hierarchy: every error fedfm raises on purpose is a `FedFMError`."""


class FedFMError(Exception):
    """Base class of every error fedfm raises on purpose."""


class ConfigError(FedFMError, ValueError):
    """A configuration value is missing, unknown or out of range."""


class TransportError(FedFMError):
    """A payload that crossed a process or network boundary is malformed or too large."""


class ClientError(FedFMError):
    """A client failed during local work."""


class NotEnoughClientsError(FedFMError):
    """Fewer clients exist, or succeeded, than a round needs."""


class CheckpointError(FedFMError):
    """A checkpoint is missing, unreadable, malformed or belongs to a different run."""


class AggregationError(FedFMError, ValueError):
    """A round's updates cannot be combined (the round fails; the global state is kept)."""
