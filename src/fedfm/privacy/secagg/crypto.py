"""Cryptographic primitives of secure aggregation, all from `cryptography`.

X25519 key agreement followed by HKDF-SHA256 gives each pair of clients two 32-byte keys:
one encrypts the Shamir shares they send each other through the server (AES-256-GCM), the
other seeds their pairwise mask. Masks are the ChaCha20 keystream under the full 32-byte key,
read as little-endian unsigned words; nothing here uses `random` or `numpy.random`.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedfm.privacy.secagg.errors import MessageError, ProtocolError

KEY_BYTES = 32  # X25519 keys, agreed secrets, AES-256 and ChaCha20 keys, self-mask seeds
NONCE_BYTES = 12  # AES-GCM nonce, drawn fresh for every message
TAG_BYTES = 16  # AES-GCM authentication tag
_RAW = serialization.Encoding.Raw
_CHACHA_NONCE = bytes(16)  # counter 0, nonce 0: every ChaCha20 key here expands one stream


def generate_private_key() -> X25519PrivateKey:
    """A fresh X25519 private key (from the operating system's CSPRNG)."""
    return X25519PrivateKey.generate()


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32-byte public key of `key`."""
    return key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32 bytes of `key` (what is Shamir-shared so a dropout's masks can be removed)."""
    return key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def load_private(raw: bytes) -> X25519PrivateKey:
    """The private key from its raw 32 bytes.

    Raises:
        MessageError: not 32 bytes.
    """
    if len(raw) != KEY_BYTES:
        raise MessageError(f"an X25519 private key has {KEY_BYTES} bytes, got {len(raw)}")
    return X25519PrivateKey.from_private_bytes(raw)


def random_seed() -> bytes:
    """32 bytes from the operating system's CSPRNG (a self-mask seed)."""
    return os.urandom(KEY_BYTES)


def derive_key(private: X25519PrivateKey, peer_public: bytes, info: bytes) -> bytes:
    """X25519 agreement with `peer_public`, then HKDF-SHA256 to a 32-byte key bound to `info`.

    Both ends compute the same key: `derive_key(a, pub(b), i) == derive_key(b, pub(a), i)`.

    Raises:
        MessageError: `peer_public` is not 32 bytes.
        ProtocolError: `peer_public` is a low-order point (the shared secret would be zero).
    """
    if len(peer_public) != KEY_BYTES:
        raise MessageError(f"an X25519 public key has {KEY_BYTES} bytes, got {len(peer_public)}")
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # all-zero shared secret
        raise ProtocolError(f"refusing a degenerate X25519 public key: {exc}") from exc
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """AES-256-GCM encryption: `nonce || ciphertext || tag`, authenticating `associated` too."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, blob: bytes, associated: bytes) -> bytes:
    """Inverse of `seal`.

    Raises:
        ProtocolError: the blob was not sealed under `key` and `associated`, or was altered.
    """
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise ProtocolError(f"an encrypted share needs at least 28 bytes, got {len(blob)}")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated)
    except InvalidTag as exc:
        raise ProtocolError("an encrypted share fails authentication") from exc


def prg_words(seed: bytes, length: int, dtype: np.dtype) -> np.ndarray:
    """`length` pseudo-random unsigned words: the ChaCha20 keystream under the 32-byte `seed`.

    Args:
        seed: the full 32-byte key (an agreed secret or a self-mask seed).
        length: number of words.
        dtype: `uint32` or `uint64` (little-endian words of the keystream).

    Returns:
        A writable array of shape `(length,)`.
    """
    if len(seed) != KEY_BYTES:
        raise ValueError(f"a PRG seed has {KEY_BYTES} bytes, got {len(seed)}")
    dt = np.dtype(dtype).newbyteorder("<")
    encryptor = Cipher(algorithms.ChaCha20(seed, _CHACHA_NONCE), mode=None).encryptor()
    stream = encryptor.update(bytes(length * dt.itemsize))
    return np.frombuffer(stream, dtype=dt).astype(np.dtype(dtype), copy=True)
