"""The client side of SCAFFOLD: control variates kept per client, and their update.

Option II of the paper, c_i+ = c_i - c + (x - y) / (K * lr), assumes plain SGD steps. With
AdamW the parameter displacement is not on the gradient's scale, so there fedfm uses option
I's quantity, the client's mean minibatch gradient, taken along the local trajectory (the
gradients the client computed anyway) instead of in an extra pass at x.
"""

from __future__ import annotations

from typing import Any

import torch

from fedfm.state import State


def option_two_control(
    client_control: State, server_control: State, start: State, end: State, steps: int, lr: float
) -> State:
    """c_i+ = c_i - c + (x - y) / (K * lr) (Karimireddy et al. 2020, eq. 4, option II)."""
    scale = 1.0 / (max(steps, 1) * lr)
    return {
        k: client_control[k] - server_control[k] + (start[k] - end[k]) * scale
        for k in client_control
    }


class ClientStore:
    """Per-client persistent tensors (SCAFFOLD's c_i), checkpointable.

    Only clients that have trained hold an entry; a missing one reads as zeros.
    """

    def __init__(self) -> None:
        self.states: dict[int, State] = {}

    def get(self, client_id: int, like: State) -> State:
        """The client's stored state, or zeros shaped like `like`."""
        stored = self.states.get(client_id)
        return stored if stored is not None else {k: torch.zeros_like(v) for k, v in like.items()}

    def put(self, client_id: int, state: State) -> None:
        """Store (replace) the client's state."""
        self.states[client_id] = state

    def state_dict(self) -> dict[str, Any]:
        """Flattened as `<client_id>/<name>` tensors."""
        return {f"{c}/{k}": v for c, s in self.states.items() for k, v in s.items()}

    def load_state_dict(self, flat: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.states = {}
        for key, value in flat.items():
            client, _, name = key.partition("/")
            self.states.setdefault(int(client), {})[name] = value
