"""The update pipeline: client-side `encode` stages, their server-side inverses, server hooks.

Everything between the client's optimiser and the server's strategy goes through here
(attacks in simulation, clipping, DP noise, compression, secure-aggregation masking): each is
a `Stage`, and a `Pipeline` runs them in order, serialises with safetensors, and on the server
parses untrusted bytes, runs the inverses in reverse order and checks the result against the
expected names, shapes and dtypes. After the strategy's `reduce`, every stage's
`server_postprocess` sees the aggregate (unmask a secure sum, add central noise, step an
accountant) before the strategy's `apply`. The server also has a downlink pipeline, which
encodes the broadcast once per round.

Each stage declares what it puts on the wire (`wire_like`: names, shapes and dtypes given
its input's), so the server checks a payload's layout before any stage decodes it, each
stage's inverse is told the layout it must restore, and the size of a payload is known
before it is sent (the communication budget). A stage may also stop the run before a
round (`stop_reason`: e.g. a privacy budget that the round would exceed).

Invalid orders are refused when the pipeline is built: a stage's `kind` may never decrease
along the pipeline (poison < clip < noise < compress < mask); e.g. sparsification after
secure-aggregation masking would destroy the masks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch

from fedfm.errors import ConfigError, TransportError
from fedfm.stages import StageKind
from fedfm.state import DEFAULT_MAX_BYTES, State, from_bytes, shaped_like, to_bytes

if TYPE_CHECKING:
    from fedfm.client.state import ClientStateStore
    from fedfm.messages import FitTask
    from fedfm.strategies.base import Aggregate


@dataclass(frozen=True)
class StageContext:
    """Who is encoding or decoding what.

    Attributes:
        client_id: the client (-1 for the server's broadcast).
        server_round: the round.
        seed: the run's seed (simulation randomness is derived from it).
        stream: what is being encoded: `"update"`, an extra's name, or `"broadcast"`.
        store: the client's persistent state store (stateful stages keep state there);
            `None` on the server.
        num_examples: the client's training examples, the weight its reply carries (0 on
            the server, or where unknown).
        clip_norm: this round's clipping bound from the task (adaptive clipping).
    """

    client_id: int
    server_round: int
    seed: int
    stream: str = "update"
    store: ClientStateStore | None = None
    num_examples: int = 0
    clip_norm: float | None = None


class Stage(Protocol):
    """One step of the pipeline and its server-side inverse."""

    name: str
    kind: StageKind

    def encode(self, update: State, ctx: StageContext) -> tuple[State, dict[str, float]]:
        """Client side: transform the update before it is sent; return it and metrics."""
        ...

    def decode(self, update: State, like: Mapping[str, torch.Tensor], ctx: StageContext) -> State:
        """Server side: undo what `encode` did that the server can undo (`like`: the
        expected names, shapes and dtypes of the result)."""
        ...

    def wire_like(self, like: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """The names, shapes and dtypes `encode` produces from an input shaped like `like`
        (tensors may live on the meta device)."""
        ...

    def server_postprocess(self, aggregate: Aggregate, server_round: int) -> Aggregate:
        """Server side, after the strategy's reduce: transform the aggregate."""
        ...

    def stop_reason(self, server_round: int) -> str | None:
        """Server side, before a round: a one-line reason to stop the run (logged and kept
        in `summary.json` as it is, e.g. "stopped before round 7: ..."), or `None`."""
        ...

    def configure_tasks(self, tasks: Sequence[FitTask], server_round: int) -> list[FitTask]:
        """Server side, before a round: add per-round settings to the tasks (e.g. adaptive
        clipping's bound, in `overrides.clip_norm`)."""
        ...

    def server_metrics(self) -> dict[str, float]:
        """Server side, after a round: numbers for the round's record (e.g. ε)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The stage's server-side state (e.g. an accountant's ledger), for checkpoints."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        ...


class MaskStage(Stage, Protocol):
    """A stage whose server sees only a masked sum (secure aggregation, kind MASK).

    Besides `encode` (which masks), it exchanges protocol messages with the clients before
    training and after the masked updates arrived; the round loop drives the server side
    (`fedfm.server.secure`), the backend carries the bytes to `client_step`.
    """

    def open_round(
        self, server_round: int, client_ids: list[int], like: Mapping[str, torch.Tensor], seed: int
    ) -> dict[int, bytes]:
        """Start a round's secure sum; the first message for each client."""
        ...

    def server_step(self, server_round: int, replies: Mapping[int, bytes]) -> dict[int, bytes]:
        """The clients' replies to the last messages in; the next message per client out."""
        ...

    def collect(self, server_round: int, masked: Mapping[int, State]) -> dict[int, bytes]:
        """Sum the validated masked payloads; the unmask request per survivor."""
        ...

    def finish(
        self,
        server_round: int,
        replies: Mapping[int, bytes],
        like: Mapping[str, torch.Tensor],
        num_examples: Mapping[int, int],
    ) -> Aggregate:
        """Unmask the sum; the aggregate of the survivors' updates."""
        ...

    def client_step(self, client_id: int, server_round: int, data: bytes) -> bytes:
        """Client side: one message from the server in, the client's answer out."""
        ...


def mask_stage(pipeline: Pipeline) -> MaskStage | None:
    """The pipeline's MASK stage (secure aggregation), or `None`."""
    for stage in pipeline.stages:
        if stage.kind == StageKind.MASK:
            return cast("MaskStage", stage)
    return None


class StageBase:
    """Identity on the server: no decode, no postprocess, the wire layout of its input, never
    stops the run. Subclasses set name and kind."""

    name = "base"
    kind = StageKind.COMPRESS
    # True for a stage whose server hook must run every round, even with no client in it
    # (a noise stage: the accounted mechanism releases noise when Poisson sampling is empty)
    every_round = False

    def decode(self, update: State, like: Mapping[str, torch.Tensor], ctx: StageContext) -> State:
        """Nothing to undo."""
        del like, ctx
        return update

    def wire_like(self, like: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """What came in goes out, shaped alike."""
        return like

    def server_postprocess(self, aggregate: Aggregate, server_round: int) -> Aggregate:
        """Nothing to do."""
        del server_round
        return aggregate

    def stop_reason(self, server_round: int) -> str | None:
        """Never stops the run."""
        del server_round
        return None

    def configure_tasks(self, tasks: Sequence[FitTask], server_round: int) -> list[FitTask]:
        """No per-round settings."""
        del server_round
        return list(tasks)

    def server_metrics(self) -> dict[str, float]:
        """No server-side numbers."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """No server-side state."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """No server-side state."""
        del state


def check_order(stages: Sequence[Stage], where: str) -> None:
    """Refuse a pipeline whose stage kinds decrease.

    Raises:
        ConfigError: naming the two stages and the valid order.
    """
    for a, b in pairwise(stages):
        if b.kind < a.kind:
            order = " < ".join(k.name.lower() for k in StageKind)
            raise ConfigError(
                f"{where}: {b.name!r} ({b.kind.name.lower()}) cannot come after "
                f"{a.name!r} ({a.kind.name.lower()}); valid order: {order}"
            )


class Pipeline:
    """An ordered list of stages plus safetensors (de)serialisation.

    Args:
        stages: applied in this order on the client, inverted in reverse on the server.
        seed: the run's seed, passed to stages through `StageContext`.
        max_bytes: largest payload the server accepts.
        where: the config key, for error messages.

    Raises:
        ConfigError: the order is invalid.
    """

    def __init__(
        self,
        stages: Sequence[Stage] = (),
        seed: int = 0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        where: str = "pipeline.uplink",
    ) -> None:
        check_order(stages, where)
        self.stages = list(stages)
        self.seed = seed
        self.max_bytes = max_bytes

    def context(
        self,
        client_id: int,
        server_round: int,
        stream: str = "update",
        store: ClientStateStore | None = None,
        num_examples: int = 0,
        clip_norm: float | None = None,
    ) -> StageContext:
        """The context stages see for this client, round and stream."""
        return StageContext(
            client_id, server_round, self.seed, stream, store, num_examples, clip_norm=clip_norm
        )

    def configure_tasks(self, tasks: Sequence[FitTask], server_round: int) -> list[FitTask]:
        """Every stage's per-round settings added to the tasks, in pipeline order."""
        out = list(tasks)
        for stage in self.stages:
            out = stage.configure_tasks(out, server_round)
        return out

    def server_metrics(self) -> dict[str, float]:
        """The stages' server-side numbers of the last round, `<stage>/<name>`."""
        return {
            f"{stage.name}/{k}": v
            for stage in self.stages
            for k, v in stage.server_metrics().items()
        }

    def encode(self, update: State, ctx: StageContext) -> tuple[bytes, dict[str, float]]:
        """Client side: run every stage, then serialise; metrics are `<stage>/<name>`."""
        metrics: dict[str, float] = {}
        for stage in self.stages:
            update, stage_metrics = stage.encode(update, ctx)
            metrics.update({f"{stage.name}/{k}": v for k, v in stage_metrics.items()})
        return to_bytes(update), metrics

    def decode(self, payload: bytes, like: Mapping[str, torch.Tensor], ctx: StageContext) -> State:
        """Server side: parse untrusted bytes, run the inverses, check against `like`.

        Raises:
            TransportError: oversized, unparsable, non-finite, of a dtype the pipeline does
                not produce, or not shaped like `like`.
        """
        who = f"client {ctx.client_id} {ctx.stream}"
        update = from_bytes(payload, max_bytes=self.max_bytes)
        if self.stages:  # the wire layout first: every stage then sees what it expects
            likes = self.likes(like)
            update = shaped_like(update, likes[-1], who=f"{who} payload")
            for stage, stage_like in zip(reversed(self.stages), reversed(likes[:-1]), strict=True):
                update = stage.decode(update, stage_like, ctx)
        return shaped_like(update, like, who=who)

    def likes(self, like: Mapping[str, torch.Tensor]) -> list[Mapping[str, torch.Tensor]]:
        """The layout before each stage and, last, on the wire (`len(stages) + 1` entries)."""
        out = [like]
        for stage in self.stages:
            out.append(stage.wire_like(out[-1]))
        return out

    def encoded_size(self, like: Mapping[str, torch.Tensor]) -> int:
        """Serialised bytes of a payload encoded from a State shaped like `like`: the size of
        a zero payload of the wire layout (every stage's layout depends on shapes only)."""
        wire = self.likes(like)[-1]
        return len(to_bytes({k: torch.zeros(v.shape, dtype=v.dtype) for k, v in wire.items()}))

    def stop_reason(self, server_round: int) -> str | None:
        """The first stage's reason to stop before `server_round`, or `None`."""
        for stage in self.stages:
            reason = stage.stop_reason(server_round)
            if reason is not None:
                return reason
        return None

    @property
    def every_round(self) -> bool:
        """Whether a stage's server hook must run in a round with no client (noise)."""
        return any(getattr(stage, "every_round", False) for stage in self.stages)

    def server_postprocess(self, aggregate: Aggregate, server_round: int) -> Aggregate:
        """Every stage's server hook on the aggregate, last stage first."""
        for stage in reversed(self.stages):
            aggregate = stage.server_postprocess(aggregate, server_round)
        return aggregate

    def state_dict(self) -> dict[str, Any]:
        """The stages' server-side state as `<position>.<stage>/<key>` entries."""
        return {
            f"{i}.{stage.name}/{k}": v
            for i, stage in enumerate(self.stages)
            for k, v in stage.state_dict().items()
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        for i, stage in enumerate(self.stages):
            prefix = f"{i}.{stage.name}/"
            stage.load_state_dict(
                {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            )


@dataclass(frozen=True)
class Broadcast:
    """The global state as the server sends it this round.

    Attributes:
        payload: the downlink pipeline's bytes (what a remote client receives).
        state: what a client decodes from them (in-process backends use it directly).
        metrics: the downlink stages' metrics, `<stage>/<name>`.
    """

    payload: bytes
    state: State
    metrics: dict[str, float] = field(default_factory=dict)


def encode_broadcast(downlink: Pipeline, state: State, server_round: int) -> Broadcast:
    """Encode the global state once for every client of the round.

    Raises:
        TransportError: the downlink produced something it cannot decode.
    """
    ctx = downlink.context(-1, server_round, "broadcast")
    payload, metrics = downlink.encode(state, ctx)
    if not downlink.stages:  # lossless: clients get exactly the global state
        return Broadcast(payload, state)
    try:
        return Broadcast(payload, downlink.decode(payload, state, ctx), metrics)
    except TransportError as exc:
        raise TransportError(
            f"pipeline.downlink cannot round-trip the global state: {exc}"
        ) from exc
