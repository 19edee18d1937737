"""Secure aggregation (SecAgg+): the server learns only the sum of the clients' vectors.

Modules: `crypto` (X25519, HKDF, AES-GCM, ChaCha20 masks), `shamir` (secret sharing),
`fixedpoint` (floats <-> integers mod 2^bits), `messages` (the wire format), `protocol`
(parameters, neighbour graph, masks), `client` and `server` (one state machine per side),
`errors`, `simulation` (`secure_sum`, `measure_overhead`: the whole protocol in one
process), `stage` (the `secagg` pipeline stage and its per-round sessions).
"""

from fedfm.privacy.secagg.client import SecAggClient
from fedfm.privacy.secagg.errors import (
    InconsistentRequestError,
    MessageError,
    NotEnoughSurvivorsError,
    ProtocolError,
    SecAggError,
)
from fedfm.privacy.secagg.fixedpoint import FixedPoint, max_levels
from fedfm.privacy.secagg.protocol import SecAggParams
from fedfm.privacy.secagg.server import SecAggResult, SecAggServer
from fedfm.privacy.secagg.simulation import (
    Overhead,
    SecureSumResult,
    measure_overhead,
    secure_sum,
)

__all__ = [
    "FixedPoint",
    "InconsistentRequestError",
    "MessageError",
    "NotEnoughSurvivorsError",
    "Overhead",
    "ProtocolError",
    "SecAggClient",
    "SecAggError",
    "SecAggParams",
    "SecAggResult",
    "SecAggServer",
    "SecureSumResult",
    "max_levels",
    "measure_overhead",
    "secure_sum",
]
