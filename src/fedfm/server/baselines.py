"""The baselines to beat, from the same config, data split and budget.

- `centralised`: the clients' training data pooled on one machine; the same number of
  examples processed as the federated run (rounds x clients per round x local epochs x mean
  client size, capped by clients per round x `client.max_steps` steps), split into as many
  "rounds" for comparable curves, one continuing optimiser.
- `local-only`: each client trains alone from the same initial state, for the local epochs
  it would run in the federated job in expectation (rounds x epochs x sampling share, at
  least one; `client.max_steps` scaled the same way), and is evaluated on its own local
  test split and (`eval.local_only_held_out`) on the central held-out split the federated
  model is scored on, the usual FL comparison (FedIT, OpenFedLLM). It drives the same
  `ClientRuntime` as a federated run (fit, then evaluate its own model).

Both write `RoundRecord`s like a federated run (bytes are 0: nothing travels).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from fedfm.build import Built
from fedfm.client.train import local_train, make_optimizer
from fedfm.messages import EvalTask, FitTask, TrainOverrides
from fedfm.records import MetricsLog, RoundRecord
from fedfm.state import State, add
from fedfm.strategies.base import ClientSampler

CENTRAL_SALT = 0xCE  # the centralised baseline draws from (seed, round, salt)
HELD_OUT = "held_out_"  # local-only: a client's own model on the central test split


def run_centralised(built: Built, log: MetricsLog) -> State:
    """Train on the pooled client data with the federated run's budget; log per round."""
    cfg, data, model, task = built.cfg, built.data, built.model, built.task
    pool = np.sort(np.concatenate([c.train for c in data.clients.values()]))
    per_round = _clients_per_round(built) * cfg.client.epochs * len(pool) / len(data.clients)
    steps = max(1, math.ceil(per_round / cfg.client.batch_size))
    if cfg.client.max_steps is not None:  # clients stop at max_steps: so does the pool
        steps = min(steps, _clients_per_round(built) * cfg.client.max_steps)
    model.set_state(built.initial_state)
    c = cfg.client
    opt = make_optimizer(list(model.params.values()), c.optimizer, c.lr, c.weight_decay, c.momentum)
    if cfg.eval.initial:  # round 0: the starting point, as in a federated run
        start = built.central_eval(built.initial_state)
        start.pop("num_examples", None)
        log.on_round_end(RoundRecord(round=0, central=dict(start)))
        model.set_state(built.initial_state)
    for server_round in range(1, cfg.rounds + 1):
        t = time.perf_counter()
        local = local_train(
            model.module,
            model.params,
            lambda rng: task.batches(data.examples, pool, c.batch_size, rng),
            task.loss,
            opt,
            epochs=10**6,
            max_steps=steps,
            seeds=[cfg.seed, server_round, CENTRAL_SALT],
            grad_clip=c.grad_clip,
        )
        fit = time.perf_counter() - t
        t = time.perf_counter()
        central = built.central_eval(model.get_state())
        central.pop("num_examples", None)
        record = RoundRecord(
            round=server_round,
            central=dict(central),
            train_loss=local.train_loss,
            num_clients=1,
            seconds_fit=fit,
            seconds_eval=time.perf_counter() - t,
            seconds=fit,
        )
        log.on_round_end(record)
    return model.get_state()


def run_local_only(built: Built, log: MetricsLog) -> tuple[State, dict[str, Any]]:
    """Train every client alone; log one record with each client's local test metrics."""
    cfg, data, runtime = built.cfg, built.data, built.runtime
    share = _clients_per_round(built) / len(data.clients)
    epochs = max(1, round(cfg.rounds * cfg.client.epochs * share))
    # the same step budget as a client's expected share of the federated rounds
    steps = cfg.client.max_steps and max(1, round(cfg.rounds * cfg.client.max_steps * share))
    record = RoundRecord(round=cfg.rounds, num_clients=len(data.clients), clients=data.client_ids)
    held_out = cfg.eval.local_only_held_out and len(data.central_test) > 0
    losses = []
    t = time.perf_counter()
    for cid in data.client_ids:
        reply = runtime.fit(
            FitTask(cid, 0, TrainOverrides(epochs=epochs, max_steps=steps)), built.initial_state
        )
        if not reply.ok:
            record.failures.append(f"client {cid}: {reply.failure}")
            continue
        losses.append(reply.metrics["train_loss"])
        ctx = built.uplink.context(cid, 0)
        own = add(built.initial_state, built.uplink.decode(reply.payload, built.initial_state, ctx))
        evaluated = runtime.evaluate(EvalTask(cid, 0), own)
        if evaluated.ok and evaluated.num_examples > 0:
            for metric, value in evaluated.metrics.items():
                record.client_metrics.setdefault(metric, {})[str(cid)] = value
            record.client_num_examples[str(cid)] = evaluated.num_examples
        if held_out:
            for name, value in built.central_eval(own).items():
                if name != "num_examples":
                    record.client_metrics.setdefault(HELD_OUT + name, {})[str(cid)] = value
    metric = built.task.primary_metric
    values = np.array(list(record.client_metrics.get(metric, {}).values()), dtype=float)
    record.num_failures = len(record.failures)
    record.central = {metric: float(np.nanmean(values)) if values.size else None, "loss": None}
    held = held_out_means(record.client_metrics)
    record.central.update({HELD_OUT + name: value for name, value in held.items()})
    record.train_loss = float(np.mean(losses))
    record.seconds_fit = record.seconds = time.perf_counter() - t
    log.on_round_end(record)
    return built.initial_state, {
        "local_only_epochs": epochs,
        **_spread("local_only", values),
        "accuracy_is": "mean local-test accuracy of the clients' own models",
        **_held_out_summary(record.client_metrics.get(HELD_OUT + metric, {})),
    }


def held_out_means(client_metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """Metric -> mean over clients of their own models' central held-out values (NaN-free)."""
    out = {}
    for key, per_client in client_metrics.items():
        if key.startswith(HELD_OUT) and per_client:
            out[key.removeprefix(HELD_OUT)] = float(np.nanmean(list(per_client.values())))
    return out


def _held_out_summary(per_client: dict[str, float]) -> dict[str, Any]:
    if not per_client:
        return {}
    return _spread("local_only_held_out", np.array(list(per_client.values()), dtype=float))


def _spread(prefix: str, values: np.ndarray) -> dict[str, float | None]:
    """Mean, std, min and max over clients, skipping a client without a value (NaN: its
    split held no example the metric scores, e.g. no classification answer); None if none."""
    values = values[np.isfinite(values)]
    if not values.size:
        return {f"{prefix}_{k}": None for k in ("mean", "std", "min", "max")}
    return {
        f"{prefix}_mean": float(values.mean()),
        f"{prefix}_std": float(values.std()),
        f"{prefix}_min": float(values.min()),
        f"{prefix}_max": float(values.max()),
    }


def _clients_per_round(built: Built) -> int:
    s = built.cfg.strategy
    sampler = ClientSampler(s.clients_per_round, s.fraction, s.min_clients)
    return sampler.num_to_sample(len(built.data.clients))
