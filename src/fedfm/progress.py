"""rich progress bars for rounds and clients."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedfm.messages import FitReply
from fedfm.records import RoundRecord


class RichProgress:
    """Two bars: rounds, and clients within the current round.

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
