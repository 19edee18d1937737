"""Codecs as pipeline stages: `precision` (fp16, bf16), `quantize` (int8, int4 with
stochastic rounding), `sparsify` (top-k with error feedback, random-k); `wire` holds what
they share (flat packing, seeded randomness, checks of untrusted wire tensors, metrics)."""
