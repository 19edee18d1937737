import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfm.privacy.secagg.errors import MessageError
from fedfm.privacy.secagg.messages import (
    MAGIC,
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
from fedfm.privacy.secagg.protocol import SecAggParams
from fedfm.privacy.secagg.shamir import PRIME

KEY_A, KEY_B = bytes(range(32)), bytes(range(32, 64))
SHARE = EncryptedShare(3, 5, bytes(189))
MESSAGES = [
    SecAggParams((4, 1, 9), 2, 1000, None, 32, b"graph", b"session"),
    SecAggParams(tuple(range(10)), 4, 7, 4, 64),
    AdvertiseKeys(7, KEY_A, KEY_B),
    PublicKeys((AdvertiseKeys(1, KEY_A, KEY_B), AdvertiseKeys(2, KEY_B, KEY_A))),
    PublicKeys(()),
    ShareKeys(3, (SHARE, EncryptedShare(3, 6, b"x" * 40))),
    RoutedShares(5, (SHARE,)),
    SharePlaintext(3, 5, PRIME - 1, 0),
    UnmaskRequest(2, (1, 2, 8), (4,)),
    UnmaskShares(2, ((1, 12345), (2, PRIME - 1)), ((4, 7),)),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_messages_round_trip(message):
    # Execute
    data = encode(message)
    # Assert
    assert data.startswith(MAGIC)
    assert decode(data, type(message)) == message


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_masked_input_round_trips_its_words(dtype):
    # Prepare
    words = np.array([0, 1, np.iinfo(dtype).max, 12345], dtype=dtype)
    # Execute
    out = decode(encode(MaskedInput(9, words)), MaskedInput)
    # Assert
    assert out.client_id == 9 and out.masked.dtype == dtype
    assert np.array_equal(out.masked, words)


@pytest.mark.parametrize("message", [*MESSAGES, MaskedInput(1, np.arange(3, dtype=np.uint32))])
def test_every_truncation_and_any_trailing_byte_is_refused(message):
    # Prepare
    data = encode(message)
    # Execute / Assert
    for cut in range(len(data)):
        with pytest.raises(MessageError):
            decode(data[:cut], type(message))
    with pytest.raises(MessageError, match="trailing"):
        decode(data + b"\x00", type(message))


def test_oversized_wrong_type_and_bad_magic_are_refused():
    # Prepare
    data = encode(AdvertiseKeys(7, KEY_A, KEY_B))
    # Execute / Assert
    with pytest.raises(MessageError, match="exceed the limit"):
        decode(data, AdvertiseKeys, max_bytes=len(data) - 1)
    with pytest.raises(MessageError, match="tag 2, expected 4"):
        decode(data, ShareKeys)
    with pytest.raises(MessageError, match="bad magic"):
        decode(b"XXXX" + data[4:], AdvertiseKeys)


def _patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


def test_malformed_fields_are_refused():
    # Prepare: hand-edited messages
    head = len(MAGIC) + 1
    advert = encode(AdvertiseKeys(7, KEY_A, KEY_B))
    big_id = _patch(advert, head, (2**40).to_bytes(8, "little"))
    short_key = encode(AdvertiseKeys(7, KEY_A[:31], KEY_B))
    many = _patch(encode(PublicKeys(())), head, (2**31).to_bytes(4, "little"))
    element = encode(SharePlaintext(1, 2, 5, 6))
    not_field = _patch(element, head + 16 + 4, PRIME.to_bytes(66, "big"))
    repeated = encode(UnmaskRequest(1, (3, 3), ()))
    bad_params = encode(SecAggParams((1, 2, 3), 3, 10))
    bad_params = _patch(bad_params, head + 4 + 3 * 8, (1).to_bytes(8, "little"))  # threshold 1
    odd_words = encode(MaskedInput(1, np.arange(2, dtype=np.uint32)))
    odd_words = _patch(odd_words, head + 8, (3).to_bytes(8, "little"))  # 3-byte words
    # Execute / Assert
    cases = [
        (big_id, AdvertiseKeys, "exceeds"),
        (short_key, AdvertiseKeys, "exactly 32"),
        (many, PublicKeys, "more than the message holds"),
        (not_field, SharePlaintext, "not a field element"),
        (repeated, UnmaskRequest, "repeated client ids"),
        (bad_params, SecAggParams, "threshold"),
        (odd_words, MaskedInput, "4 or 8"),
    ]
    for data, kind, match in cases:
        with pytest.raises(MessageError, match=match):
            decode(data, kind)


def test_a_masked_input_must_be_a_vector_of_unsigned_words():
    with pytest.raises(MessageError, match="1-D uint32 or uint64"):
        encode(MaskedInput(1, np.zeros(3, dtype=np.int64)))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(MESSAGES))
def test_random_bytes_raise_only_message_errors(tail, message):
    # Prepare: a valid header followed by garbage
    data = MAGIC + bytes([message.TAG]) + tail
    # Execute / Assert
    with contextlib.suppress(MessageError):
        decode(data, type(message))
