"""`int8` and `int4`: integer codes with unbiased stochastic rounding and per-tensor or
per-block scales.

Each tensor (or each block of `block_size` consecutive entries of a tensor) gets one float32
scale s = max|x| / L, with L = 127 (int8) or 7 (int4), and every entry is sent as
q = floor(x / s + u), u ~ U[0, 1), clamped to [-L, L]: E[q * s] = x, so averaging many
clients' updates does not accumulate a rounding bias (Alistarh et al. 2017, QSGD,
https://arxiv.org/abs/1610.02132). int4 codes q + 8 (1..15) are packed two per byte, the
first entry in the low nibble. On the wire a whole update is three tensors at most:
`<name>/q` (int8, or uint8 for packed int4), `<name>/scale` (float32, one per block, tensors
in order) and any non-floating tensors unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedfm.compression import wire
from fedfm.errors import ConfigError, TransportError
from fedfm.pipeline import StageBase, StageContext, StageKind
from fedfm.state import State

LEVELS = {8: 127, 4: 7}  # symmetric: codes -L..L


class Quantise(StageBase):
    """Stochastic-rounding integer quantiser (`int8` or `int4`).

    Metrics: `ratio` (wire bytes / fp32 bytes of the input) and `rel_error`.

    Args:
        bits: 8 or 4.
        block_size: entries per scale inside each tensor; `None` or 0: one scale per tensor.

    Raises:
        ConfigError: other bits, or a negative block size.
    """

    kind = StageKind.COMPRESS

    def __init__(self, bits: int = 8, block_size: int | None = None) -> None:
        if bits not in LEVELS:
            raise ConfigError(f"pipeline int<bits>: bits must be one of {sorted(LEVELS)}")
        if block_size is not None and block_size < 0:
            raise ConfigError(f"pipeline int{bits}.block_size: must be >= 0, got {block_size}")
        self.bits = bits
        self.levels = LEVELS[bits]
        self.block_size = block_size or None
        self.name = f"int{bits}"
        self.q_key, self.scale_key = f"{self.name}/q", f"{self.name}/scale"

    def _blocks(self, numel: int) -> tuple[int, int]:
        """(block length, number of blocks) of a tensor of `numel` entries."""
        size = self.block_size or max(numel, 1)
        return size, -(-numel // size)

    def _code_length(self, numel: int) -> int:
        return -(-numel // 2) if self.bits == 4 else numel

    def wire_like(self, like: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """Non-floating tensors, then the codes and the scales."""
        names = wire.floating(like)
        numel = sum(like[k].numel() for k in names)
        blocks = sum(self._blocks(like[k].numel())[1] for k in names)
        dtype = torch.uint8 if self.bits == 4 else torch.int8
        return {
            **wire.others(like),
            self.q_key: wire.meta([self._code_length(numel)], dtype),
            self.scale_key: wire.meta([blocks], torch.float32),
        }

    def encode(self, update: State, ctx: StageContext) -> tuple[State, dict[str, float]]:
        """Quantise every floating tensor with stochastic rounding; pack the codes."""
        wire.reserved(update, [self.q_key, self.scale_key], self.name)
        names = wire.floating(update)
        x = wire.flat(update, names)
        noise = torch.rand(x.numel(), generator=wire.generator(ctx, self.name))
        codes, scales, start = [], [], 0
        for k in names:
            n = update[k].numel()
            size, count = self._blocks(n)
            # (count, size): zero-padded to whole blocks, one scale per row
            rows = torch.zeros(count * size)
            rows[:n] = x[start : start + n]
            rows = rows.view(count, size)
            scale = rows.abs().amax(dim=1) / self.levels
            safe = torch.where(scale > 0, scale, torch.ones_like(scale))
            y = (rows / safe[:, None]).reshape(-1)[:n]
            q = torch.floor(y + noise[start : start + n]).clamp_(-self.levels, self.levels)
            codes.append(q.to(torch.int8))
            scales.append(scale)
            start += n
        q_all = torch.cat(codes) if codes else torch.zeros(0, dtype=torch.int8)
        scale_all = torch.cat(scales) if scales else torch.zeros(0)
        out = {**wire.others(update), self.q_key: self._pack(q_all), self.scale_key: scale_all}
        decoded = wire.unflat(self._dequantise(q_all, scale_all, update, names), update, names)
        return out, wire.metrics(update, {**update, **decoded}, out)

    def decode(self, update: State, like: Mapping[str, torch.Tensor], ctx: StageContext) -> State:
        """Unpack and rescale; every code and scale is checked first.

        Raises:
            TransportError: wrong names, dtypes or lengths, a negative or non-finite scale,
                a code outside -L..L, or a non-finite result.
        """
        who = f"{self.name} from client {ctx.client_id} ({ctx.stream})"
        layout = self.wire_like(like)
        wire.check_keys(update, list(layout), who)
        names = wire.floating(like)
        numel = sum(like[k].numel() for k in names)
        packed = wire.expect(
            update, self.q_key, layout[self.q_key].dtype, layout[self.q_key].numel(), who
        )
        scales = wire.expect(
            update, self.scale_key, torch.float32, layout[self.scale_key].numel(), who
        )
        if not bool(torch.isfinite(scales).all()) or bool((scales < 0).any()):
            raise TransportError(f"{who}: scales must be finite and >= 0")
        q = self._unpack(packed, numel, who)
        if bool(((q < -self.levels) | (q > self.levels)).any()):
            raise TransportError(f"{who}: codes must lie in [-{self.levels}, {self.levels}]")
        values = self._dequantise(q, scales, like, names)
        if not bool(torch.isfinite(values).all()):
            raise TransportError(f"{who}: codes times scales overflow")
        out = {k: v for k, v in update.items() if k not in (self.q_key, self.scale_key)}
        return {**out, **wire.unflat(values, like, names)}

    def _dequantise(
        self,
        q: torch.Tensor,
        scales: torch.Tensor,
        like: Mapping[str, torch.Tensor],
        names: list[str],
    ) -> torch.Tensor:
        """q * s, each entry with its block's scale (float32)."""
        index, first = [], 0
        for k in names:
            n = like[k].numel()
            size, count = self._blocks(n)
            index.append(torch.arange(n) // size + first)
            first += count
        block = torch.cat(index) if index else torch.zeros(0, dtype=torch.long)
        return q.float() * scales[block]

    def _pack(self, q: torch.Tensor) -> torch.Tensor:
        """int8 codes as they are; int4 codes + 8 (1..15), two per byte (low nibble first)."""
        if self.bits == 8:
            return q
        codes = (q + 8).to(torch.uint8)
        if codes.numel() % 2:
            codes = torch.cat([codes, torch.full((1,), 8, dtype=torch.uint8)])
        return codes[0::2] | (codes[1::2] << 4)

    def _unpack(self, packed: torch.Tensor, numel: int, who: str) -> torch.Tensor:
        if self.bits == 8:
            return packed
        codes = torch.stack([packed & 15, packed >> 4], dim=1).reshape(-1)[:numel]
        if bool((codes == 0).any()):
            raise TransportError(f"{who}: int4 codes must lie in 1..15")
        return codes.to(torch.int8) - 8
