import itertools
import os
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfm.privacy.secagg import shamir
from fedfm.privacy.secagg.shamir import PRIME, ShamirError


def _poly_through(points, x):
    """Evaluate at x the polynomial of degree < len(points) through `points`."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if j != i:
                num = num * (x - xj) % PRIME
                den = den * (xi - xj) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    return total


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 9), st.data())
def test_any_threshold_shares_reconstruct_the_secret(n, data):
    # Prepare: a random secret shared among n holders with a random threshold
    threshold = data.draw(st.integers(1, n))
    secret = os.urandom(32)
    xs = [
        shamir.holder_point(c)
        for c in data.draw(st.sets(st.integers(0, 1000), min_size=n, max_size=n))
    ]
    shares = list(zip(xs, shamir.split(secret, xs, threshold), strict=True))
    # Execute / Assert: every subset of size threshold gives the secret back
    for subset in itertools.islice(itertools.combinations(shares, threshold), 30):
        assert shamir.combine(list(subset)) == secret


def test_secret_round_trip_keeps_leading_zero_bytes():
    # Prepare
    secret = bytes(8) + os.urandom(24)
    xs = [1, 2, 3, 4]
    # Execute
    shares = shamir.split(secret, xs, 3)
    # Assert
    assert shamir.combine(list(zip(xs, shares, strict=True))[1:]) == secret


def test_fewer_than_threshold_shares_leave_every_secret_possible():
    # Prepare: t - 1 genuine shares of a 5-of-7 sharing
    secret, threshold = os.urandom(32), 5
    xs = list(range(1, 8))
    shares = list(zip(xs, shamir.split(secret, xs, threshold), strict=True))
    known = shares[: threshold - 1]
    # Execute: for any other candidate secret, a t-th share exists that makes it the answer
    candidate = os.urandom(32)
    x_new = 100
    y_new = _poly_through([(0, int.from_bytes(candidate, "big")), *known], x_new)
    # Assert: t - 1 shares are consistent with both secrets, so they determine neither
    assert shamir.combine([*known, (x_new, y_new)]) == candidate
    assert shamir.combine([*known, (x_new, _poly_through(shares[:threshold], x_new))]) == secret
    # and interpolating t - 1 shares alone, or with a fake share, does not give the secret
    alone = shamir.interpolate_at_zero(known)
    assert alone != int.from_bytes(secret, "big")
    fake = [*known, (x_new, secrets.randbelow(PRIME))]
    assert shamir.interpolate_at_zero(fake) != int.from_bytes(secret, "big")


def test_a_garbled_share_is_refused_not_silently_wrong():
    # Prepare: one share replaced by a random field element
    secret, xs = os.urandom(32), [1, 2, 3]
    shares = list(zip(xs, shamir.split(secret, xs, 3), strict=True))
    shares[1] = (shares[1][0], secrets.randbelow(PRIME))
    # Execute / Assert: the result is far above 2^256, which `combine` refuses
    with pytest.raises(ShamirError, match="32-byte secret"):
        shamir.combine(shares)


@pytest.mark.parametrize(
    ("secret", "xs", "threshold", "match"),
    [
        (bytes(31), [1, 2], 2, "32 bytes"),
        (bytes(32), [1, 2], 3, "threshold"),
        (bytes(32), [1, 2], 0, "threshold"),
        (bytes(32), [1, 1], 2, "distinct"),
        (bytes(32), [0, 1], 2, r"\[1, 2\^521 - 2\]"),
        (bytes(32), [], 1, "no share points"),
    ],
)
def test_split_refuses_bad_arguments(secret, xs, threshold, match):
    with pytest.raises(ShamirError, match=match):
        shamir.split(secret, xs, threshold)


def test_elements_round_trip_and_out_of_field_values_are_refused():
    # Prepare
    value = PRIME - 1
    # Execute / Assert
    assert shamir.element_from_bytes(shamir.element_to_bytes(value)) == value
    with pytest.raises(ShamirError, match="below the field prime"):
        shamir.element_from_bytes(PRIME.to_bytes(66, "big"))
    with pytest.raises(ShamirError, match="66 bytes"):
        shamir.element_from_bytes(bytes(65))
    with pytest.raises(ShamirError, match="field element"):
        shamir.interpolate_at_zero([(1, PRIME)])
