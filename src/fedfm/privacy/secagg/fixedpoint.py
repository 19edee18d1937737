"""Fixed-point encoding: floats <-> integers in [0, levels) whose sum over a cohort fits mod 2^bits.

A value x is clipped to [-clip_range, clip_range] and mapped affinely onto [0, levels - 1]
with step `2 * clip_range / (levels - 1)`. Rounding is unbiased stochastic rounding when a
generator is given (error < one step, zero mean) and round-to-nearest otherwise (error <= half
a step). The secure sum is computed mod 2^bits, so it equals the true integer sum only while
`num_clients * (levels - 1) < 2^bits`; `check_capacity` refuses anything else up front.
Arithmetic mod 2^bits uses numpy's wrap-around of uint32 words (bits <= 32) or uint64 words
(bits <= 64), reduced with a bit mask, so no Python integers touch the vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedfm.errors import ConfigError

MAX_LEVELS = 2**52  # beyond this, float64 cannot place a value on every level


def word_dtype(bits: int) -> np.dtype:
    """The unsigned word that carries integers mod 2^bits: uint32 up to 32 bits, else uint64."""
    if not 1 <= bits <= 64:
        raise ConfigError(f"secure aggregation: bits must be in [1, 64], got {bits}")
    return np.dtype(np.uint32) if bits <= 32 else np.dtype(np.uint64)


def reduce_mod(words: np.ndarray, bits: int) -> np.ndarray:
    """`words mod 2^bits`, in place (a no-op when the word is exactly `bits` wide)."""
    if bits < 8 * words.dtype.itemsize:
        np.bitwise_and(words, words.dtype.type((1 << bits) - 1), out=words)
    return words


def max_levels(num_clients: int, bits: int) -> int:
    """The most levels a cohort of `num_clients` can use without overflowing 2^bits."""
    if num_clients < 1:
        raise ConfigError(f"secure aggregation: num_clients must be >= 1, got {num_clients}")
    return min((2**bits - 1) // num_clients + 1, MAX_LEVELS)


@dataclass(frozen=True)
class FixedPoint:
    """Clipping, quantisation and its inverse for one secure sum.

    Attributes:
        clip_range: values are clipped to [-clip_range, clip_range], > 0.
        levels: the number of quantisation levels Q (>= 2, <= 2^52).
        bits: the sum is computed mod 2^bits.
    """

    clip_range: float
    levels: int
    bits: int = 32

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_range) and self.clip_range > 0):
            raise ConfigError(
                f"secure aggregation: clip_range must be finite and > 0, got {self.clip_range}"
            )
        if not 2 <= self.levels <= MAX_LEVELS:
            raise ConfigError(f"secure aggregation: levels must be in [2, 2^52], got {self.levels}")
        word_dtype(self.bits)
        if self.levels - 1 >= 2**self.bits:
            raise ConfigError(
                f"secure aggregation: levels - 1 = {self.levels - 1} does not fit in "
                f"bits = {self.bits}"
            )

    @classmethod
    def for_cohort(cls, clip_range: float, num_clients: int, bits: int = 32) -> FixedPoint:
        """The finest encoding a cohort of `num_clients` can sum mod 2^bits."""
        return cls(clip_range, max_levels(num_clients, bits), bits)

    @property
    def step(self) -> float:
        """The value of one quantisation level."""
        return 2.0 * self.clip_range / (self.levels - 1)

    def check_capacity(self, num_clients: int) -> None:
        """Refuse a cohort whose sum could wrap around mod 2^bits.

        Raises:
            ConfigError: `num_clients * (levels - 1) >= 2^bits`, naming the parameters.
        """
        if num_clients * (self.levels - 1) >= 2**self.bits:
            raise ConfigError(
                f"secure aggregation overflow: num_clients * (levels - 1) = {num_clients} * "
                f"{self.levels - 1} >= 2^bits = 2^{self.bits}; use levels <= "
                f"{max_levels(num_clients, self.bits)} or more bits"
            )

    def encode(self, values: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Clip and quantise `values` to integers in [0, levels).

        Args:
            values: finite floats, any shape.
            rng: draws the stochastic rounding (unbiased); `None` rounds to nearest.

        Returns:
            Words of `word_dtype(bits)`, the shape of `values`.

        Raises:
            ValueError: a NaN or infinite value.
        """
        x = np.asarray(values, dtype=np.float64)
        if not np.isfinite(x).all():
            raise ValueError("secure aggregation cannot encode NaN or infinite values")
        z = (np.clip(x, -self.clip_range, self.clip_range) + self.clip_range) / self.step
        if rng is None:
            q = np.rint(z)
        else:
            q = np.floor(z)
            q += rng.random(z.shape) < (z - q)  # round up with probability frac(z)
        return np.clip(q, 0, self.levels - 1).astype(word_dtype(self.bits))

    def decode_sum(self, total: np.ndarray, num_clients: int) -> np.ndarray:
        """The float sum of `num_clients` clipped values from the integer sum of their codes."""
        return np.asarray(total, dtype=np.float64) * self.step - num_clients * self.clip_range

    def decode_mean(self, total: np.ndarray, num_clients: int) -> np.ndarray:
        """The float mean of `num_clients` clipped values from the integer sum of their codes."""
        return self.decode_sum(total, num_clients) / num_clients

    def error_bound(self, num_clients: int, stochastic: bool) -> float:
        """Largest |decoded sum - sum of clipped values|: one step per client when stochastic,
        half a step when rounding to nearest (plus float64 rounding slack)."""
        per_client = self.step if stochastic else self.step / 2
        return num_clients * per_client * (1 + 1e-9) + 1e-12 * num_clients * self.clip_range
