import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedfm.errors import ConfigError
from fedfm.privacy.secagg.fixedpoint import FixedPoint, max_levels, reduce_mod, word_dtype


def test_overflow_is_refused_naming_the_parameters():
    # Prepare: 2^31 levels, three clients: 3 * (2^31 - 1) >= 2^32
    fp = FixedPoint(1.0, levels=2**31, bits=32)
    # Execute / Assert
    fp.check_capacity(2)
    with pytest.raises(
        ConfigError, match=r"num_clients \* \(levels - 1\) = 3 \* 2147483647 >= 2\^bits = 2\^32"
    ):
        fp.check_capacity(3)


def test_max_levels_is_exactly_the_capacity_boundary():
    for n, bits in [(2, 8), (3, 32), (50, 32), (7, 20)]:
        q = max_levels(n, bits)
        FixedPoint(1.0, q, bits).check_capacity(n)
        if q < 2**52:
            with pytest.raises(ConfigError, match="overflow"):
                FixedPoint(1.0, q + 1, bits).check_capacity(n)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip_range": 0.0, "levels": 10}, "clip_range"),
        ({"clip_range": float("inf"), "levels": 10}, "clip_range"),
        ({"clip_range": 1.0, "levels": 1}, "levels"),
        ({"clip_range": 1.0, "levels": 10, "bits": 0}, "bits"),
        ({"clip_range": 1.0, "levels": 10, "bits": 65}, "bits"),
        ({"clip_range": 1.0, "levels": 300, "bits": 8}, "does not fit"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        FixedPoint(**kwargs)


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float64, (5, 40), elements=st.floats(-3, 3)),
    st.sampled_from([16, 32, 40, 64]),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_decoded_sum_is_within_the_error_bound(values, bits, stochastic, seed):
    # Prepare: five clients, values partly outside the clip range
    n = values.shape[0]
    fp = FixedPoint.for_cohort(2.0, n, bits)
    rng = np.random.default_rng(seed) if stochastic else None
    # Execute
    codes = [fp.encode(v, rng) for v in values]
    total = reduce_mod(np.sum(codes, axis=0, dtype=word_dtype(bits)), bits)
    decoded = fp.decode_sum(total, n)
    # Assert
    assert all(c.dtype == word_dtype(bits) and c.max() < fp.levels for c in codes)
    expected = np.clip(values, -2.0, 2.0).sum(axis=0)
    assert np.max(np.abs(decoded - expected)) <= fp.error_bound(n, stochastic)
    assert np.allclose(fp.decode_mean(total, n), decoded / n)


def test_stochastic_rounding_is_unbiased():
    # Prepare: a coarse grid (step 0.5) and a value a fifth of a step above a level
    fp = FixedPoint(1.0, levels=5, bits=16)
    x = np.full(200_000, 0.1)
    # Execute
    codes = fp.encode(x, np.random.default_rng(0))
    # Assert: round-to-nearest would give 0.0 every time; the stochastic mean is 0.1
    assert fp.decode_sum(codes.astype(np.float64).mean(), 1) == pytest.approx(0.1, abs=0.005)
    assert fp.decode_sum(fp.encode(x)[0], 1) == 0.0


def test_non_finite_values_are_refused():
    fp = FixedPoint(1.0, levels=100)
    with pytest.raises(ValueError, match="NaN or infinite"):
        fp.encode(np.array([0.0, np.nan]))
