"""In-process backend: one model in memory, each client's state swapped in and out.

Memory does not grow with the number of clients: a client's work is load state ->
train -> diff -> encode, and only the encoded bytes are kept.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence

from fedfm.backends.base import OnResult
from fedfm.client.evaluate import evaluate
from fedfm.client.train import local_train
from fedfm.config import ClientConfig
from fedfm.core import ClientUpdate, FitIns
from fedfm.data.federated import FederatedData
from fedfm.models.trainable import TrainableModel
from fedfm.pipeline import Pipeline
from fedfm.state import State, subtract


class InProcessBackend:
    """Simulates every client in this process on one shared model.

    Args:
        model: the model whose trainable state is swapped per client.
        data: the federated data (each client's train/test indices).
        client_cfg: local training settings.
        pipeline: the update pipeline (encode on the client side).
        seed: the run's seed; client randomness is derived from (seed, round, client).
        eval_batch_size: batch size for local evaluation.
    """

    def __init__(
        self,
        model: TrainableModel,
        data: FederatedData,
        client_cfg: ClientConfig,
        pipeline: Pipeline,
        seed: int,
        eval_batch_size: int = 256,
    ) -> None:
        self.model = model
        self.data = data
        self.client_cfg = client_cfg
        self.pipeline = pipeline
        self.seed = seed
        self.eval_batch_size = eval_batch_size

    def fit(
        self,
        global_state: State,
        instructions: Sequence[FitIns],
        on_result: OnResult | None = None,
    ) -> list[ClientUpdate]:
        """Train the instructed clients one after another."""
        results = []
        for ins in instructions:
            result = self._fit_one(global_state, ins)
            results.append(result)
            if on_result is not None:
                on_result(result)
        return results

    def _fit_one(self, global_state: State, ins: FitIns) -> ClientUpdate:
        client = self.data.clients.get(ins.client_id)
        if client is None:
            return ClientUpdate(ins.client_id, 0, error=f"unknown client {ins.client_id}")
        start = ins.state if ins.state is not None else global_state
        try:
            self.model.set_state(start)
            metrics = local_train(
                self.model,
                self.data.dataset,
                client.train,
                self.client_cfg,
                ins.config,
                [self.seed, ins.server_round, ins.client_id],
            )
            update = subtract(self.model.get_state(), start)
            payload = self.pipeline.encode(update, ins.client_id, ins.server_round)
        except Exception as exc:  # a failing client is a value, not a dead round
            detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
            return ClientUpdate(ins.client_id, 0, error=detail)
        return ClientUpdate(ins.client_id, len(client.train), payload, metrics=metrics)

    def evaluate_clients(
        self, state: State, client_ids: Sequence[int]
    ) -> dict[int, dict[str, float]]:
        """Evaluate `state` on each client's local test split."""
        self.model.set_state(state)
        return {
            cid: evaluate(
                self.model, self.data.dataset, self.data.clients[cid].test, self.eval_batch_size
            )
            for cid in client_ids
        }

    def personalize_clients(
        self, state: State, client_ids: Sequence[int], steps: int, server_round: int
    ) -> dict[int, dict[str, float]]:
        """Fine-tune `state` for `steps` local steps on each client, then evaluate locally.

        Nothing is sent anywhere: this is the personalisation baseline.
        """
        out = {}
        for cid in client_ids:
            client = self.data.clients[cid]
            self.model.set_state(state)
            local_train(
                self.model,
                self.data.dataset,
                client.train,
                self.client_cfg,
                {"max_steps": steps, "epochs": 10**6},
                [self.seed, server_round, cid, 0xFE],
            )
            out[cid] = evaluate(self.model, self.data.dataset, client.test, self.eval_batch_size)
        return out

    def close(self) -> None:
        """Nothing to release."""
