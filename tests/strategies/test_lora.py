"""LoRA-aware aggregation: key pairing, exact (SVD) aggregation, FFA-LoRA, HetLoRA, FlexLoRA."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfm.messages import FitResult
from fedfm.state import State, from_bytes, subtract, to_bytes
from fedfm.strategies.base import ClientSampler, Strategy, aggregate
from fedfm.strategies.lora import ExactLoRA, FFALoRA, FlexLoRA, HetLoRA
from fedfm.strategies.lora_math import (
    exact_aggregate,
    factorise,
    ffa_trainable_keys,
    frozen_keys,
    lora_product,
    lora_ranks,
    naive_average,
    naive_vs_exact_error,
    pad_rank,
    pair_lora_keys,
    product_mean,
    truncate_rank,
)

HEAD = "base_model.model.classifier.modules_to_save.default.weight"
OUT, IN = 6, 5


def _prefix(layer: int, module: str) -> str:
    return f"base_model.model.bert.encoder.layer.{layer}.attention.self.{module}"


def _a(p: str) -> str:
    return f"{p}.lora_A.default.weight"


def _b(p: str) -> str:
    return f"{p}.lora_B.default.weight"


PREFIXES = [_prefix(i, m) for i in (0, 1) for m in ("query", "value")]


def lora_state(rank: int, seed: int, zero_b: bool = False) -> State:
    """A PEFT-like state: LoRA on query/value of two layers, plus a classifier head."""
    g = torch.Generator().manual_seed(seed)
    s: State = {}
    for p in PREFIXES:
        s[_a(p)] = torch.randn(rank, IN, generator=g)
        s[_b(p)] = torch.zeros(OUT, rank) if zero_b else torch.randn(OUT, rank, generator=g)
    s[HEAD] = torch.randn(2, IN, generator=g)
    return s


def _rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y).norm() / y.norm())


# ---- key pairing -----------------------------------------------------------------------


def test_pair_lora_keys_finds_peft_modules() -> None:
    # Prepare
    s = lora_state(2, 0)
    bare = {"m.q.lora_A.weight": torch.zeros(2, 3), "m.q.lora_B.weight": torch.zeros(4, 2)}
    # Execute
    pairs = pair_lora_keys(s)
    # Assert
    assert list(pairs) == PREFIXES
    assert pairs[PREFIXES[0]] == (_a(PREFIXES[0]), _b(PREFIXES[0]))
    assert pair_lora_keys(bare) == {"m.q": ("m.q.lora_A.weight", "m.q.lora_B.weight")}
    assert lora_ranks(s) == dict.fromkeys(PREFIXES, 2)


def test_pair_lora_keys_rejects_unpaired_factors() -> None:
    s = lora_state(2, 0)
    with pytest.raises(ValueError, match="no partner"):
        pair_lora_keys({k: v for k, v in s.items() if k != _b(PREFIXES[1])})
    with pytest.raises(ValueError, match="no lora_A partner"):
        pair_lora_keys({k: v for k, v in s.items() if k != _a(PREFIXES[1])})


# ---- naive vs exact --------------------------------------------------------------------


def _crafted_pair() -> list[State]:
    # Client 0: B·A = e0 e0ᵀ, client 1: B·A = e1 e1ᵀ, both through rank slot 0.
    # Their mean, diag(0.5, 0.5, 0, ...), has rank 2 = r; naive averaging gives
    # 0.25 (e0 + e1)(e0 + e1)ᵀ instead: relative error 0.5 / sqrt(0.5) ≈ 0.707.
    p = PREFIXES[0]
    states = []
    for i in (0, 1):
        a, b = torch.zeros(2, IN), torch.zeros(OUT, 2)
        a[0, i], b[i, 0] = 1.0, 1.0
        states.append({_a(p): a, _b(p): b, HEAD: torch.full((2, IN), float(i))})
    return states


def test_naive_error_is_large_and_exact_error_is_zero_on_crafted_case() -> None:
    # Prepare
    states, weights = _crafted_pair(), [1.0, 1.0]
    p = PREFIXES[0]
    mean = product_mean(states, weights)[p]
    # Execute
    naive_err = naive_vs_exact_error(states, weights)
    exact = exact_aggregate(states, weights)
    exact_err = _rel(lora_product(exact, p), mean)
    naive_state = naive_average(states, weights)
    # Assert
    assert naive_err == pytest.approx(0.5**0.5, rel=1e-6)
    assert naive_err > 0.1
    assert exact_err < 1e-6
    assert _rel(lora_product(naive_state, p), mean) == pytest.approx(naive_err, rel=1e-6)
    assert torch.equal(exact[HEAD], torch.full((2, IN), 0.5))


def test_exact_is_exact_when_the_mean_product_has_rank_r() -> None:
    # Prepare: B_i = B Q_i and A_i = Q_i⁻¹ A'_i, so Σ w_i B_i A_i = B (Σ w_i A'_i) has rank ≤ r,
    # while the factors themselves disagree between clients (naive averaging is wrong).
    g = torch.Generator().manual_seed(1)
    r, weights = 3, [1.0, 2.0, 3.0]
    states = []
    shared_b = {p: torch.randn(OUT, r, generator=g) for p in PREFIXES}
    for _ in weights:
        s: State = {HEAD: torch.randn(2, IN, generator=g)}
        for p in PREFIXES:
            q = torch.randn(r, r, generator=g) + 3 * torch.eye(r)
            s[_a(p)] = torch.linalg.solve(q, torch.randn(r, IN, generator=g))
            s[_b(p)] = shared_b[p] @ q
        states.append(s)
    means = product_mean(states, weights)
    # Execute
    exact = exact_aggregate(states, weights)
    # Assert
    assert naive_vs_exact_error(states, weights) > 0.1
    for p in PREFIXES:
        assert torch.linalg.matrix_rank(means[p], rtol=1e-5) == r  # float32 factors
        assert _rel(lora_product(exact, p), means[p]) < 1e-5
    assert list(exact) == list(states[0])
    assert all(exact[k].shape == states[0][k].shape for k in exact)
    want_head = (
        sum((w * s[HEAD] for w, s in zip(weights, states, strict=True)), torch.zeros(2, IN)) / 6
    )
    assert torch.allclose(exact[HEAD], want_head, atol=1e-6)


def test_exact_gives_the_best_rank_r_approximation_otherwise() -> None:
    # Prepare: three random rank-2 clients; the mean has rank up to 5 > 2.
    states, weights = [lora_state(2, s) for s in (1, 2, 3)], [3.0, 1.0, 2.0]
    means = product_mean(states, weights)
    # Execute
    exact = exact_aggregate(states, weights)
    # Assert
    for p in PREFIXES:
        u, s, vh = torch.linalg.svd(means[p])
        best = u[:, :2] @ torch.diag(s[:2]) @ vh[:2]
        assert torch.allclose(lora_product(exact, p), best, atol=1e-5)


def test_exact_rank_checks() -> None:
    with pytest.raises(ValueError, match="pass rank="):
        exact_aggregate([lora_state(2, 0), lora_state(3, 1)], [1.0, 1.0])
    out = exact_aggregate([lora_state(2, 0), lora_state(3, 1)], [1.0, 1.0], rank=4)
    assert lora_ranks(out) == dict.fromkeys(PREFIXES, 4)


def test_factorise_pads_beyond_the_matrix_size_and_is_balanced() -> None:
    m = torch.tensor([[3.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    b, a = factorise(m, 3, torch.float64)
    assert b.shape == (2, 3) and a.shape == (3, 2)
    assert torch.allclose(b @ a, m) and torch.equal(a[2], torch.zeros(2))
    assert torch.allclose(b.norm(dim=0), a.norm(dim=1))  # √S on both sides


def test_factorise_keeps_zero_directions_trainable() -> None:
    # A zero product (e.g. B initialised to zero) must not come back as A = 0 and B = 0.
    m = torch.zeros(OUT, IN, dtype=torch.float64)
    m[0, 0] = 2.0  # rank 1
    b, a = factorise(m, 3, torch.float64)
    assert torch.allclose(b @ a, m)
    assert torch.equal(b[:, 1:], torch.zeros(OUT, 2, dtype=torch.float64))
    assert torch.allclose(a[1:].norm(dim=1), torch.ones(2, dtype=torch.float64))  # not zero


def test_exact_handles_conv_shaped_factors() -> None:
    g = torch.Generator().manual_seed(0)
    states = [
        {
            "c.lora_A.weight": torch.randn(2, 3, 3, 3, generator=g),
            "c.lora_B.weight": torch.randn(4, 2, 1, 1, generator=g),
        }
        for _ in range(2)
    ]
    same = exact_aggregate(states[:1], [1.0])
    assert same["c.lora_A.weight"].shape == (2, 3, 3, 3)
    assert same["c.lora_B.weight"].shape == (4, 2, 1, 1)
    assert _rel(lora_product(same, "c"), lora_product(states[0], "c")) < 1e-5


def test_exact_lora_strategy_aggregates_client_states() -> None:
    # Prepare: clients share A and differ in B, so mean(B_i A) = mean(B_i) A has rank <= r
    # and the exact strategy must reproduce it exactly
    glob = lora_state(2, 0)
    news = []
    for seed in (1, 2):
        other = lora_state(2, seed)
        news.append({k: (other[k] if "lora_B" in k else glob[k]) for k in glob})
    results = [FitResult(c, 10 + c, subtract(s, glob)) for c, s in enumerate(news)]
    # Execute
    out = aggregate(ExactLoRA(ClientSampler(clients_per_round=2)), 1, glob, results)
    # Assert: against (10 B_1 + 11 B_2) / 21 @ A, computed here by hand
    for p in PREFIXES:
        a = glob[_a(p)].double()
        b = (10 * news[0][_b(p)].double() + 11 * news[1][_b(p)].double()) / 21
        assert torch.allclose(lora_product(out, p), b @ a, atol=1e-5)


# ---- FFA-LoRA --------------------------------------------------------------------------


def test_ffa_keys() -> None:
    s = lora_state(2, 0)
    assert frozen_keys(s) == [_a(p) for p in PREFIXES]
    assert ffa_trainable_keys(s) == [_b(p) for p in PREFIXES] + [HEAD]


def test_ffa_lora_keeps_a_and_averages_b_exactly() -> None:
    # Prepare: one update carries zero A entries, the other none at all (only B travels).
    glob = lora_state(2, 0)
    g = torch.Generator().manual_seed(5)
    upd0 = {
        k: (torch.zeros_like(v) if k in frozen_keys(glob) else torch.randn(v.shape, generator=g))
        for k, v in glob.items()
    }
    upd1 = {k: torch.randn(glob[k].shape, generator=g) for k in ffa_trainable_keys(glob)}
    results = [FitResult(0, 1, upd0), FitResult(1, 3, upd1)]
    # Execute
    out = aggregate(FFALoRA(ClientSampler(clients_per_round=2)), 1, glob, results)
    # Assert
    for p in PREFIXES:
        assert torch.equal(out[_a(p)], glob[_a(p)])
        want_b = glob[_b(p)] + (upd0[_b(p)] + 3 * upd1[_b(p)]) / 4
        assert torch.allclose(out[_b(p)], want_b, atol=1e-6)
        client_products = [(glob[_b(p)] + u[_b(p)]) @ glob[_a(p)] for u in (upd0, upd1)]
        mean = (client_products[0] + 3 * client_products[1]) / 4
        assert torch.allclose(out[_b(p)] @ out[_a(p)], mean, atol=1e-5)  # FFA is exact
    assert torch.allclose(out[HEAD], glob[HEAD] + (upd0[HEAD] + 3 * upd1[HEAD]) / 4, atol=1e-6)


def test_ffa_lora_works_when_a_is_not_in_the_state() -> None:
    # Prepare: A frozen before the trainable state was built, so only B and the head travel.
    glob = {k: v for k, v in lora_state(2, 0).items() if k not in frozen_keys(lora_state(2, 0))}
    upd = {k: torch.ones_like(v) for k, v in glob.items()}
    # Execute
    out = aggregate(FFALoRA(ClientSampler(clients_per_round=1)), 1, glob, [FitResult(0, 1, upd)])
    # Assert
    assert list(out) == list(glob) and all(torch.equal(out[k], glob[k] + 1) for k in glob)


def test_ffa_lora_ignores_and_warns_about_moved_a() -> None:
    glob = lora_state(2, 0)
    upd = {k: torch.ones_like(v) for k, v in glob.items()}
    with pytest.warns(UserWarning, match="frozen lora_A"):
        out = aggregate(
            FFALoRA(ClientSampler(clients_per_round=1)), 1, glob, [FitResult(7, 1, upd)]
        )
    assert all(torch.equal(out[k], glob[k]) for k in frozen_keys(glob))


# ---- HetLoRA ---------------------------------------------------------------------------


def test_pad_and_truncate_rank() -> None:
    s = lora_state(3, 0)
    padded = pad_rank(s, 8)
    assert lora_ranks(padded) == dict.fromkeys(PREFIXES, 8)
    assert torch.equal(padded[_a(PREFIXES[0])][3:], torch.zeros(5, IN))
    assert torch.equal(padded[_b(PREFIXES[0])][:, 3:], torch.zeros(OUT, 5))
    back = truncate_rank(padded, 3)
    assert all(torch.equal(back[k], s[k]) for k in s)
    assert torch.equal(lora_product(padded, PREFIXES[0]), lora_product(s, PREFIXES[0]))
    with pytest.raises(ValueError, match="r_max"):
        pad_rank(s, 2)
    with pytest.raises(ValueError, match="< 4"):
        truncate_rank(s, 4)


RANKS = [2, 4, 8]


def _run_round(strategy: HetLoRA | FlexLoRA, rnd: int, glob: State) -> tuple[list, State]:
    fits = strategy.configure(rnd, [0, 1, 2], np.random.default_rng(rnd))
    results = []
    for fit in fits:
        assert fit.state is not None
        g = torch.Generator().manual_seed(100 * rnd + fit.client_id)
        # Sorted keys: the draws must not depend on key order (safetensors loads sorted).
        upd = {k: 0.1 * torch.randn(fit.state[k].shape, generator=g) for k in sorted(fit.state)}
        results.append(FitResult(fit.client_id, 10 * (fit.client_id + 1), upd))
    return fits, aggregate(strategy, rnd, glob, results)


@pytest.mark.parametrize("cls", [HetLoRA, FlexLoRA])
def test_each_client_gets_a_state_of_its_own_rank(cls: type[HetLoRA]) -> None:
    # Prepare
    strategy = cls(ClientSampler(clients_per_round=3), ranks=RANKS)
    glob = strategy.initialize(lora_state(8, 0, zero_b=True))
    # Execute
    for rnd in (1, 2):
        fits, glob = _run_round(strategy, rnd, glob)
        # Assert
        for fit in fits:
            assert fit.state is not None
            r = RANKS[fit.client_id]
            assert lora_ranks(fit.state) == dict.fromkeys(PREFIXES, r)
            assert fit.state[_a(PREFIXES[0])].shape == (r, IN)
            assert fit.state[_b(PREFIXES[0])].shape == (OUT, r)
            assert fit.state[HEAD].shape == (2, IN)
        assert lora_ranks(glob) == dict.fromkeys(PREFIXES, 8)


def test_hetlora_zero_pads_and_weights_by_examples() -> None:
    # Prepare: ranks 2, 4, 8 with 1, 1, 2 examples.
    glob = lora_state(8, 0)
    strategy = HetLoRA(ClientSampler(clients_per_round=3), ranks={0: 2, 1: 4, 2: 8})
    strategy.initialize(glob)
    g = torch.Generator().manual_seed(3)
    starts = [truncate_rank(glob, r) for r in RANKS]
    upds = [{k: torch.randn(v.shape, generator=g) for k, v in s.items()} for s in starts]
    results = [FitResult(c, n, u) for c, (n, u) in enumerate(zip([1, 1, 2], upds, strict=True))]
    a = _a(PREFIXES[0])
    # Execute
    out = aggregate(strategy, 1, glob, results)
    # Assert: row 0 of A is shared by all three, row 5 only by the rank-8 client.
    news = [{k: starts[i][k] + upds[i][k] for k in starts[i]} for i in range(3)]
    row0 = (news[0][a][0] + news[1][a][0] + 2 * news[2][a][0]) / 4
    assert torch.allclose(out[a][0], row0, atol=1e-6)
    assert torch.allclose(out[a][5], 2 * news[2][a][5] / 4, atol=1e-6)
    assert torch.allclose(out[HEAD], (news[0][HEAD] + news[1][HEAD] + 2 * news[2][HEAD]) / 4)


def test_hetlora_checks() -> None:
    strategy = HetLoRA(ClientSampler(clients_per_round=1), ranks=[2, 16])
    with pytest.raises(RuntimeError, match="initialize"):
        strategy.configure(1, [0], np.random.default_rng(0))
    with pytest.raises(ValueError, match="largest client rank 16"):
        strategy.initialize(lora_state(8, 0))
    ok = HetLoRA(ClientSampler(clients_per_round=1), ranks=[2, 4])
    ok.initialize(lora_state(8, 0))
    with pytest.raises(ValueError, match="no LoRA rank configured for client 5"):
        ok.client_state(5)
    bad = {k: torch.zeros_like(v) for k, v in lora_state(8, 0).items()}
    with pytest.raises(ValueError, match=r"client 1 \(rank 4\) sent"):
        aggregate(ok, 1, lora_state(8, 0), [FitResult(1, 1, bad)])


# ---- FlexLoRA --------------------------------------------------------------------------


def test_flexlora_averages_full_products_and_svds_to_each_rank() -> None:
    # Prepare
    strategy = FlexLoRA(ClientSampler(clients_per_round=3), ranks=RANKS)
    glob = strategy.initialize(lora_state(8, 0, zero_b=True))
    # Execute
    fits, glob = _run_round(strategy, 1, glob)
    # Assert: round 1 sends the fresh (truncated) initial state.
    for fit in fits:
        assert fit.state is not None
        r = RANKS[fit.client_id]
        assert torch.equal(fit.state[_a(PREFIXES[0])], _initial_a(r))
    # W is the example-weighted mean of the clients' products.
    assert strategy.products_ is not None
    fits2 = strategy.configure(2, [0, 1, 2], np.random.default_rng(2))
    for p in PREFIXES:
        w = strategy.products_[p]
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        for fit in fits2:
            assert fit.state is not None
            r = RANKS[fit.client_id]
            best = u[:, :r] @ torch.diag(s[:r]) @ vh[:r]
            assert torch.allclose(lora_product(fit.state, p), best, atol=1e-5)
        best8 = u[:, :8] @ torch.diag(s[:8]) @ vh[:8]
        assert torch.allclose(lora_product(glob, p), best8, atol=1e-5)


def _initial_a(rank: int) -> torch.Tensor:
    return lora_state(8, 0, zero_b=True)[_a(PREFIXES[0])][:rank]


def test_flexlora_products_are_the_weighted_mean() -> None:
    glob = lora_state(8, 0)
    strategy = FlexLoRA(ClientSampler(clients_per_round=2), ranks={3: 2, 9: 8})
    strategy.initialize(glob)
    news = [truncate_rank(lora_state(8, 1), 2), lora_state(8, 2)]
    results = [
        FitResult(9, 3, subtract(news[1], glob)),
        FitResult(3, 1, subtract(news[0], truncate_rank(glob, 2))),
    ]
    aggregate(strategy, 1, glob, results)
    assert strategy.products_ is not None
    for p in PREFIXES:
        want = (lora_product(news[0], p) + 3 * lora_product(news[1], p)) / 4
        assert torch.allclose(strategy.products_[p], want, atol=1e-6)


@pytest.mark.parametrize("cls", [HetLoRA, FlexLoRA])
def test_resume_is_bit_identical(cls: type[HetLoRA]) -> None:
    # Prepare: three uninterrupted rounds.
    def make() -> HetLoRA:
        return cls(ClientSampler(clients_per_round=3), ranks=RANKS)

    full = make()
    glob = full.initialize(lora_state(8, 0, zero_b=True))
    for rnd in (1, 2):
        _, glob = _run_round(full, rnd, glob)
    saved = full.state_dict()
    fits_full, want = _run_round(full, 3, glob)
    # Execute: restore into a fresh instance as a checkpoint would: tensors through
    # safetensors bytes (which sort the keys), everything else through JSON.
    tensors = {k: v for k, v in saved.items() if isinstance(v, torch.Tensor)}
    scalars = json.loads(json.dumps({k: v for k, v in saved.items() if k not in tensors}))
    resumed = make()
    resumed.load_state_dict({**from_bytes(to_bytes(tensors)), **scalars})
    fits_resumed, got = _run_round(resumed, 3, glob)
    # Assert
    for f1, f2 in zip(fits_full, fits_resumed, strict=True):
        assert f1.state is not None and f2.state is not None
        assert list(f1.state) == list(f2.state) == list(glob)
        assert all(torch.equal(f1.state[k], f2.state[k]) for k in f1.state)
    assert all(torch.equal(got[k], want[k]) for k in want)


# ---- properties ------------------------------------------------------------------------


def _ranked(cls: type[HetLoRA] | type[FlexLoRA]) -> HetLoRA | FlexLoRA:
    s = cls(ClientSampler(clients_per_round=3), ranks=[2, 4, 8, 8])
    s.initialize(lora_state(8, 0))
    return s


FACTORIES: dict[str, Callable[[], Strategy]] = {
    "exact": lambda: ExactLoRA(ClientSampler(clients_per_round=3)),
    "ffa": lambda: FFALoRA(ClientSampler(clients_per_round=3)),
    "hetlora": lambda: _ranked(HetLoRA),
    "flexlora": lambda: _ranked(FlexLoRA),
}


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), perm=st.permutations(range(4)))
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_strategies_ignore_client_order(name: str, seed: int, perm: list[int]) -> None:
    # Prepare: four clients; ranks 2, 4, 8, 8 for the heterogeneous strategies.
    strategy = FACTORIES[name]()
    glob = lora_state(8, 0)
    g = torch.Generator().manual_seed(seed)
    results = []
    for c, r in enumerate([2, 4, 8, 8]):
        start = truncate_rank(glob, r) if name in {"hetlora", "flexlora"} else glob
        upd = {k: torch.randn(v.shape, generator=g) for k, v in start.items()}
        if name == "ffa":  # A is frozen on FFA-LoRA clients
            upd.update({k: torch.zeros_like(glob[k]) for k in frozen_keys(glob)})
        results.append(FitResult(c, c + 1, upd))
    # Execute
    a = aggregate(strategy, 1, glob, results)
    b = aggregate(FACTORIES[name](), 1, glob, [results[i] for i in perm])
    # Assert
    assert all(torch.equal(a[k], b[k]) for k in a)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), perm=st.permutations(range(3)), w=st.integers(1, 50))
def test_product_mean_is_order_free_and_plain_for_equal_weights(
    seed: int, perm: list[int], w: int
) -> None:
    states = [lora_state(2, seed + i) for i in range(3)]
    a = product_mean(states, [w] * 3)
    b = product_mean([states[i] for i in perm], [w] * 3)
    for p in PREFIXES:
        plain = torch.stack([lora_product(s, p) for s in states]).mean(0)
        assert torch.allclose(a[p], b[p], atol=1e-12)
        assert torch.allclose(a[p], plain, atol=1e-12)
