"""The composition root: config -> task, client runtime, server parts, backend.

Nothing here trains or aggregates; it only builds. Order matters for reproducibility: the
examples are read and partitioned, then torch is seeded with `cfg.seed` and the model built,
so two builds of one config give the same initial state bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedfm.backends.base import Backend
from fedfm.client.attacks import PoisonUpdate, choose_malicious, flip_labels
from fedfm.client.hooks import ClientHook
from fedfm.client.runtime import ClientRuntime
from fedfm.client.state import ClientStateStore, InMemoryStore
from fedfm.config import Config
from fedfm.data.federated import FederatedData, federate
from fedfm.distill import server_reserve
from fedfm.errors import ConfigError
from fedfm.models.adapters import make_trainable
from fedfm.models.trainable import TrainableModel
from fedfm.pipeline import Pipeline, Stage
from fedfm.privacy.configs import build_uplink, privacy_hooks
from fedfm.stages import build_stages
from fedfm.state import State
from fedfm.strategies.base import Strategy
from fedfm.strategies.configs import FedDFConfig
from fedfm.strategies.registry import build_hooks, build_strategy
from fedfm.tasks.base import Examples, Task
from fedfm.tasks.registry import build_task


@dataclass
class Built:
    """The built pieces of a run.

    Attributes:
        cfg: the config.
        task: the problem.
        data: the examples, the central test split and each client's split.
        model: the model the runtime trains (the in-process evaluator shares it).
        runtime: the client program of this process.
        strategy: the server half of the algorithm.
        uplink: the uplink pipeline (client encode, server decode and hooks).
        downlink: the downlink pipeline (the broadcast).
        store: the client state store (checkpointed in simulation).
        initial_state: the global trainable state before round 1.
        synthetic: what `[synth]` added (warm-up and fill-in counts), or `None`.
    """

    cfg: Config
    task: Task
    data: FederatedData
    model: TrainableModel
    runtime: ClientRuntime
    strategy: Strategy
    uplink: Pipeline
    downlink: Pipeline
    store: ClientStateStore
    initial_state: State
    synthetic: dict[str, Any] | None = None

    def central_eval(self, state: State) -> dict[str, float]:
        """The task's metrics of `state` on the central test split."""
        self.model.set_state(state)
        return self.task.evaluate(
            self.model.module, self.data.examples, self.data.central_test, self.cfg.eval.batch_size
        )


def build_model(
    cfg: Config, task: Task, examples: Examples, hooks: Sequence[ClientHook]
) -> TrainableModel:
    """The task's model with the adapter, seeded by `cfg.seed`; hooks' `setup` runs first."""
    torch.manual_seed(cfg.seed)
    module = make_trainable(
        task.build_model(examples),
        cfg.adapter,
        task.peft_task_type,
        task.head_prefixes,
        task.default_target_modules,
    )
    for hook in hooks:
        hook.setup(module)
    return TrainableModel(module)


def build(cfg: Config, *, federated: bool = True, extra_hooks: Sequence[ClientHook] = ()) -> Built:
    """Build every piece of a run from `cfg` (simulation: one process holds everything).

    Args:
        cfg: the config.
        federated: also build the strategy's client hooks and the attack harness (the
            baselines train without them).
        extra_hooks: further client hooks after the strategy's (simulation: fault
            injection, instrumentation).
    """
    task = build_task(cfg)
    examples = task.load_examples()
    data = federate(examples, cfg.data, cfg.partition, cfg.seed, server_reserve(cfg))
    synthetic = None
    if cfg.synth.path is not None:  # synthetic rows after the real ones; the split is unchanged
        from fedfm.synth.use import attach_synthetic

        synthetic = attach_synthetic(cfg, task, data)
        data = synthetic.data
    private = privacy_hooks(cfg, cfg.privacy)  # after the strategy's: sees what they froze
    hooks = [*build_hooks(cfg), *private, *extra_hooks] if federated else []
    model = build_model(cfg, task, examples, hooks)
    poison, train_examples = _attack_harness(cfg, data) if federated else (None, examples)
    uplink = Pipeline(
        [
            *([poison] if poison else []),
            *build_uplink(cfg.pipeline.uplink, cfg, cfg.privacy, len(data.clients)),
        ],
        seed=cfg.seed,
        where="pipeline.uplink",
    )
    downlink = Pipeline(
        build_stages(cfg.pipeline.downlink), seed=cfg.seed, where="pipeline.downlink"
    )
    store = InMemoryStore()
    runtime = ClientRuntime(
        task,
        train_examples,
        model,
        data.clients,
        cfg.client,
        uplink,
        hooks,
        store,
        cfg.seed,
        cfg.eval.batch_size,
    )
    strategy = build_strategy(
        cfg.strategy,
        len(data.clients),
        poisson=cfg.privacy.sampling == "poisson",
        uniform=cfg.privacy.weighting == "uniform",
    )
    if synthetic is not None:
        synthetic.warm_up(cfg, task, model)  # GPT-FL: the start every mode and resume share
    initial_state = model.get_state()
    if isinstance(cfg.strategy, FedDFConfig):  # its server step needs the model and server set
        _bind_feddf(cfg, cfg.strategy, task, model, data, strategy)
    return Built(
        cfg,
        task,
        data,
        model,
        runtime,
        strategy,
        uplink,
        downlink,
        store,
        initial_state,
        synthetic.summary if synthetic is not None else None,
    )


def _bind_feddf(
    cfg: Config,
    s: FedDFConfig,
    task: Task,
    model: TrainableModel,
    data: FederatedData,
    strategy: Strategy,
) -> None:
    """Give FedDF its distillation step on `data.server_pool`, sharing the runtime's model
    (the server distils between rounds, when no client trains)."""
    from fedfm.distill import EnsembleDistiller
    from fedfm.strategies.feddf import bind_distill

    distill = EnsembleDistiller(
        task,  # type: ignore[arg-type]  # FedDFConfig.check admits classification tasks only
        model,
        data.examples,
        data.server_pool,
        s.server_steps,
        s.temperature,
        s.distill_lr,
        s.distill_batch_size,
        cfg.seed,
    )
    bind_distill(strategy, distill)


def build_backend(cfg: Config, runtime: ClientRuntime) -> Backend:
    """The configured backend (optional ones are imported only when chosen)."""
    if cfg.backend.name == "inprocess":
        from fedfm.backends.inprocess import InProcessBackend

        return InProcessBackend(runtime)
    raise ConfigError(f"backend.name: {cfg.backend.name!r} is not one of inprocess")


def _attack_harness(cfg: Config, data: FederatedData) -> tuple[Stage | None, Examples]:
    """Malicious clients: a poisoning stage, or a relabelled view of their training data."""
    kind = cfg.attack.kind
    if kind == "none":
        return None, data.examples
    malicious = choose_malicious(len(data.clients), cfg.attack.fraction, cfg.attack.seed)
    if kind == "label-flip":
        return None, flip_labels(data.examples, [data.clients[c].train for c in sorted(malicious)])
    attack = {"sign-flip": "sign_flip", "gaussian": "gaussian", "scale": "scale"}[kind]
    return PoisonUpdate(malicious, attack, cfg.attack.strength), data.examples  # type: ignore[arg-type]
