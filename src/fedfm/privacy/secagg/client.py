"""The client side of SecAgg+ as a state machine: one method per stage, messages in and out.

advertise_keys -> share_keys -> masked_input -> unmask, each exactly once and in this order.
A client checks everything the (untrusted) server sends, and refuses an unmask request that
would let the server learn both halves of any client's secrets or sum too few inputs.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from fedfm.privacy.secagg import shamir
from fedfm.privacy.secagg.crypto import (
    derive_key,
    generate_private_key,
    open_sealed,
    private_bytes,
    public_bytes,
    random_seed,
    seal,
)
from fedfm.privacy.secagg.errors import (
    InconsistentRequestError,
    MessageError,
    NotEnoughSurvivorsError,
    ProtocolError,
)
from fedfm.privacy.secagg.fixedpoint import reduce_mod
from fedfm.privacy.secagg.messages import (
    AdvertiseKeys,
    EncryptedShare,
    MaskedInput,
    PublicKeys,
    RoutedShares,
    ShareKeys,
    SharePlaintext,
    UnmaskRequest,
    UnmaskShares,
    decode,
    encode,
)
from fedfm.privacy.secagg.protocol import (
    SecAggParams,
    pair_info,
    pairwise_mask,
    self_mask,
    share_associated,
)

ClientStage = Literal["new", "advertised", "shared", "masked", "done"]


class SecAggClient:
    """One client of one secure sum.

    Args:
        client_id: this client, a member of `params.client_ids`.
        params: the sum's public parameters (stage 0).

    Raises:
        ProtocolError: `client_id` is not in the cohort.
    """

    def __init__(self, client_id: int, params: SecAggParams) -> None:
        if client_id not in params.client_ids:
            raise ProtocolError(f"client {client_id} is not in this secure sum's cohort")
        self.client_id = client_id
        self.params = params
        self.stage_: ClientStage = "new"
        self._neighbours = params.neighbours(client_id)
        self._c_key = generate_private_key()  # encrypts shares addressed to this client
        self._s_key = generate_private_key()  # agrees pairwise masks
        self._peer_keys: dict[int, AdvertiseKeys] = {}  # neighbours that advertised
        self._seed = b""  # b_u, the self-mask seed
        self._shares: dict[int, tuple[int, int]] = {}  # owner -> (share of b, share of s)
        self._share_keys: dict[int, bytes] = {}  # neighbour -> AES key agreed through c

    def advertise_keys(self) -> AdvertiseKeys:
        """Stage 1: the two public keys (c for share encryption, s for mask agreement)."""
        self._advance("new", "advertised")
        return self._own_entry()

    def share_keys(self, keys: PublicKeys) -> ShareKeys:
        """Stage 2: Shamir-share b_u and s_u among the neighbours that advertised and seal each
        neighbour's shares with the key agreed through c.

        Raises:
            ProtocolError: the server's list has strangers, repeats or altered keys.
            NotEnoughSurvivorsError: fewer than `threshold` share holders advertised.
        """
        self._advance("advertised", "shared")
        me, t = self.client_id, self.params.threshold
        peers: dict[int, AdvertiseKeys] = {}
        for entry in keys.entries:
            who = entry.client_id
            if who in peers:
                raise ProtocolError(f"client {me}: the key list names client {who} twice")
            if who not in self._neighbours and who != me:
                raise ProtocolError(f"client {me}: the key list names non-neighbour {who}")
            if entry.c_public == entry.s_public:
                raise ProtocolError(f"client {me}: client {who} advertised the same key twice")
            peers[who] = entry
        if peers.get(me) != self._own_entry():
            raise ProtocolError(f"client {me}: the key list does not carry my own keys")
        if len(peers) < t:
            raise NotEnoughSurvivorsError(
                f"client {me}: {len(peers)} share holders advertised keys, threshold is {t}"
            )
        del peers[me]
        self._peer_keys = peers
        self._seed = random_seed()
        holders = sorted([me, *peers])
        xs = [shamir.holder_point(h) for h in holders]
        mask_shares = shamir.split(self._seed, xs, t)
        key_shares = shamir.split(private_bytes(self._s_key), xs, t)
        sealed = []
        for h, b_share, s_share in zip(holders, mask_shares, key_shares, strict=True):
            if h == me:
                self._shares[me] = (b_share, s_share)
                continue
            plain = encode(SharePlaintext(me, h, b_share, s_share))
            info = pair_info(b"share", self.params.session, me, h)
            self._share_keys[h] = derive_key(self._c_key, peers[h].c_public, info)
            associated = share_associated(self.params.session, me, h)
            sealed.append(EncryptedShare(me, h, seal(self._share_keys[h], plain, associated)))
        return ShareKeys(me, tuple(sealed))

    def masked_input(self, routed: RoutedShares, values: np.ndarray) -> MaskedInput:
        """Stage 3: store the neighbours' shares and send y_u = x_u + PRG(b_u) + sum over the
        neighbours v that shared of ±PRG(s_uv) (plus if u < v), mod 2^bits.

        Args:
            routed: the sealed shares the server routed to this client.
            values: x_u, `vector_length` integers in [0, 2^bits) (see `FixedPoint.encode`).

        Raises:
            ValueError: `values` has the wrong length or values out of range.
            ProtocolError: a share from a stranger, a repeat, or one that fails to decrypt.
            NotEnoughSurvivorsError: fewer than `threshold` holders (self included) shared.
        """
        x = self._check_values(values)
        self._advance("shared", "masked")
        me, p = self.client_id, self.params
        if routed.receiver != me:
            raise ProtocolError(f"client {me}: received shares routed to {routed.receiver}")
        for share in routed.shares:
            self._open(share)
        if len(self._shares) < p.threshold:
            raise NotEnoughSurvivorsError(
                f"client {me}: {len(self._shares)} share holders shared keys, "
                f"threshold is {p.threshold}"
            )
        y = x.astype(p.dtype, copy=True)
        y += self_mask(p, self._seed)
        for v in sorted(self._shares):
            if v != me:
                y += pairwise_mask(p, self._s_key, self._peer_keys[v].s_public, me, v)
        return MaskedInput(me, reduce_mod(y, p.bits))

    def unmask(self, request: UnmaskRequest) -> UnmaskShares:
        """Stage 4: reveal shares of b_v for survivors and of s_v for dropped clients.

        Raises:
            InconsistentRequestError: a client listed both alive and dropped, an id whose
                shares this client does not hold (unknown, or not a neighbour that shared),
                a list that omits one, this client listed as dropped, or fewer than
                `threshold` survivors. Nothing is revealed then, and the client stays refused.
        """
        self._advance("masked", "done")
        me, t = self.client_id, self.params.threshold
        alive, dropped = set(request.survivors), set(request.dropped)
        known = set(self._shares)

        def refuse(why: str) -> InconsistentRequestError:
            return InconsistentRequestError(f"client {me} refuses to unmask: {why}")

        if request.receiver != me:
            raise refuse(f"the request is addressed to client {request.receiver}")
        if len(alive) != len(request.survivors) or len(dropped) != len(request.dropped):
            raise refuse("a client is listed twice")
        if both := sorted(alive & dropped):
            raise refuse(f"clients {both} are listed both as survivors and as dropped")
        if unknown := sorted((alive | dropped) - known):
            raise refuse(f"clients {unknown} are unknown or not neighbours that shared keys")
        if omitted := sorted(known - alive - dropped):
            raise refuse(f"clients {omitted} are neither survivors nor dropped")
        if me not in alive:
            raise refuse("it lists me as dropped although I sent my masked input")
        if len(alive) < t:
            raise refuse(f"{len(alive)} survivors among my neighbours, threshold is {t}")
        return UnmaskShares(
            me,
            tuple((v, self._shares[v][0]) for v in sorted(alive)),
            tuple((v, self._shares[v][1]) for v in sorted(dropped)),
        )

    def _open(self, share: EncryptedShare) -> None:
        me, sender = self.client_id, share.sender
        if share.receiver != me or sender not in self._peer_keys:
            raise ProtocolError(f"client {me}: a share from {sender} to {share.receiver}")
        if sender in self._shares:
            raise ProtocolError(f"client {me}: two shares from client {sender}")
        associated = share_associated(self.params.session, sender, me)
        plain = open_sealed(self._share_keys[sender], share.ciphertext, associated)
        try:
            inner = decode(plain, SharePlaintext)
        except MessageError as exc:
            raise ProtocolError(f"client {me}: share from {sender}: {exc}") from exc
        if (inner.sender, inner.receiver) != (sender, me):
            raise ProtocolError(f"client {me}: the share from {sender} names other clients")
        self._shares[sender] = (inner.mask_share, inner.key_share)

    def _check_values(self, values: np.ndarray) -> np.ndarray:
        x = np.asarray(values)
        p = self.params
        if x.shape != (p.vector_length,) or x.dtype.kind not in "ui":
            raise ValueError(
                f"client {self.client_id}: input must be {p.vector_length} integers, "
                f"got shape {x.shape} {x.dtype}"
            )
        if x.size and (int(x.min()) < 0 or int(x.max()) >= 2**p.bits):
            raise ValueError(f"client {self.client_id}: input values must be in [0, 2^{p.bits})")
        return x

    def _own_entry(self) -> AdvertiseKeys:
        return AdvertiseKeys(self.client_id, public_bytes(self._c_key), public_bytes(self._s_key))

    def _advance(self, expected: ClientStage, to: ClientStage) -> None:
        if self.stage_ != expected:
            raise ProtocolError(
                f"client {self.client_id}: stage {to!r} called in stage {self.stage_!r}, "
                f"expected after {expected!r}"
            )
        self.stage_ = to
