"""In-process backend: one model in memory, each client's state swapped in and out.

Memory does not grow with the number of clients: a client's work is load state ->
train -> diff -> encode, and only the encoded bytes are kept (plus, for SCAFFOLD, one
control variate per client, sized like the trainable state).
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedfm.backends.base import OnResult
from fedfm.client.evaluate import evaluate
from fedfm.client.scaffold import ClientStore, option_two_control
from fedfm.client.train import local_train
from fedfm.config import ClientConfig
from fedfm.core import ClientUpdate, FitIns
from fedfm.data.federated import FederatedData
from fedfm.models.trainable import TrainableModel
from fedfm.pipeline import Pipeline
from fedfm.state import State, subtract, to_bytes
from fedfm.strategies.attacks import Attack, poison
from fedfm.strategies.lora_math import frozen_keys, lora_ranks, pad_rank, truncate_rank
from fedfm.strategies.scaffold import CONTROL_DELTA, SERVER_CONTROL


@dataclass(frozen=True)
class UpdateAttack:
    """The attack harness, client side: these clients poison their updates."""

    malicious: frozenset[int]
    kind: Attack
    strength: float


class InProcessBackend:
    """Simulates every client in this process on one shared model.

    Args:
        model: the model whose trainable state is swapped per client.
        data: the federated data (each client's train/test indices).
        client_cfg: local training settings.
        pipeline: the update pipeline (encode on the client side).
        seed: the run's seed; client randomness is derived from (seed, round, client).
        eval_batch_size: batch size for local evaluation.
        attack: poisoned updates for the robustness harness (off when `None`).
    """

    def __init__(
        self,
        model: TrainableModel,
        data: FederatedData,
        client_cfg: ClientConfig,
        pipeline: Pipeline,
        seed: int,
        eval_batch_size: int = 256,
        attack: UpdateAttack | None = None,
    ) -> None:
        self.model = model
        self.data = data
        self.client_cfg = client_cfg
        self.pipeline = pipeline
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.attack = attack
        self.store = ClientStore()
        self.model_rank = _rank(model.get_state(), default=0)

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
        server_control = ins.extra.get(SERVER_CONTROL)
        try:
            # HetLoRA/FlexLoRA send a lower-rank state: train it zero-padded in the
            # max-rank model (padded slots get zero gradients and stay zero).
            rank = _rank(start, default=self.model_rank)
            self.model.set_state(
                pad_rank(start, self.model_rank) if rank < self.model_rank else start
            )
            correction = client_control = None
            if server_control is not None:
                client_control = self.store.get(ins.client_id, server_control)
                correction = subtract(server_control, client_control)
            local = local_train(
                self.model,
                self.data.dataset,
                client.train,
                self.client_cfg,
                ins.config,
                [self.seed, ins.server_round, ins.client_id],
                grad_correction=correction,
                track_mean_grad=server_control is not None and self.client_cfg.optimizer != "sgd",
            )
            end = self.model.get_state()
            if rank < self.model_rank:
                end = truncate_rank(end, rank)
            update = self._maybe_poison(subtract(end, start), ins)
            payload = self.pipeline.encode(update, ins.client_id, ins.server_round)
            extras = {}
            if server_control is not None and client_control is not None:
                if local.mean_grad is not None:
                    new_control = local.mean_grad
                else:
                    steps, lr = (
                        int(local.metrics["steps"]),
                        float(ins.config.get("lr", self.client_cfg.lr)),
                    )
                    new_control = option_two_control(
                        client_control, server_control, start, end, steps, lr
                    )
                extras[CONTROL_DELTA] = to_bytes(subtract(new_control, client_control))
                self.store.put(ins.client_id, new_control)
        except Exception as exc:  # a failing client is a value, not a dead round
            detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
            return ClientUpdate(ins.client_id, 0, error=detail)
        return ClientUpdate(
            ins.client_id, len(client.train), payload, extras=extras, metrics=local.metrics
        )

    def _maybe_poison(self, update: State, ins: FitIns) -> State:
        if self.attack is None or ins.client_id not in self.attack.malicious:
            return update
        gen = torch.Generator().manual_seed(
            self.seed * 1_000_003 + ins.server_round * 1009 + ins.client_id
        )
        return poison(update, self.attack.kind, self.attack.strength, gen)

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

    def state_dict(self) -> dict[str, Any]:
        """Client-side persistent state (SCAFFOLD control variates)."""
        return self.store.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.store.load_state_dict(state)

    def close(self) -> None:
        """Nothing to release."""


def _rank(state: State, default: int) -> int:
    """The LoRA rank of a state; `default` when no A factor travels (FFA-LoRA, no LoRA)."""
    if not frozen_keys(state):
        return default
    return min(lora_ranks(state).values())
