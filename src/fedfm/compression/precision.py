"""Transport precision: send floating tensors as float16 or bfloat16, half the bytes.

The server casts each tensor back to the dtype it expects (`like`), so honest updates of
fp16 or bf16 models pass too. float16 saturates: values beyond ±65,504 are clamped to that
range (and counted), never turned into infinities that would get the client dropped.
Metrics: `ratio` (wire bytes / fp32 bytes of the input) and `rel_error`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedfm.compression import wire
from fedfm.pipeline import StageBase, StageContext, StageKind
from fedfm.state import State

FP16_MAX = float(torch.finfo(torch.float16).max)  # 65504


class _Cast(StageBase):
    kind = StageKind.COMPRESS
    dtype = torch.float16

    def encode(self, update: State, ctx: StageContext) -> tuple[State, dict[str, float]]:
        """Cast floating tensors to the wire dtype."""
        out = {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in update.items()}
        return out, wire.metrics(update, out, out)

    def wire_like(self, like: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """Floating tensors in the wire dtype, others unchanged."""
        return {
            k: wire.meta(v.shape, self.dtype) if v.is_floating_point() else v
            for k, v in like.items()
        }

    def decode(self, update: State, like: Mapping[str, torch.Tensor], ctx: StageContext) -> State:
        """Cast wire-dtype tensors back to the expected dtype."""
        return {
            k: v.to(like[k].dtype) if v.dtype == self.dtype and k in like else v
            for k, v in update.items()
        }


class Float16(_Cast):
    """float16 on the wire, saturating at ±65,504; metric `overflow` = share of clamped values."""

    name = "fp16"
    dtype = torch.float16

    def encode(self, update: State, ctx: StageContext) -> tuple[State, dict[str, float]]:
        """Clamp to the float16 range, then cast."""
        total = 0
        clamped = 0
        out: State = {}
        for k, v in update.items():
            if v.is_floating_point():
                total += v.numel()
                clamped += int((v.abs() > FP16_MAX).sum())
                v = v.clamp(-FP16_MAX, FP16_MAX).to(torch.float16)
            out[k] = v
        return out, {
            "overflow": clamped / total if total else 0.0,
            **wire.metrics(update, out, out),
        }


class BFloat16(_Cast):
    """bfloat16 on the wire (float32's range, 8 bits of mantissa)."""

    name = "bf16"
    dtype = torch.bfloat16
