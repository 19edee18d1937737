"""The protocol's messages: frozen dataclasses and a small, validated binary encoding.

Every message is `MAGIC || tag || fields`, each field a little-endian u64, or a u32 length
(or count) followed by that many bytes (or items). Decoding refuses oversized input before
reading it, a wrong magic or tag, counts larger than the remaining bytes allow, keys and
shares of the wrong size, ids out of range and trailing bytes: whatever arrives over a network
is untrusted. No pickling anywhere.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Protocol, Self, TypeVar

import numpy as np

from fedfm.privacy.secagg.crypto import KEY_BYTES, NONCE_BYTES, TAG_BYTES
from fedfm.privacy.secagg.errors import MessageError
from fedfm.privacy.secagg.shamir import ELEMENT_BYTES, PRIME
from fedfm.state import DEFAULT_MAX_BYTES

MAGIC = b"FSA1"
MAX_CLIENT_ID = 2**31 - 1
MAX_CIPHERTEXT = 512  # a sealed SharePlaintext is 4 + 1 + 2*8 + 2*(4+66) + 12 + 16 = 189 bytes
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class Writer:
    """Appends fields to a message."""

    def __init__(self, tag: int) -> None:
        self.buf = bytearray(MAGIC)
        self.buf.append(tag)

    def u64(self, value: int) -> None:
        """An unsigned 64-bit integer."""
        self.buf += _U64.pack(value)

    def blob(self, data: bytes) -> None:
        """Length-prefixed bytes."""
        self.buf += _U32.pack(len(data))
        self.buf += data

    def count(self, n: int) -> None:
        """The number of items that follow."""
        self.buf += _U32.pack(n)

    def ids(self, values: tuple[int, ...]) -> None:
        """A counted list of client ids."""
        self.count(len(values))
        for v in values:
            self.u64(v)


class Reader:
    """Reads fields of an untrusted message, refusing anything malformed."""

    def __init__(self, data: bytes, tag: int, what: str) -> None:
        self.data, self.pos, self.what = memoryview(data), len(MAGIC) + 1, what
        if bytes(self.data[: len(MAGIC)]) != MAGIC or len(data) <= len(MAGIC):
            raise MessageError(f"{what}: not a secure-aggregation message (bad magic)")
        if data[len(MAGIC)] != tag:
            raise MessageError(f"{what}: message tag {data[len(MAGIC)]}, expected {tag}")

    def _take(self, n: int) -> memoryview:
        if n > len(self.data) - self.pos:
            raise MessageError(f"{self.what}: truncated message")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u64(self, limit: int = 2**64 - 1) -> int:
        """An unsigned integer, at most `limit`."""
        value: int = _U64.unpack(self._take(8))[0]
        if value > limit:
            raise MessageError(f"{self.what}: field value {value} exceeds {limit}")
        return value

    def client_id(self) -> int:
        """A client id in [0, 2^31)."""
        return self.u64(MAX_CLIENT_ID)

    def blob(self, max_len: int, exact: int | None = None) -> bytes:
        """Length-prefixed bytes of at most `max_len` (or exactly `exact`) bytes."""
        (n,) = _U32.unpack(self._take(4))
        if n > max_len or (exact is not None and n != exact):
            want = f"exactly {exact}" if exact is not None else f"at most {max_len}"
            raise MessageError(f"{self.what}: a field of {n} bytes, {want} allowed")
        return bytes(self._take(n))

    def count(self, min_item_bytes: int) -> int:
        """An item count, refused if the remaining bytes cannot hold that many items."""
        (n,) = _U32.unpack(self._take(4))
        if n * min_item_bytes > len(self.data) - self.pos:
            raise MessageError(f"{self.what}: claims {n} items, more than the message holds")
        return int(n)

    def ids(self) -> tuple[int, ...]:
        """A counted list of distinct client ids."""
        values = tuple(self.client_id() for _ in range(self.count(8)))
        if len(set(values)) != len(values):
            raise MessageError(f"{self.what}: repeated client ids")
        return values

    def element(self) -> int:
        """A Shamir share: a field element below 2^521 - 1."""
        value = int.from_bytes(self.blob(ELEMENT_BYTES, exact=ELEMENT_BYTES), "big")
        if value >= PRIME:
            raise MessageError(f"{self.what}: a share is not a field element")
        return value

    def done(self) -> None:
        """Refuse trailing bytes."""
        if self.pos != len(self.data):
            raise MessageError(f"{self.what}: {len(self.data) - self.pos} trailing bytes")


class Message(Protocol):
    """A protocol message: a tag, its fields' writer and reader."""

    TAG: ClassVar[int]

    def write(self, w: Writer) -> None:
        """Append the fields."""
        ...

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read the fields."""
        ...


M = TypeVar("M", bound=Message)


def encode(message: Message) -> bytes:
    """The message's bytes."""
    w = Writer(message.TAG)
    message.write(w)
    return bytes(w.buf)


def decode(data: bytes, kind: type[M], max_bytes: int = DEFAULT_MAX_BYTES) -> M:
    """Parse untrusted bytes as a message of type `kind`.

    Raises:
        MessageError: oversized, malformed, of another type, or with trailing bytes.
    """
    if len(data) > max_bytes:
        raise MessageError(f"{kind.__name__}: {len(data)} bytes exceed the limit of {max_bytes}")
    r = Reader(data, kind.TAG, kind.__name__)
    message = kind.read(r)
    r.done()
    return message


@dataclass(frozen=True)
class AdvertiseKeys:
    """Stage 1, client -> server: a client's two fresh X25519 public keys.

    Attributes:
        client_id: the sender.
        c_public: encrypts the shares sent to this client.
        s_public: agrees this client's pairwise masks.
    """

    TAG: ClassVar[int] = 2
    client_id: int
    c_public: bytes
    s_public: bytes

    def write(self, w: Writer) -> None:
        """Append the fields."""
        w.u64(self.client_id)
        w.blob(self.c_public)
        w.blob(self.s_public)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read the fields."""
        return cls(r.client_id(), r.blob(KEY_BYTES, KEY_BYTES), r.blob(KEY_BYTES, KEY_BYTES))


@dataclass(frozen=True)
class PublicKeys:
    """Stage 1, server -> one client: the keys of its neighbours that advertised (and its own)."""

    TAG: ClassVar[int] = 3
    entries: tuple[AdvertiseKeys, ...]

    def write(self, w: Writer) -> None:
        """Append the fields."""
        w.count(len(self.entries))
        for entry in self.entries:
            entry.write(w)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read the fields."""
        return cls(tuple(AdvertiseKeys.read(r) for _ in range(r.count(8 + 2 * (4 + KEY_BYTES)))))


@dataclass(frozen=True)
class EncryptedShare:
    """One client's shares for one neighbour, sealed with their agreed key."""

    sender: int
    receiver: int
    ciphertext: bytes

    def write(self, w: Writer) -> None:
        """Append the fields."""
        w.u64(self.sender)
        w.u64(self.receiver)
        w.blob(self.ciphertext)

    @classmethod
    def read(cls, r: Reader) -> EncryptedShare:
        """Read the fields."""
        return cls(r.client_id(), r.client_id(), r.blob(MAX_CIPHERTEXT))


_SHARE_MIN = 8 + 8 + 4 + NONCE_BYTES + TAG_BYTES


@dataclass(frozen=True)
class ShareKeys:
    """Stage 2, client -> server: sealed shares, one per neighbour that advertised."""

    TAG: ClassVar[int] = 4
    client_id: int
    shares: tuple[EncryptedShare, ...]

    def write(self, w: Writer) -> None:
        """Append the fields."""
        w.u64(self.client_id)
        w.count(len(self.shares))
        for share in self.shares:
            share.write(w)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read the fields."""
        sender = r.client_id()
        return cls(sender, tuple(EncryptedShare.read(r) for _ in range(r.count(_SHARE_MIN))))


@dataclass(frozen=True)
class RoutedShares:
    """Stage 2, server -> one client: the sealed shares addressed to it."""

    TAG: ClassVar[int] = 5
    receiver: int
    shares: tuple[EncryptedShare, ...]

    def write(self, w: Writer) -> None:
        """Append the fields."""
        w.u64(self.receiver)
        w.count(len(self.shares))
        for share in self.shares:
            share.write(w)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read the fields."""
        receiver = r.client_id()
        return cls(receiver, tuple(EncryptedShare.read(r) for _ in range(r.count(_SHARE_MIN))))


@dataclass(frozen=True)
class SharePlaintext:
    """What an `EncryptedShare` holds: the sender's share of its self-mask seed b_u and of its
    mask private key s_u, for one receiver."""

    TAG: ClassVar[int] = 6
    sender: int
    receiver: int
    mask_share: int
    key_share: int

    def write(self, w: Writer) -> None:
        """Append the fields."""
        w.u64(self.sender)
        w.u64(self.receiver)
        w.blob(self.mask_share.to_bytes(ELEMENT_BYTES, "big"))
        w.blob(self.key_share.to_bytes(ELEMENT_BYTES, "big"))

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read the fields."""
        return cls(r.client_id(), r.client_id(), r.element(), r.element())


@dataclass(frozen=True, eq=False)
class MaskedInput:
    """Stage 3, client -> server: y_u = x_u + PRG(b_u) + sum_v ±PRG(s_uv) mod 2^bits.

    Attributes:
        client_id: the sender.
        masked: a 1-D uint32 or uint64 vector.
    """

    TAG: ClassVar[int] = 7
    client_id: int
    masked: np.ndarray

    def write(self, w: Writer) -> None:
        """Append the fields."""
        if self.masked.ndim != 1 or self.masked.dtype not in (np.uint32, np.uint64):
            raise MessageError("MaskedInput: masked must be a 1-D uint32 or uint64 vector")
        w.u64(self.client_id)
        w.u64(self.masked.dtype.itemsize)
        w.blob(self.masked.astype(self.masked.dtype.newbyteorder("<"), copy=False).tobytes())

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read the fields."""
        sender, itemsize = r.client_id(), r.u64()
        if itemsize not in (4, 8):
            raise MessageError(f"MaskedInput: words of {itemsize} bytes, 4 or 8 allowed")
        raw = r.blob(len(r.data))
        if len(raw) % itemsize:
            raise MessageError(f"MaskedInput: {len(raw)} bytes is not a whole number of words")
        dtype = np.dtype(np.uint32 if itemsize == 4 else np.uint64)
        return cls(sender, np.frombuffer(raw, dtype.newbyteorder("<")).astype(dtype))


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 4, server -> one client: which of the clients whose shares it holds sent their
    masked input (`survivors`) and which shared keys but did not (`dropped`)."""

    TAG: ClassVar[int] = 8
    receiver: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]

    def write(self, w: Writer) -> None:
        """Append the fields."""
        w.u64(self.receiver)
        w.ids(self.survivors)
        w.ids(self.dropped)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read the fields."""
        return cls(r.client_id(), r.ids(), r.ids())


@dataclass(frozen=True)
class UnmaskShares:
    """Stage 4, client -> server: shares of b_v for survivors, of s_v for dropped clients.

    Attributes:
        client_id: the sender (the share holder).
        mask_shares: (owner, share of the owner's self-mask seed) per survivor.
        key_shares: (owner, share of the owner's mask private key) per dropped client.
    """

    TAG: ClassVar[int] = 9
    client_id: int
    mask_shares: tuple[tuple[int, int], ...]
    key_shares: tuple[tuple[int, int], ...]

    def write(self, w: Writer) -> None:
        """Append the fields."""
        w.u64(self.client_id)
        for pairs in (self.mask_shares, self.key_shares):
            w.count(len(pairs))
            for owner, share in pairs:
                w.u64(owner)
                w.blob(share.to_bytes(ELEMENT_BYTES, "big"))

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read the fields."""
        sender = r.client_id()
        lists = []
        for _ in range(2):
            n = r.count(8 + 4 + ELEMENT_BYTES)
            lists.append(tuple((r.client_id(), r.element()) for _ in range(n)))
        return cls(sender, lists[0], lists[1])
