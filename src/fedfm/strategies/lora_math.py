"""LoRA-aware aggregation maths: pure functions over States holding PEFT LoRA factors.

A PEFT LoRA module holds two factors, e.g.
`...attention.self.query.lora_A.default.weight` (A, shape [r, in]) and
`...attention.self.query.lora_B.default.weight` (B, shape [out, r]); its weight change is
ΔW = (α/r)·B·A. Averaging A and B separately ("naive", what FedAvg does) gives
mean(B)·mean(A) ≠ mean(B·A): the cross terms B_i·A_j are noise. The functions here:

- `product_mean`: Σ w_i B_i A_i / Σ w_i per module, the quantity every method approximates.
- `exact_aggregate`: product mean, re-factorised to rank r by truncated SVD (B = U√S,
  A = √S Vᵀ). Exact when the mean has rank ≤ r, else its best rank-r approximation.
- `pad_rank` / `truncate_rank`: HetLoRA's zero-padding and truncation across ranks.
- `ffa_trainable_keys` / `frozen_keys`: FFA-LoRA, where A stays frozen and only B trains.

Scaling: the maths uses the raw product B·A and leaves α/r out, as FlexLoRA and HetLoRA do.
That is exact when every client uses the same α/r. With heterogeneous ranks, keep α/r fixed
(e.g. `lora_alpha = 2 * r`); with one `lora_alpha` for all ranks, a rank-r_i client's real
ΔW is (α/r_i)·B·A and the average is off by those factors.

Non-LoRA keys (e.g. a `modules_to_save` classifier head) are example-weighted means.
The Strategy classes using these functions live in `lora.py`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedfm.state import State, check_weights, weighted_mean

# PEFT names the factor of a module by one dotted component; the partner swaps it.
_A_TO_B = {"lora_A": "lora_B", "lora_embedding_A": "lora_embedding_B"}
_B_TAGS = frozenset(_A_TO_B.values())


def _split(key: str, tags: frozenset[str] | dict[str, str]) -> tuple[str, str, str] | None:
    parts = key.split(".")
    for i, p in enumerate(parts):
        if p in tags:
            return ".".join(parts[:i]), p, ".".join(parts[i + 1 :])
    return None


def pair_lora_keys(state: State) -> dict[str, tuple[str, str]]:
    """Find the LoRA modules of a State.

    Args:
        state: a State with PEFT-style names (`<module>.lora_A[.<adapter>].weight`).

    Returns:
        Module prefix (the name before `.lora_A`) -> (A key, B key), in state order.

    Raises:
        ValueError: an A without its B or a B without its A, or two adapters on one module.
    """
    pairs: dict[str, tuple[str, str]] = {}
    for key in state:
        found = _split(key, _A_TO_B)
        if found is None:
            continue
        prefix, tag, rest = found
        b_key = ".".join(p for p in (prefix, _A_TO_B[tag], rest) if p)
        if b_key not in state:
            raise ValueError(f"LoRA factor {key!r} has no partner {b_key!r}")
        if prefix in pairs:
            raise ValueError(f"module {prefix!r} has several LoRA adapters; use one")
        pairs[prefix] = (key, b_key)
    paired_b = {b for _, b in pairs.values()}
    for key in state:
        if _split(key, _B_TAGS) is not None and key not in paired_b:
            raise ValueError(f"LoRA factor {key!r} has no lora_A partner")
    return pairs


def lora_keys(state: State) -> set[str]:
    """All A and B keys of `state`."""
    return {k for pair in pair_lora_keys(state).values() for k in pair}


def lora_ranks(state: State) -> dict[str, int]:
    """Rank r of each LoRA module (rows of A), by module prefix."""
    return {p: int(state[a].shape[0]) for p, (a, _) in pair_lora_keys(state).items()}


def frozen_keys(state: Mapping[str, object]) -> list[str]:
    """FFA-LoRA: the A keys, which the client must freeze (`requires_grad=False`).

    Found by name, so `state` may be any name -> value mapping (e.g. `named_parameters()`
    as a dict) and may lack the B factors.
    """
    return [k for k in state if _split(k, _A_TO_B) is not None]


def ffa_trainable_keys(state: Mapping[str, object]) -> list[str]:
    """FFA-LoRA: the keys that train and travel (B factors and non-LoRA keys), in order."""
    frozen = set(frozen_keys(state))
    return [k for k in state if k not in frozen]


def _as_matrices(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # A: [r, in, *kernel] -> [r, in_flat]; B: [out, r, 1, ...] -> [out, r].
    r = a.shape[0]
    if b.dim() < 2 or b.shape[1] != r or any(s != 1 for s in b.shape[2:]):
        raise ValueError(f"LoRA shapes A {tuple(a.shape)} and B {tuple(b.shape)} do not pair")
    return a.reshape(r, -1), b.reshape(b.shape[0], r)


def lora_product(state: State, prefix: str) -> torch.Tensor:
    """B·A of one module in float64, shape [out, in_flat] (without the α/r scaling)."""
    a_key, b_key = pair_lora_keys(state)[prefix]
    a, b = _as_matrices(state[a_key], state[b_key])
    return b.double() @ a.double()


def _products(state: State, pairs: dict[str, tuple[str, str]]) -> dict[str, torch.Tensor]:
    out = {}
    for prefix, (a_key, b_key) in pairs.items():
        a, b = _as_matrices(state[a_key], state[b_key])
        out[prefix] = b.double() @ a.double()
    return out


def product_mean(states: Sequence[State], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Σ w_i B_i A_i / Σ w_i per module, in float64 (ranks may differ between states).

    Args:
        states: client LoRA states with the same module names.
        weights: non-negative weights with a positive sum.

    Returns:
        Module prefix -> mean product, shape [out, in_flat].
    """
    total = check_weights(weights, len(states))
    pairs = pair_lora_keys(states[0])
    acc: dict[str, torch.Tensor] = {}
    for state, w in zip(states, weights, strict=True):
        if pair_lora_keys(state) != pairs:
            raise ValueError("states hold different LoRA modules")
        for prefix, p in _products(state, pairs).items():
            acc[prefix] = acc[prefix] + (w / total) * p if prefix in acc else (w / total) * p
    return acc


def factorise(
    matrix: torch.Tensor, rank: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-`rank` factors of `matrix` by truncated SVD: B = U_r √S_r, A = √S_r V_rᵀ.

    Signs are made canonical (the largest entry of each column of U is positive) so the
    result does not flip with rounding noise. Directions with a (numerically) zero singular
    value get B's column zero and A's row the unit vector V_jᵀ rather than zero in both:
    B·A is the same, but the slot can still learn (a zero A row and zero B column get no
    gradient, like a LoRA module initialised with both factors zero). When `rank` exceeds
    the matrix's size, the extra rows of A and columns of B are zero.

    Args:
        matrix: shape [out, in].
        rank: r ≥ 1.
        dtype: dtype of the factors.

    Returns:
        (B [out, r], A [r, in]) with B·A the best rank-r approximation (Eckart–Young).
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    k = min(rank, s.numel())
    u, s, vh = u[:, :k], s[:k], vh[:k]
    sign = torch.sign(u.gather(0, u.abs().argmax(dim=0, keepdim=True)))
    sign[sign == 0] = 1.0
    u, vh = u * sign, vh * sign.T
    # matrix_rank's default tolerance: singular values below it are rounding noise.
    tol = float(s.max()) * max(matrix.shape) * torch.finfo(torch.float64).eps if k else 0.0
    dead = s <= tol
    root = torch.where(dead, torch.zeros_like(s), s.sqrt())
    b = torch.zeros(matrix.shape[0], rank, dtype=torch.float64)
    a = torch.zeros(rank, matrix.shape[1], dtype=torch.float64)
    b[:, :k] = u * root
    a[:k] = torch.where(dead[:, None], vh, root[:, None] * vh)
    return b.to(dtype), a.to(dtype)


def from_products(
    template: State, products: Mapping[str, torch.Tensor], rank: int | Mapping[str, int]
) -> State:
    """Rebuild LoRA factors from full products by truncated SVD (see `factorise`).

    Args:
        template: a State giving the keys, order, dtypes and non-rank dimensions; its
            non-LoRA tensors are copied, its LoRA factors only give shapes.
        products: module prefix -> B·A, shape [out, in_flat], for every module of `template`.
        rank: one rank for all modules, or a rank per module prefix.

    Returns:
        A State in `template`'s order whose module `p` holds rank-r factors of `products[p]`.
    """
    out = {k: v.clone() for k, v in template.items()}
    for prefix, (a_key, b_key) in pair_lora_keys(template).items():
        r = rank if isinstance(rank, int) else rank[prefix]
        a_ref, b_ref = template[a_key], template[b_key]
        b, a = factorise(products[prefix], r, a_ref.dtype)
        out[a_key] = a.reshape(r, *a_ref.shape[1:])
        out[b_key] = b.reshape(b_ref.shape[0], r, *b_ref.shape[2:]).to(b_ref.dtype)
    return out


def non_lora_mean(states: Sequence[State], weights: Sequence[float]) -> State:
    """Weighted mean of the non-LoRA keys of `states` (in the first state's order)."""
    skip = lora_keys(states[0])
    keys = [k for k in states[0] if k not in skip]
    if not keys:
        return {}
    return weighted_mean([{k: s[k] for k in keys} for s in states], weights)


def naive_average(states: Sequence[State], weights: Sequence[float]) -> State:
    """Average A and B separately, like any other tensor (what FedAvg does to LoRA)."""
    return weighted_mean(states, weights)


def exact_aggregate(
    states: Sequence[State], weights: Sequence[float], rank: int | None = None
) -> State:
    """Mean of the products B_i A_i, re-factorised to rank r; non-LoRA keys averaged.

    B·A of the result equals the weighted mean of B_i A_i (to float tolerance) when that mean
    has rank ≤ r; otherwise it is the mean's best rank-r approximation (Eckart–Young). Being
    exact at any rank would need the residual folded into the frozen base weights, as
    FedEx-LoRA does (https://arxiv.org/abs/2410.09432); that is outside the trainable State.

    Args:
        states: client states, all LoRA modules at one rank.
        weights: non-negative weights with a positive sum.
        rank: rank of the result; `None` keeps the clients' common rank.

    Returns:
        A State with the keys, order and (at the same rank) shapes of `states[0]`.

    Raises:
        ValueError: heterogeneous ranks with `rank=None`, or mismatched modules.
    """
    means = product_mean(states, weights)
    first = states[0]
    ranks: dict[str, int] = {}
    for prefix, (a_key, _) in pair_lora_keys(first).items():
        got = {int(s[a_key].shape[0]) for s in states}
        if rank is None and len(got) != 1:
            raise ValueError(f"module {prefix!r} has ranks {sorted(got)}; pass rank=")
        ranks[prefix] = rank if rank is not None else got.pop()
    template = {**first, **non_lora_mean(states, weights)}
    return from_products(template, means, ranks)


def naive_vs_exact_error(states: Sequence[State], weights: Sequence[float]) -> float:
    """Relative error of naive averaging: ‖mean(B)·mean(A) − mean(B·A)‖_F / ‖mean(B·A)‖_F.

    Norms are taken over all modules together. Returns 0.0 when both are zero.
    """
    exact = product_mean(states, weights)
    naive_state = weighted_mean([{k: s[k] for k in lora_keys(s)} for s in states], weights)
    naive = _products(naive_state, pair_lora_keys(naive_state))
    num = sum(float((naive[p] - exact[p]).pow(2).sum()) for p in exact)
    den = sum(float(exact[p].pow(2).sum()) for p in exact)
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return (num / den) ** 0.5


def pad_rank(state: State, r_max: int) -> State:
    """HetLoRA zero-padding: A [r, in] -> [r_max, in], B [out, r] -> [out, r_max].

    Args:
        state: a client state with LoRA ranks r ≤ r_max.
        r_max: the target rank.

    Returns:
        A new State; non-LoRA keys are copied unchanged.

    Raises:
        ValueError: a module's rank exceeds `r_max`.
    """
    out = {k: v.clone() for k, v in state.items()}
    for prefix, (a_key, b_key) in pair_lora_keys(state).items():
        a, b = state[a_key], state[b_key]
        r = a.shape[0]
        if r > r_max:
            raise ValueError(f"module {prefix!r} has rank {r} > r_max={r_max}")
        a_pad = a.new_zeros(r_max, *a.shape[1:])
        a_pad[:r] = a
        b_pad = b.new_zeros(b.shape[0], r_max, *b.shape[2:])
        b_pad[:, :r] = b
        out[a_key], out[b_key] = a_pad, b_pad
    return out


def truncate_rank(state: State, r: int) -> State:
    """HetLoRA truncation: keep the first r rows of A and the first r columns of B.

    Args:
        state: a state with LoRA ranks ≥ r.
        r: the target rank, ≥ 1.

    Returns:
        A new State; non-LoRA keys are copied unchanged.

    Raises:
        ValueError: r < 1 or a module's rank is below r.
    """
    if r < 1:
        raise ValueError(f"rank must be >= 1, got {r}")
    out = {k: v.clone() for k, v in state.items()}
    for prefix, (a_key, b_key) in pair_lora_keys(state).items():
        if state[a_key].shape[0] < r:
            raise ValueError(f"module {prefix!r} has rank {state[a_key].shape[0]} < {r}")
        out[a_key] = state[a_key][:r].clone()
        out[b_key] = state[b_key][:, :r].clone()
    return out
