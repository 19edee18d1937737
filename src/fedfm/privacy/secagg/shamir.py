"""Shamir secret sharing of 32-byte secrets over the Mersenne prime field GF(2^521 - 1).

Written by hand because the packages we measured were ~1000x slower than these lines.
One field element holds a whole 32-byte secret, so a share is one element (66 bytes on the
wire). Share holders are points `x = client_id + 1` (never 0, where the secret sits). Any
`threshold` shares determine the polynomial and so the secret; fewer are consistent with
every secret (Shamir 1979, https://doi.org/10.1145/359168.359176).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

PRIME = 2**521 - 1
ELEMENT_BYTES = 66  # ceil(521 / 8)
SECRET_BYTES = 32


class ShamirError(ValueError):
    """Shares that cannot be combined, or a secret that cannot be split."""


def holder_point(client_id: int) -> int:
    """The x coordinate of a client's share."""
    return client_id + 1


def split(secret: bytes, xs: Sequence[int], threshold: int) -> list[int]:
    """Shares of `secret` at the points `xs`; any `threshold` of them reconstruct it.

    Args:
        secret: exactly 32 bytes.
        xs: distinct non-zero points, one per holder.
        threshold: shares needed, 1 <= threshold <= len(xs).

    Returns:
        The share values, in the order of `xs`.

    Raises:
        ShamirError: a bad secret length, threshold or point.
    """
    if len(secret) != SECRET_BYTES:
        raise ShamirError(f"a secret has {SECRET_BYTES} bytes, got {len(secret)}")
    _check_points(xs)
    if not 1 <= threshold <= len(xs):
        raise ShamirError(f"threshold must be in [1, {len(xs)}] (the holders), got {threshold}")
    # f(x) = secret + a_1 x + ... + a_{t-1} x^{t-1}, coefficients uniform in the field.
    coeffs = [int.from_bytes(secret, "big")] + [
        secrets.randbelow(PRIME) for _ in range(threshold - 1)
    ]
    shares = []
    for x in xs:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        shares.append(y)
    return shares


def interpolate_at_zero(points: Sequence[tuple[int, int]]) -> int:
    """The value at 0 of the polynomial of degree < len(points) through `points` (Lagrange).

    Raises:
        ShamirError: no points, repeated or zero x, or a y outside the field.
    """
    xs = [x for x, _ in points]
    _check_points(xs)
    total = 0
    for i, (xi, yi) in enumerate(points):
        if not 0 <= yi < PRIME:
            raise ShamirError(f"share at x={xi} is not a field element")
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    return total


def combine(points: Sequence[tuple[int, int]]) -> bytes:
    """The 32-byte secret from `threshold` shares `(x, y)`.

    Shares garbled at random or mixed up between secrets give a field element of ~521
    random bits, which is refused: a genuine secret is below 2^256, so such a combination
    slips through with odds 2^-265. A targeted change of a share (shifting the secret by a
    chosen amount) is not detected here; callers that can verify the secret should.

    Raises:
        ShamirError: the points are malformed or do not interpolate to a 32-byte secret.
    """
    value = interpolate_at_zero(points)
    if value >= 1 << (8 * SECRET_BYTES):
        raise ShamirError("the shares do not reconstruct a 32-byte secret (wrong shares?)")
    return value.to_bytes(SECRET_BYTES, "big")


def element_to_bytes(value: int) -> bytes:
    """A field element as 66 big-endian bytes."""
    return value.to_bytes(ELEMENT_BYTES, "big")


def element_from_bytes(data: bytes) -> int:
    """Inverse of `element_to_bytes`.

    Raises:
        ShamirError: not 66 bytes, or not below the prime.
    """
    if len(data) != ELEMENT_BYTES:
        raise ShamirError(f"a field element has {ELEMENT_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise ShamirError("a share is not below the field prime 2^521 - 1")
    return value


def _check_points(xs: Sequence[int]) -> None:
    if not xs:
        raise ShamirError("no share points")
    if len(set(xs)) != len(xs):
        raise ShamirError("share points must be distinct")
    if any(not 0 < x < PRIME for x in xs):
        raise ShamirError("share points must be in [1, 2^521 - 2]")
