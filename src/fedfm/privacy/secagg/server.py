"""The server side of SecAgg+ as a state machine: one method per stage, messages in and out.

collect_keys -> route_shares -> collect_masked -> unmask. The server keeps only the running
masked sum, never an individual input. A message that breaks the protocol is dropped (its
sender counts as gone, the reason is kept in `rejected_`); too few clients left at any stage
fail the sum with `NotEnoughSurvivorsError` and nothing is returned.

Sets, as in the papers: U1 advertised keys, U2 shared keys, U3 sent a masked input (the
survivors), U4 answered the unmask request.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedfm.privacy.secagg import shamir
from fedfm.privacy.secagg.crypto import KEY_BYTES, load_private, public_bytes
from fedfm.privacy.secagg.errors import NotEnoughSurvivorsError, ProtocolError, SecAggError
from fedfm.privacy.secagg.fixedpoint import reduce_mod
from fedfm.privacy.secagg.messages import (
    AdvertiseKeys,
    EncryptedShare,
    MaskedInput,
    PublicKeys,
    RoutedShares,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
)
from fedfm.privacy.secagg.protocol import SecAggParams, pairwise_mask, self_mask

ServerStage = Literal["keys", "shares", "masked", "unmask", "done", "failed"]


@dataclass(frozen=True, eq=False)
class SecAggResult:
    """The outcome of one secure sum.

    Attributes:
        total: the sum mod 2^bits of the survivors' inputs (a `params.dtype` vector).
        survivors: the clients whose inputs are in `total`, sorted.
    """

    total: np.ndarray
    survivors: tuple[int, ...]


class SecAggServer:
    """The server of one secure sum.

    Args:
        params: the sum's public parameters (sent to every client as stage 0).
    """

    def __init__(self, params: SecAggParams) -> None:
        self.params = params
        self.stage_: ServerStage = "keys"
        self.keys_: dict[int, AdvertiseKeys] = {}  # U1
        self.shared_: list[int] = []  # U2
        self.survivors_: list[int] = []  # U3
        self.rejected_: dict[int, str] = {}  # client -> why its message was dropped
        self._total = np.zeros(params.vector_length, dtype=params.dtype)
        self._requests: dict[int, UnmaskRequest] = {}

    def collect_keys(self, messages: Sequence[AdvertiseKeys]) -> dict[int, PublicKeys]:
        """Stage 1: accept each cohort member's keys once; send each client its share holders'.

        Raises:
            NotEnoughSurvivorsError: fewer than `threshold` clients advertised.
        """
        self._advance("keys", "shares")
        seen: set[bytes] = set()
        for m in messages:
            if self._accept(m.client_id, self.params.client_ids, self.keys_):
                if {m.c_public, m.s_public} & seen or m.c_public == m.s_public:
                    self._reject(m.client_id, "reused a public key")
                elif len(m.c_public) != KEY_BYTES or len(m.s_public) != KEY_BYTES:
                    self._reject(m.client_id, "a public key is not 32 bytes")
                else:
                    self.keys_[m.client_id] = m
                    seen |= {m.c_public, m.s_public}
        self._require(len(self.keys_), "advertised keys")
        return {
            u: PublicKeys(
                tuple(self.keys_[v] for v in sorted(self.params.holders(u) & set(self.keys_)))
            )
            for u in sorted(self.keys_)
        }

    def route_shares(self, messages: Sequence[ShareKeys]) -> dict[int, RoutedShares]:
        """Stage 2: check each client sealed exactly one share per neighbour that advertised,
        and route every share to its receiver.

        Raises:
            NotEnoughSurvivorsError: fewer than `threshold` clients shared keys.
        """
        self._advance("shares", "masked")
        routes: dict[int, list[EncryptedShare]] = {u: [] for u in self.keys_}
        shared: dict[int, ShareKeys] = {}
        for m in messages:
            if not self._accept(m.client_id, self.keys_, shared):
                continue
            expected = self.params.neighbours(m.client_id) & set(self.keys_)
            receivers = [s.receiver for s in m.shares]
            if any(s.sender != m.client_id for s in m.shares):
                self._reject(m.client_id, "sent shares in another client's name")
            elif len(set(receivers)) != len(receivers) or set(receivers) != expected:
                self._reject(m.client_id, "did not send one share to each neighbour")
            else:
                shared[m.client_id] = m
        self.shared_ = sorted(shared)
        self._require(len(self.shared_), "shared keys")
        for m in shared.values():
            for s in m.shares:
                if s.receiver in shared:
                    routes[s.receiver].append(s)
        return {u: RoutedShares(u, tuple(routes[u])) for u in self.shared_}

    def collect_masked(self, messages: Sequence[MaskedInput]) -> dict[int, UnmaskRequest]:
        """Stage 3: add up the masked inputs; tell each survivor, among the clients whose
        shares it holds, who survived and who dropped.

        Raises:
            NotEnoughSurvivorsError: fewer than `threshold` masked inputs arrived.
        """
        self._advance("masked", "unmask")
        p, accepted = self.params, set[int]()
        for m in messages:
            if not self._accept(m.client_id, self.shared_, accepted):
                continue
            y = m.masked
            if y.shape != (p.vector_length,) or y.dtype != p.dtype:
                self._reject(m.client_id, f"masked input is not {p.vector_length} {p.dtype}")
            elif p.bits < 8 * y.dtype.itemsize and int(y.max()) >> p.bits:
                self._reject(m.client_id, f"masked input has words >= 2^{p.bits}")
            else:
                self._total += y  # wraps around mod 2^32 or 2^64
                accepted.add(m.client_id)
        self.survivors_ = sorted(accepted)
        self._require(len(self.survivors_), "sent masked inputs")
        shared = set(self.shared_)
        for u in self.survivors_:
            holds = p.holders(u) & shared
            self._requests[u] = UnmaskRequest(
                u, tuple(sorted(holds & accepted)), tuple(sorted(holds - accepted))
            )
        return dict(self._requests)

    def unmask(self, messages: Sequence[UnmaskShares]) -> SecAggResult:
        """Stage 4: reconstruct the survivors' self-mask seeds and the dropped clients' mask
        keys from the answers, remove those masks, and return the exact sum.

        Raises:
            NotEnoughSurvivorsError: some secret has fewer than `threshold` shares; the sum is
                not returned.
            SecAggError: shares that do not reconstruct (a cheating client), or a
                reconstructed key that does not match its advertised public key.
        """
        self._advance("unmask", "done")
        p = self.params
        mask_points: dict[int, list[tuple[int, int]]] = {u: [] for u in self.survivors_}
        dropped = sorted(set(self.shared_) - set(self.survivors_))
        key_points: dict[int, list[tuple[int, int]]] = {v: [] for v in dropped}
        answered: set[int] = set()
        for m in messages:
            if not self._accept(m.client_id, self.survivors_, answered):
                continue
            request = self._requests[m.client_id]
            if (
                tuple(o for o, _ in m.mask_shares) != request.survivors
                or tuple(o for o, _ in m.key_shares) != request.dropped
            ):
                self._reject(m.client_id, "answered a different unmask request")
                continue
            answered.add(m.client_id)
            x = shamir.holder_point(m.client_id)
            for owner, y in m.mask_shares:
                mask_points[owner].append((x, y))
            for owner, y in m.key_shares:
                key_points[owner].append((x, y))
        # A dropped client's key is needed only if a survivor masked with it.
        needed = {v: pts for v, pts in key_points.items() if p.neighbours(v) & set(mask_points)}
        short = [u for u, pts in (mask_points | needed).items() if len(pts) < p.threshold]
        if short:
            self.stage_ = "failed"
            raise NotEnoughSurvivorsError(
                f"secure aggregation: the secrets of clients {sorted(short)[:10]} have fewer "
                f"than threshold = {p.threshold} shares ({len(answered)} clients answered the "
                f"unmask request); the sum is not revealed"
            )
        total = self._total.copy()
        for u, pts in mask_points.items():
            total -= self_mask(p, self._reconstruct(u, pts))
        for v, pts in needed.items():
            s_key = load_private(self._reconstruct(v, pts))
            if public_bytes(s_key) != self.keys_[v].s_public:
                raise SecAggError(f"the reconstructed mask key of client {v} is not its own")
            for u in sorted(p.neighbours(v) & set(mask_points)):
                # u added the negation of what v would have added for u: add that back.
                total += pairwise_mask(p, s_key, self.keys_[u].s_public, v, u)
        return SecAggResult(reduce_mod(total, p.bits), tuple(self.survivors_))

    def _reconstruct(self, owner: int, points: list[tuple[int, int]]) -> bytes:
        try:
            return shamir.combine(sorted(points)[: self.params.threshold])
        except shamir.ShamirError as exc:
            self.stage_ = "failed"
            raise SecAggError(f"the shares of client {owner} do not reconstruct: {exc}") from exc

    def _accept(self, sender: int, allowed: Container[int], done: Container[int]) -> bool:
        """True for the first message of a sender that may speak at this stage."""
        if sender in done:
            self.rejected_.setdefault(sender, "sent a second message in one stage")
            return False
        if sender not in allowed:
            self.rejected_.setdefault(sender, "is not expected at this stage")
            return False
        return True

    def _reject(self, sender: int, why: str) -> None:
        self.rejected_[sender] = why

    def _require(self, count: int, what: str) -> None:
        if count < self.params.threshold:
            self.stage_ = "failed"
            raise NotEnoughSurvivorsError(
                f"secure aggregation: {count} of {self.params.num_clients} clients {what}, "
                f"threshold is {self.params.threshold}; the sum is not revealed"
            )

    def _advance(self, expected: ServerStage, to: ServerStage) -> None:
        if self.stage_ != expected:
            raise ProtocolError(
                f"secure-aggregation server: stage {to!r} called in stage {self.stage_!r}"
            )
        self.stage_ = to
