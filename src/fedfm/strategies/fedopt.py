"""Server optimisers on the averaged update: FedAvgM and FedOpt (FedAdagrad, FedYogi, FedAdam).

The averaged client update Δ is treated as a pseudo-gradient (pointing downhill) and fed to
a server optimiser with its own round-to-round moments.

- FedAvgM: Hsu et al. 2019, https://arxiv.org/abs/1909.06335
- FedAdagrad / FedYogi / FedAdam: Reddi et al. 2021, "Adaptive Federated Optimization",
  https://arxiv.org/abs/2003.00295 (Algorithm 2).

The maths lives in the pure functions `fedavgm_step` and `fedopt_step`; the classes only hold
the moments and expose them through `state_dict` as flat `"m/<name>"`, `"v/<name>"` keys so a
checkpoint can keep them in safetensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch

from fedfm.state import State, check_same_keys
from fedfm.strategies.base import Aggregate, ClientSampler, StrategyBase

Method = Literal["adagrad", "yogi", "adam"]
METHODS: tuple[Method, ...] = ("adagrad", "yogi", "adam")


def _moment_dtype(t: torch.Tensor) -> torch.dtype:
    # Moments of half-precision parameters are kept in float32 (as torch.optim does).
    return torch.promote_types(t.dtype, torch.float32)


def fedavgm_step(
    global_state: State,
    delta: State,
    momentum_buffer: State | None,
    *,
    server_lr: float,
    momentum: float,
) -> tuple[State, State]:
    """One FedAvgM server step: `m = momentum * m + Δ`, `x = x + server_lr * m`.

    Args:
        global_state: the current global state x.
        delta: the averaged client update Δ (new - old).
        momentum_buffer: m from the previous round, or `None` in the first round (m = 0).
        server_lr: the server learning rate η.
        momentum: the server momentum β (0 gives FedAvg with a server learning rate).

    Returns:
        The new global state and the new momentum buffer.
    """
    check_same_keys(delta, global_state, "global state")
    if momentum_buffer is not None:
        check_same_keys(delta, momentum_buffer, "momentum buffer")
    new_state: State = {}
    new_m: State = {}
    for k, x in global_state.items():
        d = delta[k].to(_moment_dtype(x))
        m = d.clone() if momentum_buffer is None else momentum * momentum_buffer[k] + d
        new_m[k] = m
        new_state[k] = (x.to(m.dtype) + server_lr * m).to(x.dtype)
    return new_state, new_m


def fedopt_step(
    global_state: State,
    delta: State,
    m: State | None,
    v: State | None,
    *,
    method: Method,
    server_lr: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> tuple[State, State, State]:
    """One server step of Reddi et al. 2021, Algorithm 2, without bias correction.

    With Δ the averaged update:

    - `m = beta1 * m + (1 - beta1) * Δ`
    - adagrad: `v = v + Δ²`
    - yogi: `v = v - (1 - beta2) * Δ² * sign(v - Δ²)`
    - adam: `v = beta2 * v + (1 - beta2) * Δ²`
    - `x = x + server_lr * m / (sqrt(v) + tau)`

    In the first round (`m`, `v` are `None`) m starts at 0 and v at τ²: the paper asks for
    `v_{-1} ≥ τ²` and we take the smallest allowed value. (Flower starts v at 0 and, for
    FedAdam only, scales η by an Adam-style bias correction; neither is in the paper.)

    Args:
        global_state: the current global state x.
        delta: the averaged client update Δ (new - old).
        m: the first moment from the previous round, or `None`.
        v: the second moment from the previous round, or `None`.
        method: "adagrad", "yogi" or "adam".
        server_lr: η.
        beta1: β1, the first-moment decay.
        beta2: β2, the second-moment decay (unused by adagrad).
        tau: τ, the adaptivity constant (also the floor of sqrt(v)).

    Returns:
        The new global state, m and v.

    Raises:
        ValueError: unknown `method`, or keys that do not match.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    check_same_keys(delta, global_state, "global state")
    for name, moment in (("m", m), ("v", v)):
        if moment is not None:
            check_same_keys(delta, moment, name)
    new_state: State = {}
    new_m: State = {}
    new_v: State = {}
    for k, x in global_state.items():
        dt = _moment_dtype(x)
        d = delta[k].to(dt)
        m_prev = torch.zeros_like(d) if m is None else m[k]
        v_prev = torch.full_like(d, tau * tau) if v is None else v[k]
        d2 = d * d
        m_k = beta1 * m_prev + (1.0 - beta1) * d
        if method == "adagrad":
            v_k = v_prev + d2
        elif method == "yogi":
            v_k = v_prev - (1.0 - beta2) * d2 * torch.sign(v_prev - d2)
        else:
            v_k = beta2 * v_prev + (1.0 - beta2) * d2
        new_m[k] = m_k
        new_v[k] = v_k
        new_state[k] = (x.to(dt) + server_lr * m_k / (torch.sqrt(v_k) + tau)).to(x.dtype)
    return new_state, new_m, new_v


def _flatten(prefix: str, state: State | None) -> dict[str, torch.Tensor]:
    if state is None:
        return {}
    return {f"{prefix}/{k}": v.detach().clone() for k, v in state.items()}


def _unflatten(prefix: str, flat: Mapping[str, Any]) -> State | None:
    head = prefix + "/"
    out = {k[len(head) :]: v.detach().clone() for k, v in flat.items() if k.startswith(head)}
    return out or None


class FedAvgM(StrategyBase):
    """FedAvg with server momentum (Hsu et al. 2019, https://arxiv.org/abs/1909.06335).

    Δ is the example-weighted mean of the updates; `m = momentum * m + Δ`;
    `x = x + server_lr * m`.

    Args:
        sampler: who trains each round.
        server_lr: the server learning rate η.
        momentum: the server momentum β.
    """

    name = "fedavgm"

    def __init__(
        self, sampler: ClientSampler, server_lr: float = 1.0, momentum: float = 0.9
    ) -> None:
        super().__init__(sampler, server_lr)
        self.momentum = momentum
        self.momentum_buffer_: State | None = None

    def apply(self, server_round: int, global_state: State, aggregate: Aggregate) -> State:
        """Update the momentum with the averaged update, step the global state."""
        new_state, self.momentum_buffer_ = fedavgm_step(
            global_state,
            aggregate.update,
            self.momentum_buffer_,
            server_lr=self.server_lr,
            momentum=self.momentum,
        )
        return new_state

    def state_dict(self) -> dict[str, Any]:
        """The momentum buffer as `"m/<name>"` tensors (empty before the first round)."""
        return _flatten("m", self.momentum_buffer_)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.momentum_buffer_ = _unflatten("m", state)


class FedOpt(StrategyBase):
    """Adaptive server optimiser of Reddi et al. 2021 (https://arxiv.org/abs/2003.00295).

    Use the subclasses `FedAdagrad`, `FedYogi`, `FedAdam`, which fix `method` and the
    defaults. Δ is the example-weighted mean of the updates (the paper's Algorithm 2 takes
    the unweighted mean over the sampled clients; we weight as FedAvg does). See
    `fedopt_step` for the update rule; there is no bias correction, as in the paper.

    Args:
        sampler: who trains each round.
        server_lr: η.
        beta1: β1.
        beta2: β2 (unused by FedAdagrad).
        tau: τ, the adaptivity constant; the second moment starts at τ².
    """

    name = "fedopt"
    method: Method = "adam"

    def __init__(
        self,
        sampler: ClientSampler,
        server_lr: float = 1e-2,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        super().__init__(sampler, server_lr)
        if server_lr <= 0 or tau <= 0:
            raise ValueError(f"server_lr and tau must be > 0, got {server_lr}, {tau}")
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"beta1 and beta2 must lie in [0, 1), got {beta1}, {beta2}")
        self.beta1 = beta1
        self.beta2 = beta2
        self.tau = tau
        self.m_: State | None = None
        self.v_: State | None = None

    def apply(self, server_round: int, global_state: State, aggregate: Aggregate) -> State:
        """Update m and v with the averaged update, step the global state."""
        new_state, self.m_, self.v_ = fedopt_step(
            global_state,
            aggregate.update,
            self.m_,
            self.v_,
            method=self.method,
            server_lr=self.server_lr,
            beta1=self.beta1,
            beta2=self.beta2,
            tau=self.tau,
        )
        return new_state

    def state_dict(self) -> dict[str, Any]:
        """m and v as `"m/<name>"` and `"v/<name>"` tensors (empty before the first round)."""
        return {**_flatten("m", self.m_), **_flatten("v", self.v_)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.m_ = _unflatten("m", state)
        self.v_ = _unflatten("v", state)


class FedAdagrad(FedOpt):
    """FedAdagrad: `v = v + Δ²` (Reddi et al. 2021, https://arxiv.org/abs/2003.00295).

    Defaults to β1 = 0 (no first-moment averaging), as in the paper's Adagrad experiments
    and Flower. The remaining arguments are those of `FedOpt`.
    """

    name = "fedadagrad"
    method: Method = "adagrad"

    def __init__(
        self,
        sampler: ClientSampler,
        server_lr: float = 1e-2,
        beta1: float = 0.0,
        beta2: float = 0.0,
        tau: float = 1e-3,
    ) -> None:
        super().__init__(sampler, server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau)


class FedYogi(FedOpt):
    """FedYogi: `v = v - (1-β2) Δ² sign(v - Δ²)` (https://arxiv.org/abs/2003.00295).

    Arguments as in `FedOpt`.
    """

    name = "fedyogi"
    method: Method = "yogi"


class FedAdam(FedOpt):
    """FedAdam: `v = β2 v + (1-β2) Δ²` (Reddi et al. 2021, https://arxiv.org/abs/2003.00295).

    Arguments as in `FedOpt`.
    """

    name = "fedadam"
    method: Method = "adam"
