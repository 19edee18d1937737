"""SecAgg+ stage 0: the public parameters of one secure sum, its neighbour graph, and the
mask derivations both sides share.

SecAgg (Bonawitz et al. 2017, https://eprint.iacr.org/2017/281) masks each client's input
with pairwise masks that cancel in the sum and a self mask, and Shamir-shares what the server
needs to remove the masks of clients that drop out. SecAgg+ (Bell et al. 2020,
https://eprint.iacr.org/2020/704) does the pairing and the sharing only along a sparse
`degree`-regular graph, so a client's cost grows with log n instead of n. Here the graph is a
Harary graph: the cohort is placed on a ring in an order derived from a public seed (SHA-256
of seed and id) and each client is joined to its `degree / 2` nearest clients on each side;
`degree = n - 1` is the complete graph, i.e. the original SecAgg. The clients holding a
client's shares are its neighbours and itself.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar, Self

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedfm.errors import ConfigError
from fedfm.privacy.secagg.crypto import derive_key, prg_words
from fedfm.privacy.secagg.errors import MessageError
from fedfm.privacy.secagg.fixedpoint import word_dtype
from fedfm.privacy.secagg.messages import MAX_CLIENT_ID, Reader, Writer

MAX_COHORT = 100_000
MAX_VECTOR_LENGTH = 2**31 - 1
MAX_SEED_BYTES = 64


@dataclass(frozen=True)
class SecAggParams:
    """Everything public about one secure sum; the server sends it to every client (stage 0).

    Attributes:
        client_ids: the cohort, distinct ids in [0, 2^31).
        threshold: shares needed to reconstruct a secret; also the fewest survivors a client
            accepts. Must be a strict majority of a client's share holders (degree + 1), so a
            server cannot collect both shares of one client from two disjoint groups.
        vector_length: the number of words each client sums.
        degree: neighbours per client; `None` (or n - 1) is the complete graph. Otherwise even,
            in [2, n - 2].
        bits: the sum is computed mod 2^bits (1..64).
        graph_seed: public seed of the neighbour graph.
        session: binds keys, masks and ciphertexts to this sum (e.g. run and round); the
            key pairs are fresh for every sum in any case.
    """

    TAG: ClassVar[int] = 1
    client_ids: tuple[int, ...]
    threshold: int
    vector_length: int
    degree: int | None = None
    bits: int = 32
    graph_seed: bytes = b""
    session: bytes = b""
    _positions: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids, n = self.client_ids, len(self.client_ids)
        if not 2 <= n <= MAX_COHORT:
            raise ConfigError(f"secure aggregation needs 2 to {MAX_COHORT} clients, got {n}")
        if len(set(ids)) != n or any(not 0 <= c <= MAX_CLIENT_ID for c in ids):
            raise ConfigError("secure aggregation: client_ids must be distinct, in [0, 2^31)")
        degree = n - 1 if self.degree is None else self.degree
        if degree != n - 1 and not (2 <= degree <= n - 2 and degree % 2 == 0):
            raise ConfigError(
                f"secure aggregation: degree must be n - 1 = {n - 1} (complete graph) or even "
                f"in [2, {n - 2}], got {degree}"
            )
        holders = degree + 1
        lowest = default_threshold(degree)
        if not lowest <= self.threshold <= holders:
            raise ConfigError(
                f"secure aggregation: threshold must be in [{lowest}, {holders}] "
                f"(a majority of the degree + 1 = {holders} share holders), got {self.threshold}"
            )
        if not 1 <= self.vector_length <= MAX_VECTOR_LENGTH:
            raise ConfigError(
                f"secure aggregation: vector_length must be >= 1, got {self.vector_length}"
            )
        word_dtype(self.bits)
        if len(self.graph_seed) > MAX_SEED_BYTES or len(self.session) > MAX_SEED_BYTES:
            raise ConfigError(f"secure aggregation: seeds are at most {MAX_SEED_BYTES} bytes")
        object.__setattr__(self, "degree", degree)
        order = sorted(ids, key=lambda c: hashlib.sha256(self.graph_seed + _id(c)).digest())
        object.__setattr__(self, "_positions", {c: i for i, c in enumerate(order)})

    @property
    def num_clients(self) -> int:
        """The cohort size n."""
        return len(self.client_ids)

    @property
    def dtype(self) -> np.dtype:
        """The word that carries the vectors (uint32 up to 32 bits, else uint64)."""
        return word_dtype(self.bits)

    @cached_property
    def _ring(self) -> tuple[int, ...]:
        return tuple(sorted(self._positions, key=self._positions.__getitem__))

    def neighbours(self, client_id: int) -> frozenset[int]:
        """The clients `client_id` shares masks and secrets with (not itself)."""
        n, degree = self.num_clients, self.degree
        assert degree is not None
        if degree == n - 1:
            return frozenset(self.client_ids) - {client_id}
        pos = self._positions[client_id]
        half = degree // 2
        return frozenset(self._ring[(pos + k) % n] for k in range(-half, half + 1) if k)

    def holders(self, client_id: int) -> frozenset[int]:
        """The clients holding `client_id`'s shares: its neighbours and itself."""
        return self.neighbours(client_id) | {client_id}

    def write(self, w: Writer) -> None:
        """Append the fields (the setup message)."""
        w.ids(self.client_ids)
        for value in (self.threshold, self.vector_length, self.degree, self.bits):
            w.u64(value or 0)
        w.blob(self.graph_seed)
        w.blob(self.session)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read the fields; the constructor validates them."""
        ids = r.ids()
        threshold, length, degree, bits = (r.u64(MAX_VECTOR_LENGTH) for _ in range(4))
        seed, session = r.blob(MAX_SEED_BYTES), r.blob(MAX_SEED_BYTES)
        try:
            return cls(ids, threshold, length, degree, bits, seed, session)
        except ConfigError as exc:
            raise MessageError(f"SecAggParams: {exc}") from exc


def default_threshold(degree: int) -> int:
    """The smallest threshold allowed: a strict majority of the degree + 1 share holders."""
    return (degree + 1) // 2 + 1


def _id(client_id: int) -> bytes:
    return client_id.to_bytes(8, "big")


def pair_info(purpose: bytes, session: bytes, a: int, b: int) -> bytes:
    """HKDF context for a key between clients `a` and `b` (order-free) in this session."""
    lo, hi = sorted((a, b))
    return b"fedfm-secagg/" + purpose + b"/" + _id(len(session)) + session + _id(lo) + _id(hi)


def share_associated(session: bytes, sender: int, receiver: int) -> bytes:
    """AES-GCM associated data of a share: the session and the direction sender -> receiver."""
    return b"fedfm-secagg/share/" + _id(len(session)) + session + _id(sender) + _id(receiver)


def pairwise_mask(
    params: SecAggParams, private: X25519PrivateKey, peer_public: bytes, own: int, peer: int
) -> np.ndarray:
    """The signed pairwise mask client `own` adds for `peer`: +PRG(s_uv) if own < peer, else
    its negation mod 2^bits (so the pair's masks cancel in the sum)."""
    seed = derive_key(private, peer_public, pair_info(b"mask", params.session, own, peer))
    mask = prg_words(seed, params.vector_length, params.dtype)
    if own > peer:
        np.negative(mask, out=mask)  # wraps: -m mod 2^w, and 2^bits divides 2^w
    return mask


def self_mask(params: SecAggParams, seed: bytes) -> np.ndarray:
    """PRG(b_u): the self mask from a client's 32-byte seed."""
    return prg_words(seed, params.vector_length, params.dtype)
