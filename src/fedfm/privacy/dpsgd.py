"""Record-level DP inside a client: DP-SGD (Abadi et al. 2016, https://arxiv.org/abs/1607.00133)
as a client hook, with Opacus for per-sample gradients and accounting. The only module that
imports opacus.

`setup` attaches Opacus' `GradSampleModule` hooks to the trainable layers of the model (the
model itself is not wrapped: tasks call it as before, and the hooks fill `p.grad_sample`).
Every step, a gradient hook that runs before any other hook replaces each gradient by the
DP-SGD estimate: per-sample gradients clipped to a joint L2 norm of `max_grad_norm`, summed,
plus N(0, (σ·max_grad_norm)²), divided by the batch size; the gradients of the hooks' loss
terms (e.g. FedProx's, which touch no data) are added back. The noise comes from
`fedfm.privacy.noise` (seeded in simulation, ChaCha20 otherwise): Opacus' own `secure_mode`
needs torchcsprng, which does not install here.

Each client keeps its ledger of (σ, q, steps) in its state store across rounds and reports
its ε from Opacus' RDP accountant, with q = batch size / local examples. What works: LoRA
(and FFA-LoRA's B-only) factors of peft's `lora.Linear` and the heads are plain `nn.Linear`
layers, which Opacus' `hooks` mode handles; `functorch` mode computes the same per-sample
gradients with vmap (both checked on tiny BERT and tiny Llama against one-example
gradients). Refused: peft prompt tuning, whose prompt embedding is computed once per batch
(Opacus sees a batch of 1), and, for the same reason, full fine-tuning of a transformer
(BERT's position embeddings); the `ew` (expanded weights) mode, which needs the forward to
go through Opacus' wrapper. Caveats: the client's batches are shuffled fixed-size batches,
for which the Poisson accounting is the usual approximation, not a proof; and per-sample
clipping bounds a record's influence only when the task's loss is a mean of per-example
losses (the classification tasks), not a mean over the batch's tokens (the instruction
task), where one record also changes the others' weights.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from fedfm.client.hooks import FitContext, HookBase
from fedfm.errors import ClientError, ConfigError
from fedfm.privacy.noise import gaussian_like, stream_id

GRAD_SAMPLE_MODES = ("hooks", "functorch")
LEDGER = "dpsgd.ledger"  # client store: {"ledger": float64 [k, 3] of (sigma, q, steps)}
DPSGD_SALT = 0xD5  # noise draws from (seed, round, client + 1, step, salt)

# Opacus' backward hooks fire on frozen inputs (the embeddings of a LoRA model): expected.
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients")


def _grad_sample_module() -> Any:
    try:
        from opacus.grad_sample import GradSampleModule
    except ImportError as exc:  # pragma: no cover - a dependency of fedfm
        raise ConfigError("privacy.dpsgd needs opacus: pip install opacus==1.6.0") from exc
    return GradSampleModule


class DPSGD(HookBase):
    """DP-SGD for one client's local training.

    Args:
        noise_multiplier: σ, noise std over `max_grad_norm`.
        max_grad_norm: C, the bound on each example's gradient norm.
        delta: δ of the reported ε.
        grad_sample_mode: `"hooks"` (Opacus' per-layer rules) or `"functorch"` (vmap).
        secure: cryptographic noise instead of seeded noise.
        seed: the run's seed (seeded noise).

    Raises:
        ConfigError: a bad σ, C, δ or mode.
    """

    def __init__(
        self,
        noise_multiplier: float,
        max_grad_norm: float,
        delta: float,
        grad_sample_mode: str = "hooks",
        secure: bool = False,
        seed: int = 0,
    ) -> None:
        if not (noise_multiplier > 0 and max_grad_norm > 0 and 0 < delta < 1):
            raise ConfigError(
                "privacy.dpsgd: needs noise_multiplier > 0, max_grad_norm > 0 and "
                f"0 < privacy.delta < 1, got {noise_multiplier}, {max_grad_norm}, {delta}"
            )
        if grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ConfigError(
                f"privacy.dpsgd.grad_sample_mode: {grad_sample_mode!r} is not one of "
                f"{', '.join(GRAD_SAMPLE_MODES)}"
            )
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.delta = delta
        self.grad_sample_mode = grad_sample_mode
        self.secure = secure
        self.seed = seed
        self.gsm: Any = None
        self._batch_sizes: list[int] = []

    def setup(self, module: torch.nn.Module) -> None:
        """Attach per-sample gradient hooks to the trainable layers (after any hook that
        freezes parameters, e.g. FFA-LoRA's), switched off outside local training."""
        self.gsm = _grad_sample_module()(
            module,
            batch_first=True,
            loss_reduction="mean",
            force_functorch=self.grad_sample_mode == "functorch",
        )
        self.gsm.disable_hooks()

    def before_train(self, ctx: FitContext) -> None:
        """Switch the hooks on and privatise every step's gradients before other hooks.

        Raises:
            ClientError: `setup` was not run, or the client's example count is unknown.
        """
        if self.gsm is None:
            raise ClientError("DP-SGD: setup(module) was not called before training")
        if ctx.num_examples < 1:
            raise ClientError("DP-SGD needs the client's number of training examples")
        self._reset()
        self.gsm.enable_hooks()
        self._batch_sizes = []
        terms = ctx.loss_terms  # read at every step: hooks after this one may add terms
        entropy = (self.seed, ctx.task.server_round, ctx.client_id + 1, stream_id("dpsgd"))

        def privatize(params: dict[str, torch.nn.Parameter]) -> None:
            step = len(self._batch_sizes)
            batch = self._privatize(params, (*entropy, step, DPSGD_SALT))
            self._batch_sizes.append(batch)
            if terms:  # gradients of data-free loss terms, which the per-sample path misses
                plist = list(params.values())
                penalty = torch.stack([t(params) for t in terms]).sum()
                extra = torch.autograd.grad(penalty, plist, allow_unused=True)
                with torch.no_grad():
                    for p, g in zip(plist, extra, strict=True):
                        if g is not None and p.grad is not None:
                            p.grad.add_(g)

        ctx.grad_hooks.insert(0, privatize)

    def _privatize(self, params: dict[str, torch.nn.Parameter], entropy: tuple[int, ...]) -> int:
        """p.grad <- (sum_i clip(g_i) + N(0, (σC)²)) / B for every trainable p; returns B."""
        samples = {}
        for name, p in params.items():
            gs = getattr(p, "grad_sample", None)
            if not isinstance(gs, torch.Tensor):
                raise ClientError(f"DP-SGD: no per-sample gradient for {name} ({type(gs)})")
            samples[name] = gs
        batch = max(g.shape[0] for g in samples.values())
        for name, g in samples.items():
            if g.shape[0] != batch:  # computed once per batch: no per-example gradient
                raise ClientError(
                    f"DP-SGD: {name} is shared by the whole batch (per-sample batch "
                    f"{g.shape[0]}, not {batch}), so it has no per-example gradient; freeze it"
                )
        with torch.no_grad():
            norms = torch.stack([g.reshape(batch, -1).norm(2, dim=1) for g in samples.values()])
            scale = (self.max_grad_norm / (norms.norm(2, dim=0) + 1e-6)).clamp(max=1.0).double()
            noise = gaussian_like(
                params,
                self.noise_multiplier * self.max_grad_norm,
                secure=self.secure,
                entropy=entropy,
            )
            for name, p in params.items():
                summed = torch.einsum("i,i...->...", scale, samples[name].double())
                p.grad = ((summed + noise[name]) / batch).to(p.dtype)
                p.grad_sample = None  # type: ignore[attr-defined]  # Opacus' attribute
        return int(batch)

    def after_train(self, ctx: FitContext) -> None:
        """Switch the hooks off, add this round to the client's ledger, report its ε."""
        self.gsm.disable_hooks()
        self._reset()
        if not self._batch_sizes:
            return
        from opacus.accountants import RDPAccountant

        q = min(1.0, max(self._batch_sizes) / ctx.num_examples)
        entry = torch.tensor(
            [[self.noise_multiplier, q, len(self._batch_sizes)]], dtype=torch.float64
        )
        stored = ctx.store.get(ctx.client_id, LEDGER)
        ledger = entry if stored is None else torch.cat([stored["ledger"], entry])
        ctx.store.put(ctx.client_id, LEDGER, {"ledger": ledger})
        accountant = RDPAccountant()
        accountant.history = [(float(s), float(r), int(n)) for s, r, n in ledger.tolist()]
        ctx.metrics["dpsgd/epsilon"] = float(accountant.get_epsilon(self.delta))
        ctx.metrics["dpsgd/sample_rate"] = q
        ctx.metrics["dpsgd/secure"] = float(self.secure)

    def _reset(self) -> None:
        """Drop per-sample gradients and activations a failed or earlier step left behind."""
        for module in self.gsm._module.modules():
            if hasattr(module, "activations"):
                module.activations = []
        for p in self.gsm._module.parameters():
            if getattr(p, "grad_sample", None) is not None:
                p.grad_sample = None
