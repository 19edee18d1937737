"""The `secagg` pipeline stage (kind MASK): SecAgg+ inside a fedfm round.

A secure sum needs messages between the pipeline's two halves before and after training, so
besides the `Stage` methods this stage has byte-level entry points a backend and the round
loop call (the same code on both sides of a network):

    server: open_round(round, ids, like, seed) -> setup bytes per client
    client: client_step(id, round, setup)           -> AdvertiseKeys bytes
    server: server_step(round, replies)             -> PublicKeys bytes per client
    client: client_step(id, round, public keys)     -> ShareKeys bytes
    server: server_step(round, replies)             -> RoutedShares bytes per client
    client: client_step(id, round, routed shares)   -> b"" (kept for encode)
    client: encode(update, ctx)   (training done)   -> {"secagg.masked": uint words}
    server: collect(round, masked payloads)         -> UnmaskRequest bytes per survivor
    client: client_step(id, round, request)         -> UnmaskShares bytes
    server: finish(round, replies, like, weights)   -> Aggregate (the survivors' mean)

The update (tensors in name order, as one float vector) is clipped to `clip_range` per entry,
fixed-point encoded for the cohort size, and masked; the server only ever holds masked
vectors and their sum. With `weighting="uniform"` the aggregate is the plain mean of the
survivors' clipped updates. With `"examples"` (FedAvg's weights) a client first scales its
clipped update by w = num_examples / max_num_examples <= 1 (so it stays in range), and the
server divides the decoded sum by the survivors' total w; the weights are the `num_examples`
every reply carries in the clear anyway. Scaling before quantising keeps the error at most
one step per client, whatever the weights: |error| <= n * step / sum(w). Sessions live in
memory only, so secret keys are never written to a client store or checkpoint: the server's
until `finish`, a client's until it answers the unmask request (or, if it dropped out, until
its next round).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np
import torch

from fedfm.errors import AggregationError, ConfigError
from fedfm.pipeline import StageBase, StageContext, StageKind
from fedfm.privacy.secagg.client import SecAggClient
from fedfm.privacy.secagg.errors import MessageError, ProtocolError
from fedfm.privacy.secagg.fixedpoint import FixedPoint, max_levels
from fedfm.privacy.secagg.messages import (
    MAGIC,
    AdvertiseKeys,
    MaskedInput,
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
from fedfm.state import DEFAULT_MAX_BYTES, State
from fedfm.strategies.base import Aggregate

PAYLOAD_KEY = "secagg.masked"
C = TypeVar("C", AdvertiseKeys, ShareKeys, UnmaskShares)
ROUNDING_SALT = 0x5EC  # stochastic rounding draws from (seed, round, client, salt)
Weighting = Literal["examples", "uniform"]


@dataclass
class _ClientSession:
    server_round: int
    client: SecAggClient
    fixed_point: FixedPoint
    routed: RoutedShares | None = None


@dataclass
class _ServerSession:
    server: SecAggServer
    fixed_point: FixedPoint
    dropped: dict[int, str] = field(default_factory=dict)


class SecAggStage(StageBase):
    """Secure aggregation of the update (SecAgg+, see `fedfm.privacy.secagg.protocol`).

    Args:
        clip_range: each entry of the update is clipped to [-clip_range, clip_range].
        bits: sums are computed mod 2^bits.
        degree: neighbours per client (even); `None`, or more than the cohort allows, is the
            complete graph.
        min_fraction: a secret needs this fraction of its holders (at least a majority).
        levels: fixed-point levels; `None` is the finest the cohort size allows.
        max_message_bytes: largest protocol message either side accepts.
        weighting: `"uniform"` (every survivor weighs the same) or `"examples"` (by the
            `num_examples` in the client's `StageContext` and reply).
        max_num_examples: with `"examples"`, the weight that scales an update by 1; a client
            with more examples refuses to encode.
    """

    name = "secagg"
    kind = StageKind.MASK

    def __init__(
        self,
        clip_range: float,
        bits: int = 32,
        degree: int | None = None,
        min_fraction: float = 0.5,
        levels: int | None = None,
        max_message_bytes: int = DEFAULT_MAX_BYTES,
        weighting: Weighting = "uniform",
        max_num_examples: int = 10_000,
    ) -> None:
        FixedPoint(clip_range, levels or 2, bits)  # validates clip_range and bits
        if not 0 < min_fraction <= 1:
            raise ConfigError(f"secagg: min_fraction must be in (0, 1], got {min_fraction}")
        if degree is not None and (degree < 2 or degree % 2):
            raise ConfigError(f"secagg: degree must be even and >= 2 (or unset), got {degree}")
        self.clip_range, self.bits, self.degree = clip_range, bits, degree
        self.min_fraction, self.levels = min_fraction, levels
        if weighting not in ("examples", "uniform"):
            raise ConfigError(
                f"secagg: weighting must be 'examples' or 'uniform', got {weighting!r}"
            )
        if max_num_examples < 1:
            raise ConfigError(f"secagg: max_num_examples must be >= 1, got {max_num_examples}")
        self.max_message_bytes = max_message_bytes
        self.weighting, self.max_num_examples = weighting, max_num_examples
        self.clients_: dict[int, _ClientSession] = {}  # client -> its latest round's session
        self.servers_: dict[int, _ServerSession] = {}  # round

    def fixed_point(self, num_clients: int) -> FixedPoint:
        """The encoding for a cohort of `num_clients` (refusing one that could overflow)."""
        levels = self.levels or max_levels(num_clients, self.bits)
        fp = FixedPoint(self.clip_range, levels, self.bits)
        fp.check_capacity(num_clients)
        return fp

    def params(
        self, server_round: int, client_ids: list[int], vector_length: int, seed: int
    ) -> SecAggParams:
        """The public parameters of one round's secure sum."""
        n = len(client_ids)
        degree = self.degree if self.degree is not None and self.degree < n - 1 else n - 1
        threshold = max(default_threshold(degree), math.ceil(self.min_fraction * (degree + 1)))
        tag = hashlib.sha256(f"fedfm-secagg/{seed}/{server_round}".encode()).digest()
        return SecAggParams(
            tuple(sorted(client_ids)),
            threshold,
            vector_length,
            degree,
            self.bits,
            graph_seed=tag[:16],
            session=tag[16:],
        )

    # ---- server side -------------------------------------------------------------------

    def open_round(
        self, server_round: int, client_ids: list[int], like: Mapping[str, torch.Tensor], seed: int
    ) -> dict[int, bytes]:
        """Start a round's secure sum; the setup message for each client."""
        length = sum(t.numel() for t in like.values())
        params = self.params(server_round, client_ids, length, seed)
        fp = self.fixed_point(params.num_clients)
        self.servers_ = {server_round: _ServerSession(SecAggServer(params), fp)}
        setup = encode(params)
        return dict.fromkeys(params.client_ids, setup)

    def server_step(self, server_round: int, replies: Mapping[int, bytes]) -> dict[int, bytes]:
        """Stages 1 and 2 on the server: keys in, public keys out; shares in, routed out.

        Raises:
            NotEnoughSurvivorsError: too few clients answered.
        """
        session = self._server(server_round)
        server = session.server
        if server.stage_ == "keys":
            adverts = self._parse(session, replies, AdvertiseKeys)
            return {c: encode(m) for c, m in server.collect_keys(adverts).items()}
        shares = self._parse(session, replies, ShareKeys)
        return {c: encode(m) for c, m in server.route_shares(shares).items()}

    def wire_like(self, like: Mapping[str, torch.Tensor]) -> State:
        """What `encode` sends for an update shaped like `like`: one vector of words."""
        length = sum(t.numel() for t in like.values())
        dtype = torch.uint32 if self.bits <= 32 else torch.uint64
        return {PAYLOAD_KEY: torch.zeros(length, dtype=dtype)}

    def collect(self, server_round: int, masked: Mapping[int, State]) -> dict[int, bytes]:
        """Stage 3 on the server: add the masked payloads; the unmask request per survivor."""
        session = self._server(server_round)
        inputs = [MaskedInput(c, p[PAYLOAD_KEY].numpy()) for c, p in sorted(masked.items())]
        return {c: encode(m) for c, m in session.server.collect_masked(inputs).items()}

    def finish(
        self,
        server_round: int,
        replies: Mapping[int, bytes],
        like: Mapping[str, torch.Tensor],
        num_examples: Mapping[int, int],
    ) -> Aggregate:
        """Stage 4 on the server: unmask, decode, and the (weighted) mean of the survivors'
        updates.

        Args:
            server_round: the round.
            replies: each survivor's answer to its unmask request.
            like: the names, shapes and dtypes of the update.
            num_examples: each client's `num_examples` (from its reply): the weights.

        Raises:
            NotEnoughSurvivorsError: too few shares arrived (an `AggregationError`: the loop
                keeps the global state).
            AggregationError: with `"examples"`, a survivor without `num_examples`.
        """
        session = self._server(server_round)
        del self.servers_[server_round]
        result = session.server.unmask(self._parse(session, replies, UnmaskShares))
        total = session.fixed_point.decode_sum(result.total, len(result.survivors))
        examples = [num_examples.get(c, 0) for c in result.survivors]
        if self.weighting == "uniform":
            weight = float(len(result.survivors))
        elif min(examples) < 1:
            missing = [c for c, n in zip(result.survivors, examples, strict=True) if n < 1]
            raise AggregationError(f"secagg: no num_examples for survivors {missing}")
        else:
            weight = sum(examples) / self.max_num_examples
        return Aggregate(
            unflatten(total / weight, like),
            num_clients=len(result.survivors),
            total_weight=float(sum(examples)),
            client_ids=result.survivors,
        )

    def weight(self, num_examples: int) -> float:
        """A client's scale before masking: 1, or num_examples / max_num_examples.

        Raises:
            ProtocolError: with `"examples"`, `num_examples` outside [1, max_num_examples].
        """
        if self.weighting == "uniform":
            return 1.0
        if not 1 <= num_examples <= self.max_num_examples:
            raise ProtocolError(
                f"secagg: num_examples = {num_examples} is not in [1, max_num_examples = "
                f"{self.max_num_examples}]; raise pipeline.uplink secagg max_num_examples"
            )
        return num_examples / self.max_num_examples

    # ---- client side -------------------------------------------------------------------

    def client_step(self, client_id: int, server_round: int, data: bytes) -> bytes:
        """One protocol message from the server to this client, and the client's answer.

        Raises:
            MessageError: malformed bytes.
            ProtocolError, InconsistentRequestError: the client refuses.
        """
        tag = data[len(MAGIC)] if len(data) > len(MAGIC) else -1
        max_bytes = self.max_message_bytes
        if tag == SecAggParams.TAG:  # a new round: any older session of this client ends
            params = decode(data, SecAggParams, max_bytes)
            fp = self.fixed_point(params.num_clients)
            session = _ClientSession(server_round, SecAggClient(client_id, params), fp)
            self.clients_[client_id] = session
            return encode(session.client.advertise_keys())
        session = self._client(client_id, server_round)
        if tag == PublicKeys.TAG:
            return encode(session.client.share_keys(decode(data, PublicKeys, max_bytes)))
        if tag == RoutedShares.TAG:
            session.routed = decode(data, RoutedShares, max_bytes)
            return b""
        if tag == UnmaskRequest.TAG:
            del self.clients_[client_id]
            return encode(session.client.unmask(decode(data, UnmaskRequest, max_bytes)))
        raise MessageError(f"secagg: client {client_id} got a message with unknown tag {tag}")

    def encode(self, update: State, ctx: StageContext) -> tuple[State, dict[str, float]]:
        """Stage 3 on the client: clip, weight, fixed-point encode and mask the update.

        Raises:
            ProtocolError: no session for this round (the key exchange did not run), a
                stream other than the update (extras are not masked), or a bad weight.
        """
        if ctx.stream != "update":
            raise ProtocolError(f"secagg masks the update only, not the extra {ctx.stream!r}")
        session = self._client(ctx.client_id, ctx.server_round)
        if session.routed is None:
            raise ProtocolError(f"secagg: client {ctx.client_id} has no routed shares")
        x = flatten(update)
        weight = self.weight(ctx.num_examples)
        rng = np.random.default_rng([ctx.seed, ctx.server_round, ctx.client_id, ROUNDING_SALT])
        scaled = np.clip(x, -self.clip_range, self.clip_range) * weight if weight != 1 else x
        codes = session.fixed_point.encode(scaled, rng)
        masked = session.client.masked_input(session.routed, codes).masked
        clipped = float(np.mean(np.abs(x) > self.clip_range)) if x.size else 0.0
        return {PAYLOAD_KEY: torch.from_numpy(masked)}, {"clipped_fraction": clipped}

    def _client(self, client_id: int, server_round: int) -> _ClientSession:
        session = self.clients_.get(client_id)
        if session is None or session.server_round != server_round:
            raise ProtocolError(
                f"secagg: client {client_id} has no session for round {server_round}"
            )
        return session

    def _server(self, server_round: int) -> _ServerSession:
        if server_round not in self.servers_:
            raise ProtocolError(f"secagg: no secure sum open for round {server_round}")
        return self.servers_[server_round]

    def _parse(
        self, session: _ServerSession, replies: Mapping[int, bytes], kind: type[C]
    ) -> list[C]:
        """Decode each client's reply; a malformed one, or one in another client's name,
        counts as a dropout (the reason is kept in `session.dropped`)."""
        out = []
        for client_id, data in sorted(replies.items()):
            try:
                message = decode(data, kind, self.max_message_bytes)
            except MessageError as exc:
                session.dropped[client_id] = str(exc)
                continue
            if message.client_id != client_id:
                session.dropped[client_id] = f"sent a message as client {message.client_id}"
                continue
            out.append(message)
        return out


def flatten(update: Mapping[str, torch.Tensor]) -> np.ndarray:
    """The tensors of `update`, in name order, as one float64 vector."""
    if not update:
        return np.zeros(0)
    parts = [update[k].detach().reshape(-1).to(torch.float64) for k in sorted(update)]
    return torch.cat(parts).numpy()


def unflatten(vector: np.ndarray, like: Mapping[str, torch.Tensor]) -> State:
    """Inverse of `flatten`: tensors shaped and typed like `like`, in `like`'s order."""
    sizes = {k: like[k].numel() for k in sorted(like)}
    if vector.shape != (sum(sizes.values()),):
        raise ValueError(f"secagg: a vector of {vector.shape} does not fill {len(like)} tensors")
    out, start = {}, 0
    for k, size in sizes.items():
        chunk = torch.from_numpy(np.ascontiguousarray(vector[start : start + size]))
        out[k] = chunk.reshape(like[k].shape).to(like[k].dtype)
        start += size
    return {k: out[k] for k in like}
