"""Running a built job: a fresh run, a resumed run, or a baseline, inside `with backend:`.

A fresh run first removes any earlier run's checkpoint from the directory (the commit file
first), so nothing stale can ever be resumed. A resumed run checks that the checkpoint was
written by the same config and seed (only `rounds`, `comm`, `eval`, `logging` and `backend`
may differ) and that its tensors have the model's names, shapes and dtypes. A resumed run
counts the bytes of the rounds before the resume against `comm.max_bytes`; a run that stops
before a round (the communication budget, a stage's budget) says why in `summary.json`
(`stopped`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch

from fedfm.build import Built, build, build_backend
from fedfm.checkpoint import atomic_write_bytes, load_checkpoint, remove_checkpoint, save_checkpoint
from fedfm.client.hooks import ClientHook
from fedfm.config import Config, apply_override, config_from_dict, with_defaults
from fedfm.errors import CheckpointError, TransportError
from fedfm.messages import EvalReply, EvalTask
from fedfm.records import MetricsLog, RoundRecord, clean_record
from fedfm.rundir import TENSORBOARD, config_path, data_card_path, metrics_path, summary_path
from fedfm.server.loop import Callback, LoopParts, Progress, SilentProgress, run_rounds
from fedfm.state import State, shaped_like

# Top-level config keys a resumed run may change: they do not alter what was computed.
RESUMABLE_KEYS = ("rounds", "comm", "eval", "logging", "backend")


def run(
    cfg: Config,
    run_dir: Path,
    resume: bool = False,
    callbacks: list[Callback] | None = None,
    progress: Progress | None = None,
    extra_hooks: Sequence[ClientHook] = (),
) -> State:
    """Run (or resume) a job in `run_dir`; returns the final global state.

    Args:
        cfg: the config (on resume: the stored config, possibly with overrides applied).
        run_dir: where metrics, checkpoints and the config go.
        resume: continue from the last checkpoint in `run_dir`.
        callbacks: extra callbacks after the metrics log (e.g. TensorBoard).
        progress: progress display.
        extra_hooks: further client hooks (simulation: fault injection, instrumentation).

    Raises:
        CheckpointError: on resume, no checkpoint, a malformed one, or one written by a
            different config, seed or model.
    """
    if cfg.backend.threads is not None:
        torch.set_num_threads(cfg.backend.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        ckpt = load_checkpoint(run_dir)
        check_resumable(cfg, ckpt.meta)
    else:
        remove_checkpoint(run_dir)
        metrics_path(run_dir).unlink(missing_ok=True)
        summary_path(run_dir).unlink(missing_ok=True)
    built = build(cfg, federated=cfg.mode == "federated", extra_hooks=extra_hooks)
    atomic_write_bytes(config_path(run_dir), json.dumps(cfg.model_dump(), indent=2).encode())
    _write_data_card(built, run_dir)
    log = MetricsLog(run_dir)
    if cfg.mode != "federated":
        return _run_baseline(built, log, run_dir)
    state = built.strategy.initialize(built.initial_state)
    start = 0
    if resume:
        _check_like(ckpt.global_state, state, run_dir)
        built.strategy.load_state_dict(ckpt.section("strategy"))
        built.store.load_state_dict(ckpt.section("clients"))
        built.uplink.load_state_dict(ckpt.section("uplink"))
        built.downlink.load_state_dict(ckpt.section("downlink"))
        state, start = ckpt.global_state, ckpt.server_round
        log.restore(start, ckpt.meta.get("record"))
    extra = list(callbacks or [])
    tensorboard = None
    if cfg.logging.tensorboard:
        from fedfm.report.tensorboard import TensorBoardCallback

        tensorboard = TensorBoardCallback(run_dir / TENSORBOARD)
        extra.append(tensorboard)
    t = time.perf_counter()
    try:
        with build_backend(cfg, built.runtime) as backend:
            parts = loop_parts(built, backend, run_dir, [log, *extra], progress)
            parts.bytes_spent = sum(
                (r.get("bytes_up") or 0) + (r.get("bytes_down") or 0) for r in log.records()
            )
            final = run_rounds(parts, state, start)
            summary = _summary(built, final, log.records(), parts)
    finally:
        if tensorboard is not None:
            tensorboard.close()
    summary["seconds_rounds_this_process"] = time.perf_counter() - t
    _write_summary(run_dir, summary)
    return final


def _zero_shot(built: Built) -> Callable[[], dict[str, float]] | None:
    """Round 0's zero-shot figures (`eval.zero_shot_shots`), computed only if round 0 runs."""
    shots = built.cfg.eval.zero_shot_shots
    if shots == 0:
        return None
    from fedfm.tasks.text_classification import TextClassification
    from fedfm.zero_shot import prototype_zero_shot

    task = cast("TextClassification", built.task)
    return lambda: prototype_zero_shot(task, built.data, shots, built.cfg.seed)


def loop_parts(
    built: Built,
    backend: Any,
    run_dir: Path,
    callbacks: list[Callback],
    progress: Progress | None,
) -> LoopParts:
    """The round loop's parts for a built job: checkpoints go to `run_dir`."""
    cfg = built.cfg

    def checkpoint(server_round: int, state: State, record: RoundRecord) -> None:
        meta = {"config": cfg.model_dump(), "seed": cfg.seed, "record": record.to_json()}
        sections = {
            "global": state,
            "strategy": built.strategy.state_dict(),
            "clients": built.store.state_dict(),
            "uplink": built.uplink.state_dict(),
            "downlink": built.downlink.state_dict(),
        }
        save_checkpoint(run_dir, server_round, sections, meta)

    return LoopParts(
        strategy=built.strategy,
        backend=backend,
        uplink=built.uplink,
        downlink=built.downlink,
        client_ids=built.data.client_ids,
        central_eval=built.central_eval,
        checkpoint=checkpoint,
        seed=cfg.seed,
        num_rounds=cfg.rounds,
        eval_every=cfg.eval.every,
        federated_eval_every=cfg.eval.federated_every,
        min_success_fraction=cfg.strategy.min_success_fraction,
        max_num_examples=cfg.strategy.max_num_examples,
        evaluate_initial=cfg.eval.initial,
        initial_extra=_zero_shot(built),
        primary_metric=built.task.primary_metric,
        callbacks=callbacks,
        progress=progress or SilentProgress(),
        max_bytes=cfg.comm.max_bytes,
    )


def _write_data_card(built: Built, run_dir: Path) -> None:
    """`data_card.json` for a task that describes its data (sources, templates, counts)."""
    describe = getattr(built.task, "data_card", None)
    if callable(describe):
        card = describe(built.data)
        atomic_write_bytes(data_card_path(run_dir), json.dumps(card, indent=1).encode())


def check_resumable(cfg: Config, meta: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint written by another config or seed.

    Raises:
        CheckpointError: one line naming the first differing key.
    """
    stored = meta.get("config")
    if not isinstance(stored, dict) or meta.get("seed") != cfg.seed:
        raise CheckpointError(
            f"--resume: the checkpoint was written with seed {meta.get('seed')!r}, "
            f"this config has seed {cfg.seed}"
        )
    now = cfg.model_dump(mode="json")
    stored = with_defaults(stored)  # settings added since the checkpoint held their defaults
    for key in sorted(set(stored) | set(now)):
        if key in RESUMABLE_KEYS or stored.get(key) == now.get(key):
            continue
        raise CheckpointError(
            f"--resume: {key} differs from the checkpoint's ({stored.get(key)!r} vs "
            f"{now.get(key)!r}); only {', '.join(RESUMABLE_KEYS)} may change on resume"
        )


def _check_like(saved: State, model: State, run_dir: Path) -> None:
    try:
        shaped_like(saved, model, who=f"checkpoint in {run_dir}: global state")
    except TransportError as exc:
        raise CheckpointError(str(exc)) from None


def _run_baseline(built: Built, log: MetricsLog, run_dir: Path) -> State:
    from fedfm.server.baselines import run_centralised, run_local_only

    cfg = built.cfg
    if cfg.mode == "centralised":
        final = run_centralised(built, log)
        extra: dict[str, Any] = {}
    else:
        final, extra = run_local_only(built, log)
    metric = built.task.primary_metric
    summary = {**_final_figures(log.records(), metric), **extra, "mode": cfg.mode}
    if built.synthetic is not None:
        summary["synthetic"] = built.synthetic
    _write_summary(run_dir, summary)
    return final


def _final_figures(records: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    last = records[-1] if records else {}
    return {
        "primary_metric": metric,
        f"final_{metric}": last.get(metric),
        "final_loss": last.get("loss"),
        "rounds": last.get("round"),
        "bytes_up_total": sum(r.get("bytes_up", 0) for r in records),
        "bytes_down_total": sum(r.get("bytes_down", 0) for r in records),
    }


def _summary(
    built: Built, final: State, records: list[dict[str, Any]], parts: LoopParts
) -> dict[str, Any]:
    """Final figures: last central metrics, totals, and the personalisation baseline."""
    cfg = built.cfg
    metric = built.task.primary_metric
    summary = _final_figures(records, metric)
    if parts.stopped is not None:
        summary["stopped"] = parts.stopped
    if built.synthetic is not None:  # what the warm-up and the fill-in added
        summary["synthetic"] = built.synthetic
    steps = cfg.eval.personalize_steps
    if steps > 0:  # the personalisation baseline, and only what it needs
        t = time.perf_counter()
        tasks = [EvalTask(c, cfg.rounds + 1, personalize_steps=steps) for c in parts.client_ids]
        summary[f"personalized_{metric}"] = _client_metric(
            parts.backend.evaluate(final, tasks), metric
        )
        if f"client_{metric}" not in (records[-1] if records else {}):
            # the global model's per-client accuracy beside it, unless the last round has it
            tasks = [EvalTask(c, cfg.rounds + 1) for c in parts.client_ids]
            summary[f"final_client_{metric}"] = _client_metric(
                parts.backend.evaluate(final, tasks), metric
            )
        summary["seconds_personalize"] = time.perf_counter() - t
    return summary


def _client_metric(replies: list[EvalReply], metric: str) -> dict[str, float]:
    return {
        str(r.client_id): r.metrics[metric]
        for r in replies
        if r.ok and r.num_examples > 0 and metric in r.metrics
    }


def stored_config(run_dir: Path, overrides: list[str] | None = None) -> Config:
    """The config a run was started with, plus `key=value` overrides (for resume)."""
    path = config_path(run_dir)
    if not path.exists():
        raise CheckpointError(f"nothing to resume in {run_dir}: no config.json")
    raw = json.loads(path.read_text())
    for item in overrides or []:
        apply_override(raw, item)
    return config_from_dict(raw)


def _write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """`summary.json`, strict JSON (a non-finite figure is written as null)."""
    text = json.dumps(clean_record(summary), indent=1, allow_nan=False)
    atomic_write_bytes(summary_path(run_dir), text.encode())
