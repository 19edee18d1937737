"""SCAFFOLD: stochastic controlled averaging (Karimireddy et al. 2020,
https://arxiv.org/abs/1910.06378): the server half `Scaffold` and the client half
`ControlVariates`.

Server: sends its control variate c with the global state; after the round,
c <- c + (|S| / N) * mean(dc_i) (the paper's Algorithm 1, line 17) and
x <- x + server_lr * (mean of the updates). Deviation from the paper: the model step takes
the *example-weighted* mean of the updates (as FedAvg does), where Algorithm 1 line 16 takes
the unweighted mean (1/|S|) Σ Δy_i.

Client: keeps c_i in its `ClientStateStore`, adds c - c_i to every gradient, and computes
c_i+. Option II of the paper, c_i+ = c_i - c + (x - y) / (K * lr), assumes plain SGD steps;
with AdamW the parameter displacement is not on the gradient's scale, so there the client
uses option I's quantity, its mean minibatch gradient, taken along the local trajectory (the
gradients it computed anyway) instead of in an extra pass at x.

A client adopts its new c_i only once the server has accepted the update that carried dc_i:
it stores c_i+ as pending, and the server tells it, with its next task, the last round whose
update it accepted. Otherwise a dropped update would leave c ≠ mean(c_i) for ever.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fedfm.client.hooks import FitContext, HookBase
from fedfm.messages import FitTask
from fedfm.state import State, apply_update, subtract
from fedfm.strategies.base import Aggregate, ClientSampler, StrategyBase

CONTROL = "scaffold.control"  # extra sent down: the server control variate c
ACCEPTED = "scaffold.accepted"  # extra sent down: {"round": [r]}, the client's last accepted round
CONTROL_DELTA = "scaffold.control_delta"  # extra sent up: dc_i = c_i+ - c_i
_PENDING = "scaffold.pending"  # client store: c_i+ awaiting acceptance
_PENDING_ROUND = "scaffold.pending_round"  # client store: {"round": [r]} of that update


def server_control_step(
    control: State, mean_delta: State, num_updates: int, num_clients: int
) -> State:
    """c + (|S| / N) * mean_i(dc_i): the server control variate after a round."""
    share = num_updates / num_clients
    return {k: v + share * mean_delta[k] for k, v in control.items()}


def option_two_control(
    client_control: State, server_control: State, start: State, end: State, steps: int, lr: float
) -> State:
    """c_i+ = c_i - c + (x - y) / (K * lr) (Karimireddy et al. 2020, eq. 4, option II)."""
    scale = 1.0 / (max(steps, 1) * lr)
    return {
        k: client_control[k] - server_control[k] + (start[k] - end[k]) * scale
        for k in client_control
    }


def _round_tensor(server_round: int) -> State:
    return {"round": torch.tensor([server_round], dtype=torch.int64)}


class Scaffold(StrategyBase):
    """SCAFFOLD with a server learning rate.

    Args:
        sampler: who trains each round.
        num_clients: N, the number of clients in the federation.
        server_lr: the global step size η_g on the averaged update.
    """

    name = "scaffold"
    reply_extras = frozenset({CONTROL_DELTA})

    def __init__(self, sampler: ClientSampler, num_clients: int, server_lr: float = 1.0) -> None:
        super().__init__(sampler, server_lr)
        self.num_clients = num_clients
        self.control_: State | None = None
        self.accepted_: dict[int, int] = {}  # client -> last round whose update was accepted

    def initialize(self, global_state: State) -> State:
        """Start the server control variate at zero (keeps a restored one)."""
        if self.control_ is None:
            self.control_ = {k: torch.zeros_like(v) for k, v in global_state.items()}
        return global_state

    def configure(
        self, server_round: int, available: Sequence[int], rng: np.random.Generator
    ) -> list[FitTask]:
        """Sample clients; each receives c and its last accepted round with the global state."""
        if self.control_ is None:
            raise RuntimeError("call Scaffold.initialize(global_state) before the first round")
        control = self.control_
        return [
            FitTask(
                c,
                server_round,
                extras={CONTROL: control, ACCEPTED: _round_tensor(self.accepted_.get(c, 0))},
            )
            for c in self.sampler.sample(available, rng)
        ]

    def apply(self, server_round: int, global_state: State, aggregate: Aggregate) -> State:
        """Step the control with the mean control delta and the model with the mean update."""
        assert self.control_ is not None
        self.control_ = server_control_step(
            self.control_, aggregate.extras[CONTROL_DELTA], aggregate.num_clients, self.num_clients
        )
        for cid in aggregate.client_ids:
            self.accepted_[cid] = server_round
        return apply_update(global_state, aggregate.update, self.server_lr)

    def state_dict(self) -> dict[str, Any]:
        """c as `c/<name>` tensors, and the accepted rounds as `accepted` (JSON)."""
        out: dict[str, Any] = {f"c/{k}": v for k, v in (self.control_ or {}).items()}
        out["accepted"] = {str(c): r for c, r in sorted(self.accepted_.items())}
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        control = {k[2:]: v for k, v in state.items() if k.startswith("c/")}
        self.control_ = control or None
        self.accepted_ = {int(c): int(r) for c, r in dict(state.get("accepted", {})).items()}


class ControlVariates(HookBase):
    """SCAFFOLD's client half: gradient correction c - c_i and the control update.

    Args:
        sgd: the client optimiser is plain SGD (option II); otherwise the mean gradient.
    """

    def __init__(self, sgd: bool) -> None:
        self.sgd = sgd
        # One fit at a time per runtime: the values between before_ and after_train.
        self._control: State = {}
        self._client_control: State = {}
        self._grad_sum: State | None = None

    def before_train(self, ctx: FitContext) -> None:
        """Adopt c_i+ if the server accepted it; add c - c_i to every gradient."""
        control = ctx.task.extras[CONTROL]
        accepted = int(ctx.task.extras[ACCEPTED]["round"][0])
        cid = ctx.client_id
        pending = ctx.store.get(cid, _PENDING)
        if pending is not None:
            pending_round = ctx.store.get(cid, _PENDING_ROUND)
            if pending_round is not None and int(pending_round["round"][0]) == accepted:
                ctx.store.put(cid, CONTROL, pending)
            ctx.store.delete(cid, _PENDING)
            ctx.store.delete(cid, _PENDING_ROUND)
        stored = ctx.store.get(cid, CONTROL)
        client_control = (
            stored if stored is not None else {k: torch.zeros_like(v) for k, v in control.items()}
        )
        correction = subtract(control, client_control)
        grad_sum = None if self.sgd else {k: torch.zeros_like(v) for k, v in control.items()}
        self._control, self._client_control, self._grad_sum = control, client_control, grad_sum

        def correct(params: dict[str, torch.nn.Parameter]) -> None:
            with torch.no_grad():
                for name, param in params.items():
                    if param.grad is None:
                        param.grad = torch.zeros_like(param)
                    if grad_sum is not None:
                        grad_sum[name].add_(param.grad)
                    param.grad.add_(correction[name])

        ctx.grad_hooks.append(correct)

    def after_train(self, ctx: FitContext) -> None:
        """c_i+ (pending until accepted) and the extra dc_i = c_i+ - c_i."""
        if self._grad_sum is not None:
            new_control = {k: g / max(ctx.steps, 1) for k, g in self._grad_sum.items()}
        else:
            new_control = option_two_control(
                self._client_control, self._control, ctx.start, ctx.end, ctx.steps, ctx.lr
            )
        ctx.extras[CONTROL_DELTA] = subtract(new_control, self._client_control)
        ctx.store.put(ctx.client_id, _PENDING, new_control)
        ctx.store.put(ctx.client_id, _PENDING_ROUND, _round_tensor(ctx.task.server_round))
