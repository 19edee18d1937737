import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfm.errors import TransportError
from fedfm.state import from_bytes, global_norm, num_bytes, subtract, to_bytes


def _state():
    return {"b.weight": torch.randn(3, 4), "a.bias": torch.randn(5)}


def test_roundtrip_keeps_values_and_order():
    # Prepare
    state = _state()
    # Execute
    back = from_bytes(to_bytes(state), like=state)
    # Assert
    assert list(back) == list(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_serialised_size_is_tensor_bytes_plus_a_small_header():
    state = _state()
    size = len(to_bytes(state))
    assert num_bytes(state) < size < num_bytes(state) + 400


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda s: {**s, "extra": torch.zeros(1)}, "keys differ"),
        (lambda s: {**s, "a.bias": torch.zeros(6)}, "shape"),
        (lambda s: {**s, "a.bias": torch.zeros(5, dtype=torch.float64)}, "float64"),
        (lambda s: {**s, "a.bias": torch.full((5,), float("nan"))}, "NaN"),
        (lambda s: {**s, "a.bias": torch.full((5,), float("inf"))}, "infinite"),
        (lambda s: {**s, "a.bias": torch.full((5,), -float("inf"))}, "infinite"),
        (lambda s: {**s, "a.bias": torch.zeros(5).to(torch.float8_e4m3fn)}, "not a wire dtype"),
        (lambda s: {**s, "a.bias": torch.zeros(5).to(torch.float8_e5m2)}, "not a wire dtype"),
        (lambda s: {**s, "a.bias": torch.zeros(5, dtype=torch.bool)}, "not a wire dtype"),
    ],
)
def test_untrusted_payloads_are_checked(mutate, match):
    state = _state()
    with pytest.raises(TransportError, match=match):
        from_bytes(to_bytes(mutate(state)), like=state)


@pytest.mark.parametrize(
    "dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.complex64, torch.bool]
)
def test_odd_dtypes_are_refused_without_a_reference_too(dtype):
    # float8_e4m3fn once crashed the server: torch.isfinite is not implemented for it
    payload = to_bytes({"w": torch.zeros(3).to(dtype)})
    with pytest.raises(TransportError, match="not a wire dtype"):
        from_bytes(payload)


def test_roundtrip_without_reference_keeps_the_sender_order():
    state = {"z": torch.zeros(1), "a": torch.ones(2), "m": torch.ones(3)}
    assert list(from_bytes(to_bytes(state))) == ["z", "a", "m"]


def test_garbage_and_oversize_are_rejected():
    with pytest.raises(TransportError, match="not valid safetensors"):
        from_bytes(b"\x00" * 64)
    with pytest.raises(TransportError, match="exceeds the limit"):
        from_bytes(to_bytes(_state()), max_bytes=10)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=20))
def test_global_norm_matches_flat_norm(values):
    t = torch.tensor(values, dtype=torch.float32)
    state = {"x": t[: len(values) // 2], "y": t[len(values) // 2 :]}
    assert global_norm(state) == pytest.approx(float(t.norm()), rel=1e-5, abs=1e-5)


def test_subtract_requires_same_keys():
    with pytest.raises(ValueError, match="keys differ"):
        subtract({"a": torch.zeros(1)}, {"b": torch.zeros(1)})
