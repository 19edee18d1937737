"""Secure aggregation inside the round loop (toy digits job): the same global state as a plain
run within the fixed-point error, dropouts at every stage, a failed round, config refusals,
exact byte counts, and a resume that is bitwise identical."""

from __future__ import annotations

import math

import pytest

from fedfm.backends.inprocess import InProcessBackend
from fedfm.build import build
from fedfm.errors import ConfigError
from fedfm.messages import FitTask
from fedfm.privacy.secagg.fixedpoint import FixedPoint
from fedfm.privacy.secagg.messages import MAGIC, UnmaskRequest
from fedfm.privacy.secagg.protocol import SecAggParams
from fedfm.records import RoundRecord
from fedfm.run import loop_parts, run
from fedfm.server.loop import run_rounds
from fedfm.state import to_bytes
from tests.helpers import crash_and_resume, states_equal, toy_config

CLIP, MAX_EXAMPLES = 4.0, 128
SECAGG = f"pipeline.uplink=[{{name='secagg', clip_range={CLIP}, max_num_examples={MAX_EXAMPLES}}}]"
ONE_ROUND = ("rounds=1", "eval.initial=false", "partition.name=quantity")


class Keep:
    """A callback that keeps the round records."""

    def __init__(self) -> None:
        self.records: list[RoundRecord] = []

    def on_round_end(self, record: RoundRecord) -> None:
        self.records.append(record)


class Dropping(InProcessBackend):
    """The in-process backend, counting the protocol bytes it carries; the clients in `drop`
    never answer the message whose tag is given (they drop out at that stage)."""

    def __init__(self, runtime, drop: dict[int, int]) -> None:
        super().__init__(runtime)
        self.drop = drop
        self.up = self.down = self.fit_up = 0

    def fit(self, broadcast, tasks, on_result=None):
        replies = super().fit(broadcast, tasks, on_result)
        self.fit_up += sum(r.num_bytes for r in replies if r.ok)
        return replies

    def exchange(self, server_round, messages):
        self.down += sum(len(m) for m in messages.values())
        asked = {c: m for c, m in messages.items() if self.drop.get(c) != m[len(MAGIC)]}
        replies = super().exchange(server_round, asked)
        self.up += sum(len(r) for r in replies.values())
        return replies


def _one_round(tmp_path, *extra: str, drop: dict[int, int] | None = None):
    """One round of the toy job through `run_rounds`; the built job, the final state, the
    record and the backend."""
    built = build(toy_config(*ONE_ROUND, *extra))
    keep = Keep()
    tmp_path.mkdir(parents=True, exist_ok=True)
    with Dropping(built.runtime, drop or {}) as backend:
        parts = loop_parts(built, backend, tmp_path, [keep], None)
        final = run_rounds(parts, built.initial_state)
    return built, final, keep.records[-1], backend


def test_a_secure_run_matches_the_plain_example_weighted_run(tmp_path):
    # Prepare: quantity skew, so example weights differ from uniform ones
    built, plain, plain_record, _ = _one_round(tmp_path / "plain")
    _, secure, record, backend = _one_round(tmp_path / "secure", SECAGG)
    sizes = [len(built.data.clients[c].train) for c in record.clients]
    assert len(set(sizes)) > 1 and max(sizes) <= MAX_EXAMPLES
    # Assert: |error| <= n * step / sum(w) per entry (one fixed-point step per client)
    n = len(sizes)
    step = FixedPoint.for_cohort(CLIP, n).step
    bound = n * step * MAX_EXAMPLES / sum(sizes)
    for k, ref in plain.items():
        tolerance = bound + 1e-6 * float(ref.abs().max())  # + float32 rounding of the state
        assert float((secure[k] - ref).abs().max()) <= tolerance, k
    assert not states_equal(plain, built.initial_state)
    # the same clients; the norm is unknown; every protocol byte is counted, exactly
    assert record.clients == plain_record.clients and record.error is None
    assert record.update_norm is None and plain_record.update_norm is not None
    assert record.bytes_up == backend.fit_up + backend.up
    broadcast = len(to_bytes(built.initial_state))
    assert record.bytes_down == n * broadcast + backend.down
    assert backend.up > 0 and backend.down > 0


def test_dropouts_after_masking_leave_the_aggregate_exact(tmp_path):
    # Prepare: 4 clients a round, threshold 3
    four = "strategy.clients_per_round=4"
    _, full, full_record, _ = _one_round(tmp_path / "a", SECAGG, four)
    survivors = full_record.clients
    # Execute: one client never answers the unmask request (its input is in the sum)
    _, dropped, record, _ = _one_round(
        tmp_path / "b", SECAGG, four, drop={survivors[0]: UnmaskRequest.TAG}
    )
    # Assert: masks cancel exactly, so the aggregate is bit for bit the same
    assert states_equal(full, dropped)
    assert record.error is None and record.num_failures == 0


def test_a_client_that_drops_out_of_the_key_exchange_does_not_train(tmp_path):
    # Execute
    built, final, record, _ = _one_round(
        tmp_path, SECAGG, "strategy.clients_per_round=4", drop={2: SecAggParams.TAG}
    )
    # Assert: three clients trained, the round succeeded
    assert not states_equal(final, built.initial_state)
    assert record.error is None and record.num_failures == 1
    assert (
        record.failures[0].startswith("client 2: timeout") and "key exchange" in record.failures[0]
    )


def test_fewer_than_t_survivors_fail_the_round_and_keep_the_state(tmp_path):
    # Execute: two of four clients (threshold 3) never answer the unmask request
    with pytest.warns(UserWarning, match="round 1 failed"):
        built, final, record, _ = _one_round(
            tmp_path,
            SECAGG,
            "strategy.clients_per_round=4",
            drop={0: UnmaskRequest.TAG, 1: UnmaskRequest.TAG},
        )
    # Assert
    assert states_equal(final, built.initial_state)
    assert record.error is not None and "round 1 failed" in record.error
    assert "threshold" in record.error or "survivors" in record.error


def test_a_resumed_secure_run_is_bitwise_identical(tmp_path):
    # Prepare
    cfg = toy_config("rounds=2", "eval.initial=false", SECAGG)
    full = run(cfg, tmp_path / "full")
    crashed = tmp_path / "crashed"
    # Execute
    resumed = crash_and_resume(cfg, crashed)
    # Assert
    assert states_equal(full, resumed)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (("strategy.name=median",), "needs individual updates"),
        (
            ("strategy.name=krum", "strategy.num_byzantine=0", "strategy.clients_per_round=4"),
            "needs individual updates",
        ),
        (("strategy.name=scaffold",), "extras"),
        (("strategy.norm_bound=1.0",), "norm_bound"),
        (("mode=local-only",), "mode='federated'"),
    ],
)
def test_secure_aggregation_refuses_strategies_it_cannot_serve(extra, match):
    with pytest.raises(ConfigError, match=match):
        toy_config(SECAGG, *extra)


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ("uplink=[{name='topk'}, {name='secagg', clip_range=1.0}]", "'topk' cannot be combined"),
        ("uplink=[{name='int8'}, {name='secagg', clip_range=1.0}]", "'int8' cannot be combined"),
        ("uplink=[{name='secagg', clip_range=1.0}, {name='topk'}]", "cannot come after"),
        ("downlink=[{name='secagg', clip_range=1.0}]", "belongs in pipeline.uplink"),
        (f"uplink=[{{name='secagg', clip_range=1.0, levels={2**31 + 1}}}]", "levels: 2 clients"),
        ("uplink=[{name='secagg', clip_range=1.0, degree=3}]", "even"),
        ("uplink=[{name='secagg', clip_range=1.0}, {name='secagg', clip_range=1.0}]", "at most"),
    ],
)
def test_secure_aggregation_refuses_bad_pipelines(entries, match):
    with pytest.raises(ConfigError, match=match):
        toy_config(f"pipeline.{entries}")


def test_the_largest_cohort_that_fits_is_accepted():
    levels = math.floor((2**32 - 1) / 2) + 1  # 2 * (levels - 1) < 2^32
    cfg = toy_config(f"pipeline.uplink=[{{name='secagg', clip_range=1.0, levels={levels}}}]")
    assert cfg.pipeline.uplink[0].levels == levels


def test_a_secagg_step_never_raises():
    # Prepare
    cfg = toy_config(SECAGG)
    built = build(cfg)
    runtime = built.runtime
    plain = build(toy_config())
    # Execute / Assert: garbage, an unknown client, no MASK stage: no reply
    assert runtime.secagg_step(0, 1, b"not a message") is None
    assert runtime.secagg_step(99, 1, b"") is None
    assert plain.runtime.secagg_step(0, 1, b"") is None
    # without a key exchange, encoding fails: a failure value, not a crash
    reply = runtime.fit(FitTask(0, 1), built.initial_state)
    assert reply.failure is not None and "no session for round 1" in reply.failure.detail
