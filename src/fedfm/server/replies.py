"""Server-side checks of untrusted client replies: every way a reply can be wrong becomes a
failure value naming the client and the reason, never an exception that kills the round.

Checked, in order: the client was asked this round and has not replied already; it reports
no failure; `num_examples` is an integer in [1, max_num_examples]; the payload parses, has a
wire dtype, is finite and is shaped like the state the client was sent; the extras are
exactly the strategy's `reply_extras`, each shaped like the global state; the metrics are
finite numbers (others are dropped). Under secure aggregation (`masked`) no stage can undo
anything on a single masked payload, so it is checked against the uplink's wire layout only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from fedfm.messages import Failure, FitReply, FitResult, FitTask
from fedfm.pipeline import Pipeline
from fedfm.state import State


class Validator:
    """Decodes and validates a round's replies.

    Args:
        uplink: the uplink pipeline (its `decode` parses and checks the bytes).
        reply_extras: the extras every reply must carry, and no others.
        max_num_examples: the largest FedAvg weight a client may claim.
        masked: payloads are masked (secure aggregation): results hold the wire layout.
    """

    def __init__(
        self,
        uplink: Pipeline,
        reply_extras: frozenset[str],
        max_num_examples: int,
        masked: bool = False,
    ) -> None:
        self.uplink = uplink
        self.reply_extras = reply_extras
        self.max_num_examples = max_num_examples
        self.masked = masked
        self.wire = Pipeline((), max_bytes=uplink.max_bytes)  # parse and check only

    def decode(
        self,
        replies: Sequence[FitReply],
        tasks: Sequence[FitTask],
        global_state: State,
        server_round: int,
    ) -> tuple[list[FitResult], list[str]]:
        """Valid replies as results sorted by client id, and one line per failure."""
        sent = {task.client_id: task for task in tasks}
        seen: set[int] = set()
        results: list[FitResult] = []
        failures: list[str] = []
        for reply in replies:
            task = sent.get(reply.client_id)
            outcome: FitResult | Failure
            if task is None:
                outcome = Failure("not_asked", "was not asked to train this round")
            elif reply.client_id in seen:
                outcome = Failure("duplicate", "replied more than once; the first reply counts")
            else:
                seen.add(reply.client_id)
                outcome = self._check(reply, task, global_state, server_round)
            if isinstance(outcome, Failure):
                failures.append(f"client {reply.client_id}: {outcome}")
            else:
                results.append(outcome)
        missing = sorted(set(sent) - seen)
        failures.extend(f"client {c}: {Failure('timeout', 'no reply')}" for c in missing)
        results.sort(key=lambda r: r.client_id)
        return results, failures

    def _check(
        self, reply: FitReply, task: FitTask, global_state: State, server_round: int
    ) -> FitResult | Failure:
        if reply.failure is not None:
            return reply.failure
        if reply.server_round != server_round:
            return Failure("bad_payload", f"answers round {reply.server_round}, not {server_round}")
        n = reply.num_examples
        if type(n) is not int or not 1 <= n <= self.max_num_examples:
            return Failure(
                "bad_num_examples",
                f"num_examples must be an integer in [1, {self.max_num_examples}], got {n!r}",
            )
        if set(reply.extras) != self.reply_extras:
            expected = sorted(self.reply_extras)
            return Failure(
                "bad_extras", f"extras {sorted(reply.extras)} differ from the expected {expected}"
            )
        like = task.state if task.state is not None else global_state
        ctx = self.uplink.context(reply.client_id, server_round)
        try:  # any malformed payload is the client's failure, never the server's crash
            if self.masked:
                update = self.wire.decode(reply.payload, self.uplink.likes(like)[-1], ctx)
            else:
                update = self.uplink.decode(reply.payload, like, ctx)
        except Exception as exc:
            return Failure("bad_payload", str(exc))
        extras: dict[str, State] = {}
        for name, data in sorted(reply.extras.items()):
            ctx = self.uplink.context(reply.client_id, server_round, name)
            try:
                extras[name] = self.uplink.decode(data, global_state, ctx)
            except Exception as exc:
                return Failure("bad_extras", f"{name}: {exc}")
        return FitResult(reply.client_id, n, update, extras, _numbers(reply.metrics))


def _numbers(metrics: Mapping[str, object]) -> dict[str, float]:
    """The finite numeric metrics (anything else a client reports is dropped)."""
    return {
        str(k): float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
