"""The baselines to beat, from the same config, data split and budget.

- `centralised`: the clients' training data pooled on one machine; the same number of
  examples processed as the federated run (rounds x clients per round x local epochs x mean
  client size), split into as many "rounds" for comparable curves, one continuing optimiser.
- `local-only`: each client trains alone from the same initial state, for the local epochs
  it would run in the federated job in expectation (rounds x epochs x sampling share, at
  least one), and is evaluated on its own local test split.

Both write `metrics.jsonl` in the format of a federated run (bytes are 0: nothing travels).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from fedfm.client.evaluate import evaluate
from fedfm.client.train import local_train, make_optimizer
from fedfm.metrics import MetricsLog, clean_record
from fedfm.strategies.base import ClientSampler

if TYPE_CHECKING:
    from fedfm.experiment import Experiment


def run_centralised(exp: Experiment, log: MetricsLog) -> None:
    """Train on the pooled client data with the federated run's budget; log per round."""
    cfg, data, model = exp.cfg, exp.data, exp.model
    pool = np.sort(np.concatenate([c.train for c in data.clients.values()]))
    per_round = _clients_per_round(exp) * cfg.client.epochs * len(pool) / len(data.clients)
    steps = max(1, math.ceil(per_round / cfg.client.batch_size))
    model.set_state(exp.initial_state)
    opt = make_optimizer(list(model.params.values()), cfg.client, cfg.client.lr)
    for server_round in range(1, cfg.rounds + 1):
        t = time.perf_counter()
        local = local_train(
            model,
            data.dataset,
            pool,
            cfg.client,
            {"max_steps": steps, "epochs": 10**6},
            [cfg.seed, server_round, 0xCE],
            optimizer=opt,
        )
        fit = time.perf_counter() - t
        t = time.perf_counter()
        central = evaluate(model, data.dataset, data.central_test, cfg.eval.batch_size)
        record = _record(server_round, central, local.metrics["train_loss"], fit)
        record["seconds_eval"] = time.perf_counter() - t
        log.on_round_end(record)


def run_local_only(exp: Experiment, log: MetricsLog) -> dict[str, Any]:
    """Train every client alone; log one record with each client's local test accuracy."""
    cfg, data, model = exp.cfg, exp.data, exp.model
    share = _clients_per_round(exp) / len(data.clients)
    epochs = max(1, round(cfg.rounds * cfg.client.epochs * share))
    accuracy: dict[str, float] = {}
    sizes: dict[str, int] = {}
    losses = []
    t = time.perf_counter()
    for cid in data.client_ids:
        client = data.clients[cid]
        model.set_state(exp.initial_state)
        local = local_train(
            model,
            data.dataset,
            client.train,
            cfg.client,
            {"epochs": epochs},
            [cfg.seed, 0, cid],
        )
        losses.append(local.metrics["train_loss"])
        if len(client.test):
            m = evaluate(model, data.dataset, client.test, cfg.eval.batch_size)
            accuracy[str(cid)] = m["accuracy"]
            sizes[str(cid)] = int(m["num_examples"])
    values = np.array(list(accuracy.values()))
    record = {
        "round": cfg.rounds,
        "accuracy": float(values.mean()),
        "loss": None,
        "train_loss": float(np.mean(losses)),
        "bytes_up": 0,
        "bytes_down": 0,
        "num_clients": len(data.clients),
        "num_failures": 0,
        "clients": data.client_ids,
        "seconds_fit": time.perf_counter() - t,
        "seconds_aggregate": 0.0,
        "seconds_eval": 0.0,
        "seconds_checkpoint": 0.0,
        "seconds": time.perf_counter() - t,
        "client_accuracy": accuracy,
        "client_num_examples": sizes,
    }
    log.on_round_end(clean_record(record))
    return {
        "local_only_epochs": epochs,
        "local_only_mean": float(values.mean()),
        "local_only_std": float(values.std()),
        "local_only_min": float(values.min()),
        "local_only_max": float(values.max()),
        "accuracy_is": "mean local-test accuracy of the clients' own models",
    }


def _clients_per_round(exp: Experiment) -> int:
    s = exp.cfg.strategy
    sampler = ClientSampler(s.clients_per_round, s.fraction, s.min_clients)
    return sampler.num_to_sample(len(exp.data.clients))


def _record(
    server_round: int, central: dict[str, float], train_loss: float, fit: float
) -> dict[str, Any]:
    return clean_record(
        {
            "round": server_round,
            "accuracy": central["accuracy"],
            "loss": central["loss"],
            "train_loss": train_loss,
            "bytes_up": 0,
            "bytes_down": 0,
            "num_clients": 1,
            "num_failures": 0,
            "clients": [],
            "seconds_fit": fit,
            "seconds_aggregate": 0.0,
            "seconds_eval": 0.0,
            "seconds_checkpoint": 0.0,
            "seconds": fit,
        }
    )
