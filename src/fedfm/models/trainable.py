"""`TrainableModel`: one model in memory whose trainable State is swapped in and out."""

from __future__ import annotations

import torch

from fedfm.state import State


class TrainableModel:
    """Holds a module and handles to its trainable parameters.

    Trainable parameters are found by `requires_grad`, so LoRA, prompts, a head or the full
    model need no special case. `set_state` copies in place: memory does not grow with the
    number of clients that pass through.

    Args:
        module: the (PEFT-wrapped) model.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.params: dict[str, torch.nn.Parameter] = {
            n: p for n, p in module.named_parameters() if p.requires_grad
        }
        if not self.params:
            raise ValueError("the model has no trainable parameters")

    def get_state(self) -> State:
        """A detached copy of the trainable parameters."""
        return {n: p.detach().clone() for n, p in self.params.items()}

    def set_state(self, state: State) -> None:
        """Copy `state` into the trainable parameters (names and shapes must match)."""
        if state.keys() != self.params.keys():
            missing = sorted(set(self.params) - set(state))[:3]
            raise KeyError(f"state does not match the trainable parameters (missing {missing})")
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(state[name])
