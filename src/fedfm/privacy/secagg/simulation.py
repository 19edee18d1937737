"""In-process SecAgg+: every client and the server in one process, every message as bytes.

`secure_sum` runs the whole protocol over a list of vectors, with clients dropping out at any
stage, and returns the sum over the clients whose masked inputs arrived. `measure_overhead`
times it against a plain sum and counts the bytes (for the privacy benchmark).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal, TypeVar, get_args

import numpy as np
import torch

from fedfm.privacy.secagg.client import SecAggClient
from fedfm.privacy.secagg.errors import SecAggError
from fedfm.privacy.secagg.fixedpoint import FixedPoint
from fedfm.privacy.secagg.messages import (
    AdvertiseKeys,
    MaskedInput,
    Message,
    PublicKeys,
    RoutedShares,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
    decode,
    encode,
)
from fedfm.privacy.secagg.protocol import SecAggParams, default_threshold
from fedfm.privacy.secagg.server import SecAggServer
from fedfm.state import DEFAULT_MAX_BYTES

DropStage = Literal["advertise", "share_keys", "masked_input", "unmask"]
DROP_STAGES: tuple[DropStage, ...] = get_args(DropStage)
M = TypeVar("M", bound=Message)
T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class SecureSumResult:
    """What `secure_sum` returns.

    Attributes:
        total: the integer sum mod 2^bits of the survivors' (encoded) inputs.
        survivors: the clients whose inputs are in the sum, sorted.
        value: for float inputs, the decoded float sum of the survivors' clipped inputs.
        bytes_up: bytes of every client -> server message.
        bytes_down: bytes of every server -> client message (the setup included).
        seconds_clients: time spent in the clients' protocol steps (all clients).
        seconds_server: time spent in the server's protocol steps.
        refused: clients that refused a step (and so sent nothing from then on), and why.
    """

    total: np.ndarray
    survivors: tuple[int, ...]
    value: np.ndarray | None
    bytes_up: int
    bytes_down: int
    seconds_clients: float
    seconds_server: float
    refused: Mapping[int, str]


class _Wire:
    """Carries messages as bytes, counting them and the time each side spends."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.up = self.down = 0
        self.seconds_clients = self.seconds_server = 0.0
        self.refused: dict[int, str] = {}

    def download(self, message: Message, kind: type[M]) -> M:
        """Server -> client."""
        data = encode(message)
        self.down += len(data)
        return decode(data, kind, self.max_bytes)

    def upload(self, client: int, step: Callable[[], Message], kind: type[M]) -> list[M]:
        """Run a client step and carry its message client -> server; a client that refuses
        (a `SecAggError`) sends nothing, like a client that drops."""
        t = time.perf_counter()
        try:
            data = encode(step())
        except SecAggError as exc:
            self.refused[client] = str(exc)
            return []
        finally:
            self.seconds_clients += time.perf_counter() - t
        self.up += len(data)
        return [decode(data, kind, self.max_bytes)]

    def server(self, step: Callable[[], T]) -> T:
        """Run a server step."""
        t = time.perf_counter()
        try:
            return step()
        finally:
            self.seconds_server += time.perf_counter() - t


def secure_sum(
    inputs: Sequence[np.ndarray | torch.Tensor],
    *,
    threshold: int | None = None,
    degree: int | None = None,
    bits: int = 32,
    fixed_point: FixedPoint | None = None,
    dropouts: Mapping[int, DropStage] | None = None,
    client_ids: Sequence[int] | None = None,
    seed: int = 0,
    max_message_bytes: int = DEFAULT_MAX_BYTES,
) -> SecureSumResult:
    """Run SecAgg+ in-process over one vector per client.

    Args:
        inputs: one 1-D vector per client, all the same length. Integers in [0, 2^bits) are
            summed as they are; floats are first encoded by `fixed_point`.
        threshold: shares needed per secret; default the smallest majority of degree + 1.
        degree: neighbours per client (even); default n - 1, the complete graph (SecAgg).
        bits: the sum is mod 2^bits.
        fixed_point: the encoding of float inputs (its `bits` must equal `bits`); required
            for floats. Rounding is stochastic, seeded by (`seed`, client id).
        dropouts: client id -> the first stage at which it sends nothing: `"advertise"` (never
            joins), `"share_keys"` (drops after advertising), `"masked_input"` (after sharing
            keys: its input is not in the sum), `"unmask"` (after its masked input: its
            input is in the sum, its shares are not).
        client_ids: the clients' ids, default 0..n-1.
        seed: seeds the quantisation and the public neighbour graph (the keys, masks and the
            session always come from the operating system's CSPRNG).
        max_message_bytes: largest message either side accepts.

    Returns:
        The sum over the survivors (the clients whose masked inputs arrived).

    Raises:
        NotEnoughSurvivorsError: fewer than `threshold` clients (or shares) remain at some
            stage; nothing is returned.
        ValueError, ConfigError: bad inputs or parameters (e.g. fixed-point overflow).
    """
    vectors = [_as_array(x) for x in inputs]
    n = len(vectors)
    ids = tuple(range(n)) if client_ids is None else tuple(int(c) for c in client_ids)
    if len(ids) != n or n == 0:
        raise ValueError(f"secure_sum: {n} inputs but {len(ids)} client ids")
    length = vectors[0].size
    if any(v.shape != (length,) for v in vectors):
        raise ValueError("secure_sum: every input must be a 1-D vector of the same length")
    codes = _encode(vectors, ids, bits, fixed_point, seed)
    drops = dict(dropouts or {})
    if bad := {c: s for c, s in drops.items() if c not in ids or s not in DROP_STAGES}:
        raise ValueError(f"secure_sum: bad dropouts {bad}; stages are {list(DROP_STAGES)}")
    d = n - 1 if degree is None else degree
    params = SecAggParams(
        ids,
        default_threshold(d) if threshold is None else threshold,
        length,
        degree,
        bits,
        graph_seed=hashlib.sha256(b"fedfm-secagg/graph" + seed.to_bytes(8, "big")).digest(),
        session=os.urandom(16),
    )
    wire = _Wire(max_message_bytes)

    def sends(stage: DropStage) -> list[int]:
        """Clients still sending at `stage`."""
        cut = DROP_STAGES.index(stage)
        return [c for c in ids if c not in drops or DROP_STAGES.index(drops[c]) > cut]

    # 0. Setup: the server sends the public parameters to every client.
    server = SecAggServer(params)
    clients = {c: SecAggClient(c, wire.download(params, SecAggParams)) for c in ids}
    # 1. Advertise keys.
    adverts = [
        m
        for c in sends("advertise")
        for m in wire.upload(c, clients[c].advertise_keys, AdvertiseKeys)
    ]
    keys = wire.server(partial(server.collect_keys, adverts))
    # 2. Share keys: each client seals shares for its neighbours, the server routes them.
    shares = [
        m
        for c in sends("share_keys")
        if c in keys
        for m in wire.upload(
            c, partial(clients[c].share_keys, wire.download(keys[c], PublicKeys)), ShareKeys
        )
    ]
    routed = wire.server(partial(server.route_shares, shares))
    # 3. Masked inputs; the server keeps only their running sum.
    masked = [
        m
        for c in sends("masked_input")
        if c in routed
        for m in wire.upload(
            c,
            partial(clients[c].masked_input, wire.download(routed[c], RoutedShares), codes[c]),
            MaskedInput,
        )
    ]
    requests = wire.server(partial(server.collect_masked, masked))
    # 4. Unmasking: survivors reveal the shares the server needs; it removes the masks.
    answers = [
        m
        for c in sends("unmask")
        if c in requests
        for m in wire.upload(
            c, partial(clients[c].unmask, wire.download(requests[c], UnmaskRequest)), UnmaskShares
        )
    ]
    result = wire.server(partial(server.unmask, answers))
    value = None
    if fixed_point is not None:
        value = fixed_point.decode_sum(result.total, len(result.survivors))
    return SecureSumResult(
        result.total,
        result.survivors,
        value,
        wire.up,
        wire.down,
        wire.seconds_clients,
        wire.seconds_server,
        wire.refused,
    )


def _as_array(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _encode(
    vectors: list[np.ndarray],
    ids: tuple[int, ...],
    bits: int,
    fixed_point: FixedPoint | None,
    seed: int,
) -> dict[int, np.ndarray]:
    """Each client's integer input (fixed-point codes for floats)."""
    floats = [v.dtype.kind == "f" for v in vectors]
    if not any(floats):
        if fixed_point is not None:
            raise ValueError("secure_sum: fixed_point applies to float inputs only")
        return dict(zip(ids, vectors, strict=True))
    if not all(floats) or fixed_point is None:
        raise ValueError("secure_sum: float inputs need fixed_point (and no integer inputs)")
    if fixed_point.bits != bits:
        raise ValueError(f"secure_sum: fixed_point.bits = {fixed_point.bits} but bits = {bits}")
    fixed_point.check_capacity(len(vectors))
    return {
        c: fixed_point.encode(v, np.random.default_rng([seed, c]))
        for c, v in zip(ids, vectors, strict=True)
    }


@dataclass(frozen=True)
class Overhead:
    """Time and bytes of one secure sum against a plain sum of the same float32 vectors.

    Attributes:
        num_clients: the cohort size (before dropouts).
        vector_length: floats per client.
        degree: neighbours per client (n - 1: the complete graph).
        threshold: shares needed per secret.
        seconds_plain: serialise the survivors' vectors, parse and sum them on the server.
        seconds_secure: the whole protocol, every client and the server in one process.
        seconds_secure_clients: of which in the clients' steps (all clients together).
        seconds_secure_server: of which in the server's steps.
        bytes_plain: float32 uploads of the survivors.
        bytes_secure_up: every client -> server message of the protocol.
        bytes_secure_down: every server -> client message of the protocol.
        max_abs_error: largest |secure sum - plain sum of the clipped vectors|.
        error_bound: the fixed-point bound `max_abs_error` is checked against.
    """

    num_clients: int
    vector_length: int
    degree: int
    threshold: int
    seconds_plain: float
    seconds_secure: float
    seconds_secure_clients: float
    seconds_secure_server: float
    bytes_plain: int
    bytes_secure_up: int
    bytes_secure_down: int
    max_abs_error: float
    error_bound: float


def measure_overhead(
    num_clients: int,
    vector_length: int,
    *,
    degree: int | None = None,
    threshold: int | None = None,
    bits: int = 32,
    clip_range: float = 0.05,
    dropouts: Mapping[int, DropStage] | None = None,
    seed: int = 0,
) -> Overhead:
    """Time and count bytes of `secure_sum` against a plain sum, on Gaussian vectors.

    Both sides sum the same vectors; the secure result must match the plain sum of the
    clipped vectors within the fixed-point bound, else the measurement is refused.

    Args:
        num_clients: the cohort size.
        vector_length: floats per client (a LoRA update of the default job: ~75k).
        degree: neighbours per client; default the complete graph.
        threshold: shares needed per secret; default the smallest majority.
        bits: the sum is mod 2^bits.
        clip_range: the fixed-point range; the vectors have std clip_range / 4.
        dropouts: as for `secure_sum`; the plain sum then covers the same survivors (the
            clients that reach the masked-input stage).
        seed: seeds the vectors, the rounding and the graph.

    Raises:
        RuntimeError: the two sums disagree beyond the fixed-point error bound.
    """
    rng = np.random.default_rng(seed)
    vectors = [
        rng.normal(0.0, clip_range / 4, vector_length).astype(np.float32)
        for _ in range(num_clients)
    ]
    gone = {c for c, stage in (dropouts or {}).items() if stage != "unmask"}
    alive = [c for c in range(num_clients) if c not in gone]
    t = time.perf_counter()
    payloads = [vectors[c].tobytes() for c in alive]  # what a plain client uploads
    plain = np.zeros(vector_length, dtype=np.float64)
    for data in payloads:
        plain += np.frombuffer(data, dtype=np.float32)
    seconds_plain = time.perf_counter() - t

    fixed_point = FixedPoint.for_cohort(clip_range, num_clients, bits)
    t = time.perf_counter()
    result = secure_sum(
        vectors,
        threshold=threshold,
        degree=degree,
        bits=bits,
        fixed_point=fixed_point,
        dropouts=dropouts,
        seed=seed,
    )
    seconds_secure = time.perf_counter() - t

    assert result.value is not None
    clipped = np.sum(
        [np.clip(vectors[c], -clip_range, clip_range) for c in alive], axis=0, dtype=float
    )
    error = float(np.max(np.abs(result.value - clipped)))
    bound = fixed_point.error_bound(len(alive), stochastic=True)
    if list(result.survivors) != alive or error > bound:
        raise RuntimeError(
            f"secure and plain sums differ: survivors {len(result.survivors)} vs {len(alive)}, "
            f"max error {error:.3g}, bound {bound:.3g}"
        )
    d = num_clients - 1 if degree is None else degree
    return Overhead(
        num_clients,
        vector_length,
        d,
        default_threshold(d) if threshold is None else threshold,
        seconds_plain,
        seconds_secure,
        result.seconds_clients,
        result.seconds_server,
        sum(len(p) for p in payloads),
        result.bytes_up,
        result.bytes_down,
        error,
        bound,
    )
