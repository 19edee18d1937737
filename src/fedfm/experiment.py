"""Builds the pieces from a config and runs the round loop (fresh or resumed) or a baseline."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedfm.backends.inprocess import InProcessBackend, UpdateAttack
from fedfm.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from fedfm.client.evaluate import evaluate
from fedfm.config import Config, apply_override, config_from_dict
from fedfm.data.datasets import TextDataset, load_dataset
from fedfm.data.federated import FederatedData, federate
from fedfm.errors import CheckpointError
from fedfm.loop import Callback, LoopParts, Progress, SilentProgress, run_rounds
from fedfm.metrics import MetricsLog
from fedfm.models.adapters import make_trainable
from fedfm.models.catalogue import build_model, load_tokenizer
from fedfm.models.trainable import TrainableModel
from fedfm.pipeline import build_pipeline
from fedfm.state import State
from fedfm.strategies.attacks import choose_malicious
from fedfm.strategies.lora_math import frozen_keys
from fedfm.strategies.registry import build_strategy

CLIENT_PREFIX = "@client/"  # client-side persistent state inside the checkpoint


@dataclass
class Experiment:
    """The built pieces of a run."""

    cfg: Config
    data: FederatedData
    model: TrainableModel
    backend: InProcessBackend
    parts: LoopParts
    initial_state: State


def build(
    cfg: Config,
    run_dir: Path,
    callbacks: list[Callback] | None = None,
    progress: Progress | None = None,
) -> Experiment:
    """Build data, model, strategy, pipeline and backend from `cfg`.

    The model is initialised from `cfg.seed`, so two builds give the same initial state.
    """
    if cfg.backend.threads is not None:
        torch.set_num_threads(cfg.backend.threads)
    tokenizer = load_tokenizer()
    dataset = load_dataset(
        cfg.data.dataset, tokenizer, cfg.model.max_length, cfg.data.max_examples, cfg.seed
    )
    data = federate(dataset, cfg.data, cfg.partition, cfg.seed)
    torch.manual_seed(cfg.seed)
    module = make_trainable(build_model(cfg.model.name, dataset.num_classes), cfg.adapter)
    if cfg.strategy.name == "ffa-lora":  # A stays at its seeded init and never travels
        params = dict(module.named_parameters())
        for name in frozen_keys(params):
            params[name].requires_grad_(False)
    model = TrainableModel(module)
    pipeline = build_pipeline(cfg.pipeline.transforms, cfg.pipeline.clip_norm, cfg.seed)
    train_data, attack = _attack_harness(cfg, data)
    backend = InProcessBackend(
        model, train_data, cfg.client, pipeline, cfg.seed, cfg.eval.batch_size, attack
    )
    strategy = build_strategy(cfg.strategy, len(data.clients))

    def central_eval(state: State) -> dict[str, float]:
        model.set_state(state)
        return evaluate(model, dataset, data.central_test, cfg.eval.batch_size)

    def checkpoint(server_round: int, state: State, record: dict[str, Any]) -> None:
        meta = {"config": cfg.model_dump(), "seed": cfg.seed, "record": record}
        saved = strategy.state_dict()
        saved.update({CLIENT_PREFIX + k: v for k, v in backend.state_dict().items()})
        save_checkpoint(run_dir, server_round, state, saved, meta)

    parts = LoopParts(
        strategy=strategy,
        backend=backend,
        pipeline=pipeline,
        client_ids=data.client_ids,
        central_eval=central_eval,
        checkpoint=checkpoint,
        seed=cfg.seed,
        num_rounds=cfg.rounds,
        eval_every=cfg.eval.every,
        # the personalisation baseline needs the global model's per-client accuracy beside it
        federated_eval_every=cfg.eval.federated_every
        or (cfg.rounds if cfg.eval.personalize_steps else None),
        min_success_fraction=cfg.strategy.min_success_fraction,
        callbacks=list(callbacks or []),
        progress=progress or SilentProgress(),
    )
    return Experiment(cfg, data, model, backend, parts, model.get_state())


def _attack_harness(cfg: Config, data: FederatedData) -> tuple[FederatedData, UpdateAttack | None]:
    """Malicious clients: poisoned labels (a relabelled copy of the data) or updates."""
    kind = cfg.attack.kind
    if kind == "none":
        return data, None
    malicious = choose_malicious(len(data.clients), cfg.attack.fraction, cfg.attack.seed)
    if kind != "label-flip":
        attack = UpdateAttack(frozenset(malicious), kind.replace("-", "_"), cfg.attack.strength)  # type: ignore[arg-type]
        return data, attack
    labels = data.dataset.labels.copy()
    k = data.dataset.num_classes
    for cid in malicious:
        idx = data.clients[cid].train
        labels[idx] = k - 1 - labels[idx]
    flipped: TextDataset = dataclasses.replace(data.dataset, labels=labels)
    return dataclasses.replace(data, dataset=flipped), None


def run(
    cfg: Config,
    run_dir: Path,
    resume: bool = False,
    callbacks: list[Callback] | None = None,
    progress: Progress | None = None,
) -> State:
    """Run (or resume) an experiment in `run_dir`; returns the final global state.

    Args:
        cfg: the config (on resume: the stored config, possibly with overrides applied).
        run_dir: where metrics, checkpoints and the config go.
        resume: continue from the last checkpoint in `run_dir`.
        callbacks: extra callbacks after the metrics log (e.g. TensorBoard).
        progress: progress display.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(run_dir)
    exp = build(cfg, run_dir, [log, *(callbacks or [])], progress)
    if not resume and log.path.exists():
        log.path.unlink()
    atomic_write_bytes(run_dir / "config.json", json.dumps(cfg.model_dump(), indent=2).encode())
    if cfg.mode != "federated":
        return _run_baseline(exp, log, run_dir)
    state = exp.parts.strategy.initialize(exp.initial_state)
    start = 0
    if resume:
        ckpt = load_checkpoint(run_dir)
        if ckpt.global_state.keys() != state.keys():
            raise CheckpointError(f"checkpoint in {run_dir} does not match the model's state")
        client = {
            k.removeprefix(CLIENT_PREFIX): v
            for k, v in ckpt.strategy_state.items()
            if k.startswith(CLIENT_PREFIX)
        }
        strategy_state = {
            k: v for k, v in ckpt.strategy_state.items() if not k.startswith(CLIENT_PREFIX)
        }
        exp.parts.strategy.load_state_dict(strategy_state)
        exp.backend.load_state_dict(client)
        state, start = ckpt.global_state, ckpt.server_round
        log.restore(start, ckpt.meta.get("record"))
    tensorboard = None
    if cfg.logging.tensorboard:
        from fedfm.report.tensorboard import TensorBoardCallback

        tensorboard = TensorBoardCallback(run_dir / "tensorboard")
        exp.parts.callbacks.append(tensorboard)
    t = time.perf_counter()
    try:
        final = run_rounds(exp.parts, state, start)
    finally:
        if tensorboard is not None:
            tensorboard.close()
    summary = _summary(exp, final, log.records())
    summary["seconds_rounds_this_process"] = time.perf_counter() - t
    atomic_write_bytes(run_dir / "summary.json", json.dumps(summary, indent=1).encode())
    exp.parts.backend.close()
    return final


def _run_baseline(exp: Experiment, log: MetricsLog, run_dir: Path) -> State:
    from fedfm.baselines import run_centralised, run_local_only

    if exp.cfg.mode == "centralised":
        run_centralised(exp, log)
        extra: dict[str, Any] = {}
    else:
        extra = run_local_only(exp, log)
    summary = {**_summary(exp, exp.model.get_state(), log.records()), **extra}
    summary["mode"] = exp.cfg.mode
    atomic_write_bytes(run_dir / "summary.json", json.dumps(summary, indent=1).encode())
    return exp.model.get_state()


def _summary(exp: Experiment, final: State, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Final figures: last central accuracy, totals, and the personalisation baseline."""
    cfg = exp.cfg
    last = records[-1] if records else {}
    summary: dict[str, Any] = {
        "final_accuracy": last.get("accuracy"),
        "final_loss": last.get("loss"),
        "rounds": last.get("round"),
        "bytes_up_total": sum(r.get("bytes_up", 0) for r in records),
        "bytes_down_total": sum(r.get("bytes_down", 0) for r in records),
    }
    if cfg.eval.personalize_steps > 0 and cfg.mode == "federated":
        per_client = exp.backend.personalize_clients(
            final, exp.data.client_ids, cfg.eval.personalize_steps, cfg.rounds + 1
        )
        summary["personalized_accuracy"] = {
            str(c): m["accuracy"] for c, m in per_client.items() if m["num_examples"] > 0
        }
    return summary


def stored_config(run_dir: Path, overrides: list[str] | None = None) -> Config:
    """The config a run was started with, plus `key=value` overrides (for resume)."""
    path = run_dir / "config.json"
    if not path.exists():
        raise CheckpointError(f"nothing to resume in {run_dir}: no config.json")
    raw = json.loads(path.read_text())
    for item in overrides or []:
        apply_override(raw, item)
    return config_from_dict(raw)
