"""Secure-aggregation errors: one class per way a round can be refused or fail."""

from __future__ import annotations

from fedfm.errors import AggregationError, FedFMError, TransportError


class SecAggError(FedFMError):
    """Base class of the secure-aggregation errors."""


class MessageError(SecAggError, TransportError):
    """A protocol message is malformed, oversized, or of the wrong type."""


class ProtocolError(SecAggError):
    """A party was driven out of order, or a peer's message breaks the protocol."""


class InconsistentRequestError(ProtocolError):
    """A client refuses an unmask request (alive and dropped, unknown ids, too few alive)."""


class NotEnoughSurvivorsError(SecAggError, AggregationError):
    """Fewer than `threshold` clients (or shares) remain: the round fails, nothing is revealed."""
