"""rich progress bars for rounds, clients within a round, and one client's local steps."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedfm.client.hooks import FitContext, HookBase
from fedfm.messages import FitReply
from fedfm.records import RoundRecord


class RichProgress:
    """Three bars: rounds, clients within the current round, and the training client's steps.

    Args:
        num_rounds: total rounds of the run.
        start_round: rounds already done (on resume).
        console: where to draw.
        metric: the central metric shown beside the rounds bar.
    """

    def __init__(
        self,
        num_rounds: int,
        start_round: int = 0,
        console: Console | None = None,
        metric: str = "accuracy",
    ):
        self.console = console or Console()
        self.metric = metric
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=False,
        )
        self.rounds = self.bar.add_task("rounds", total=num_rounds, completed=start_round, info="")
        self.clients = self.bar.add_task("clients", total=1, info="", visible=False)
        self.steps = self.bar.add_task("steps", total=None, info="", visible=False)

    def step_hook(self, max_steps: int | None = None) -> HookBase:
        """A client hook that advances the steps bar at every local optimiser step (it
        reads nothing and changes nothing: the numbers are the same with or without it).

        Args:
            max_steps: the clients' step cap (`client.max_steps`), the bar's total.
        """
        return _StepBar(self, max_steps)

    def __enter__(self) -> RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def round_started(self, server_round: int, num_clients: int) -> None:
        """Reset the clients bar."""
        self.bar.reset(self.clients, total=num_clients, visible=True, info="")
        self.bar.update(self.clients, description=f"round {server_round}")

    def client_done(self, reply: FitReply) -> None:
        """Advance the clients bar."""
        info = f"client {reply.client_id}" + ("" if reply.ok else " FAILED")
        self.bar.advance(self.clients)
        self.bar.update(self.clients, info=info)

    def round_done(self, record: RoundRecord) -> None:
        """Advance the rounds bar and show the latest value of the central metric."""
        value = record.central.get(self.metric)
        info = "" if value is None else f"{self.metric} {value:.4f}"
        self.bar.advance(self.rounds)
        self.bar.update(self.rounds, info=info)


class _StepBar(HookBase):
    """Resets the steps bar when a client starts and advances it at every optimiser step."""

    def __init__(self, progress: RichProgress, max_steps: int | None) -> None:
        self.progress, self.max_steps = progress, max_steps

    def before_train(self, ctx: FitContext) -> None:
        bar, steps = self.progress.bar, self.progress.steps
        total = ctx.task.overrides.max_steps or self.max_steps
        bar.reset(steps, total=total, visible=True, info="")
        bar.update(steps, description=f"client {ctx.client_id}")
        ctx.grad_hooks.append(lambda params: bar.advance(steps))
