"""Record-level DP-SGD as a client hook: Opacus' per-sample gradients through peft's LoRA
layers, the DP-SGD step, and a client's ε across rounds."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.accountants import RDPAccountant

from fedfm.client.hooks import FitContext, HookBase
from fedfm.client.state import InMemoryStore
from fedfm.config import AdapterConfig, load_config
from fedfm.errors import ConfigError
from fedfm.messages import FitTask
from fedfm.models.adapters import make_trainable
from fedfm.privacy.dpsgd import DPSGD, LEDGER
from fedfm.state import from_bytes, global_norm
from tests.helpers import TINY

# Opacus' backward hooks fire on frozen inputs (a LoRA model's embeddings): expected.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha"),
]


def _tiny_bert():
    from fedfm.models.catalogue import build_model

    torch.manual_seed(0)
    module = make_trainable(build_model("tiny-bert", 2, pretrained=False), AdapterConfig())

    def loss(m, ids):  # a mean of per-example losses
        logits = m(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        return torch.nn.functional.cross_entropy(logits, ids[:, 0] % 2)

    return module, loss, 30522


def _tiny_llama():
    from fedfm.models.causal_lm import build_causal_lm

    torch.manual_seed(0)
    module = make_trainable(
        build_causal_lm("tiny-llama", pretrained=False),
        AdapterConfig(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        "CAUSAL_LM",
        ("lm_head.",),
    )

    def loss(m, ids):
        return m(input_ids=ids).logits.float().pow(2).mean(dim=(1, 2)).mean()

    return module, loss, 1000


@pytest.mark.parametrize("mode", ["hooks", "functorch"])
@pytest.mark.parametrize("model", [_tiny_bert, _tiny_llama])
def test_per_sample_gradients_through_peft_lora_equal_one_example_gradients(model, mode):
    # Prepare: no dropout, so one example's gradient is well defined
    module, loss, vocab = model()
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    hook = DPSGD(1.0, 1.0, 1e-5, grad_sample_mode=mode)
    hook.setup(module)
    hook.gsm.enable_hooks()
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in params) and any("lora_B" in n for n in params)
    ids = torch.randint(0, vocab, (4, 12), generator=torch.Generator().manual_seed(1))
    module.train()
    # Execute
    loss(module, ids).backward()
    per_sample = {n: p.grad_sample.clone() for n, p in params.items()}
    singles = []
    for i in range(4):
        hook._reset()
        module.zero_grad(set_to_none=True)
        loss(module, ids[i : i + 1]).backward()
        singles.append({n: p.grad.clone() for n, p in params.items()})
    # Assert
    for name in params:
        for i in range(4):
            torch.testing.assert_close(per_sample[name][i], singles[i][name], atol=1e-6, rtol=1e-4)


def test_a_parameter_shared_by_the_whole_batch_is_refused():
    # Prepare: full fine-tuning of BERT: the position embeddings are looked up once a batch
    from fedfm.errors import ClientError
    from fedfm.models.catalogue import build_model

    torch.manual_seed(0)
    module = make_trainable(
        build_model("tiny-bert", 2, pretrained=False), AdapterConfig(method="full")
    )
    hook = DPSGD(1.0, 1.0, 1e-5)
    hook.setup(module)
    ctx = FitContext(FitTask(0, 1), {}, {}, InMemoryStore(), 0.1, num_examples=40)
    hook.before_train(ctx)
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    ids = torch.randint(0, 30522, (4, 12), generator=torch.Generator().manual_seed(1))
    module.train()
    module(input_ids=ids).logits.sum().backward()
    # Execute / Assert
    with pytest.raises(
        ClientError, match=r"position_embeddings\.weight is shared by the whole batch"
    ):
        ctx.grad_hooks[0](params)


def test_the_step_is_the_mean_gradient_without_clipping_or_noise_plus_loss_terms():
    # Prepare: C so large nothing is clipped, sigma so small the noise vanishes
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    hook = DPSGD(1e-16, 1e9, 1e-5)  # noise std 1e-7
    hook.setup(module)
    params = dict(module.named_parameters())
    ctx = FitContext(FitTask(0, 1), {}, {}, InMemoryStore(), 0.1, num_examples=40)
    ctx.loss_terms.append(lambda ps: 0.5 * sum((p**2).sum() for p in ps.values()))
    hook.before_train(ctx)
    x, y = torch.randn(8, 5), torch.randn(8, 1)
    # Execute
    torch.nn.functional.mse_loss(module(x), y).backward()
    plain = {n: p.grad.clone() for n, p in params.items()}
    ctx.grad_hooks[0](params)
    # Assert: the mean gradient plus the term's gradient (p itself)
    for n, p in params.items():
        torch.testing.assert_close(p.grad, plain[n] + p.detach(), atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="grad_sample_mode"):
        DPSGD(1.0, 1.0, 1e-5, grad_sample_mode="ew")


class _GradNorms(HookBase):
    """Records the global gradient norm each step sees after DP-SGD."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def before_train(self, ctx: FitContext) -> None:
        ctx.grad_hooks.append(
            lambda ps: self.norms.append(global_norm({n: p.grad for n, p in ps.items()}))
        )


@pytest.fixture(scope="module")
def lora_job():
    """A tiny-BERT LoRA job whose clients run DP-SGD (sigma 1, C 0.05)."""
    from fedfm.build import build

    cfg = load_config(None, [*TINY, "client.batch_size=8", "client.max_steps=4"])
    hook, norms = DPSGD(1.0, 0.05, 1e-5, seed=cfg.seed), _GradNorms()
    return build(cfg, extra_hooks=[hook, norms]), hook, norms


def _fit(built, client, server_round, monkeypatch):
    """`ClientRuntime.fit`, with the client's example count in its `FitContext` (the
    runtime passes `len(shard.train)` once wired)."""
    import fedfm.client.runtime as runtime

    shards = built.data.clients

    def with_count(task, *args, **kwargs):
        kwargs.setdefault("num_examples", len(shards[task.client_id].train))
        return FitContext(task, *args, **kwargs)

    monkeypatch.setattr(runtime, "FitContext", with_count)
    return built.runtime.fit(FitTask(client, server_round), built.initial_state)


def test_dpsgd_trains_a_lora_model_and_reports_each_clients_epsilon(lora_job, monkeypatch):
    built, _, _ = lora_job
    # Execute: client 0 takes part in two rounds
    first = _fit(built, 0, 1, monkeypatch)
    second = _fit(built, 0, 2, monkeypatch)
    # Assert: trained, and accounted as Opacus' RDP accountant does
    assert first.ok and second.ok, (first.failure, second.failure)
    assert 0 < global_norm(from_bytes(first.payload)) < math.inf
    n = len(built.data.clients[0].train)
    q, steps = 8 / n, int(first.metrics["steps"])
    opacus = RDPAccountant()
    opacus.history = [(1.0, q, steps)]
    eps1, eps2 = first.metrics["dpsgd/epsilon"], second.metrics["dpsgd/epsilon"]
    assert 0 < eps1 < 100 and eps1 == pytest.approx(opacus.get_epsilon(1e-5))
    assert first.metrics["dpsgd/sample_rate"] == pytest.approx(q)
    assert eps2 > eps1 and built.store.get(0, LEDGER)["ledger"].shape == (2, 3)


def test_dpsgd_clips_every_example(lora_job, monkeypatch):
    # Prepare: near-zero noise, so the step is the mean of clipped per-example gradients
    built, hook, norms = lora_job
    hook.noise_multiplier, norms.norms = 1e-9, []
    try:
        reply = _fit(built, 3, 1, monkeypatch)
    finally:
        hook.noise_multiplier = 1.0
    # Assert: a mean of vectors of norm <= C has norm <= C
    assert reply.ok, reply.failure
    assert len(norms.norms) == 4 and max(norms.norms) <= 0.05 * (1 + 1e-4)


def test_dpsgd_noise_is_seeded_in_simulation_and_secure_otherwise(lora_job, monkeypatch):
    built, hook, _ = lora_job
    a = from_bytes(_fit(built, 1, 1, monkeypatch).payload)
    b = from_bytes(_fit(built, 1, 1, monkeypatch).payload)
    hook.secure = True
    try:
        c = from_bytes(_fit(built, 1, 1, monkeypatch).payload)
        d = from_bytes(_fit(built, 1, 1, monkeypatch).payload)
    finally:
        hook.secure = False
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(c[k], d[k]) for k in c)


def test_dpsgd_with_ffa_lora_trains_only_b(monkeypatch):
    from fedfm.build import build

    cfg = load_config(None, [*TINY, "strategy.name=ffa-lora", "client.max_steps=2"])
    built = build(cfg, extra_hooks=[DPSGD(1.0, 1.0, 1e-5)])
    reply = _fit(built, 2, 1, monkeypatch)
    assert reply.ok, reply.failure
    keys = set(from_bytes(reply.payload))
    assert keys and not any("lora_A" in k for k in keys) and any("lora_B" in k for k in keys)
    assert math.isfinite(reply.metrics["dpsgd/epsilon"])
