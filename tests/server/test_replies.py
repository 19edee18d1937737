"""Fuzzing the server's checks of untrusted replies: every bad reply is a failure value
naming the client and the reason, and never an exception."""

import pytest
import torch

from fedfm.compression.precision import Float16
from fedfm.messages import Failure, FitReply, FitTask
from fedfm.pipeline import Pipeline
from fedfm.server.replies import Validator
from fedfm.state import to_bytes

GLOBAL = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
GOOD = {"w": torch.ones(2, 3), "b": torch.ones(3)}
EXTRA = "scaffold.control_delta"


def _reply(cid=0, n=10, payload=None, extras=None, **kw):
    return FitReply(cid, 1, n, to_bytes(GOOD) if payload is None else payload, extras or {}, **kw)


def _decode(replies, tasks=None, extras=frozenset(), pipeline=None):
    validator = Validator(pipeline or Pipeline(), frozenset(extras), max_num_examples=1000)
    tasks = tasks if tasks is not None else [FitTask(c, 1) for c in (0, 1, 2)]
    return validator.decode(replies, tasks, GLOBAL, 1)


@pytest.mark.parametrize(
    "n", [0, -5, float("nan"), float("inf"), 1001, 10**18, True, 3.0, "7", None]
)
def test_bad_num_examples_are_rejected_per_client(n):
    results, failures = _decode([_reply(0, n), _reply(1, 5)])
    assert [r.client_id for r in results] == [1]
    assert failures[0].startswith("client 0: bad_num_examples")


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (to_bytes({"w": torch.full((2, 3), float("nan")), "b": torch.ones(3)}), "NaN"),
        (to_bytes({"w": torch.full((2, 3), float("inf")), "b": torch.ones(3)}), "infinite"),
        (to_bytes({"w": torch.ones(2, 3).to(torch.float8_e4m3fn), "b": torch.ones(3)}), "dtype"),
        (to_bytes({"w": torch.ones(3, 2), "b": torch.ones(3)}), "shape"),
        (to_bytes({"w": torch.ones(2, 3)}), "keys differ"),
        (to_bytes({**GOOD, "x": torch.ones(1)}), "keys differ"),
        (to_bytes({"w": torch.ones(2, 3, dtype=torch.float64), "b": torch.ones(3)}), "float64"),
        (b"\x00" * 40, "not valid safetensors"),
        (b"", "not valid safetensors"),
    ],
)
def test_malformed_payloads_are_failures_not_crashes(payload, why):
    results, failures = _decode([_reply(0, payload=payload), _reply(1)])
    assert [r.client_id for r in results] == [1]
    assert failures[0].startswith("client 0: bad_payload") and why in failures[0]


def test_fp16_pipeline_rejects_odd_dtypes_before_decoding():
    payload = to_bytes({"w": torch.ones(2, 3).to(torch.float8_e5m2), "b": torch.ones(3)})
    results, failures = _decode([_reply(0, payload=payload)], pipeline=Pipeline([Float16()]))
    assert not results and "bad_payload" in failures[0]


@pytest.mark.parametrize(
    ("extras", "why"),
    [
        ({}, "differ from the expected"),
        ({EXTRA: to_bytes(GOOD), "spy": to_bytes(GOOD)}, "differ from the expected"),
        ({EXTRA: to_bytes({"w": torch.ones(5)})}, "keys differ"),
        ({EXTRA: to_bytes({"w": torch.ones(2, 3), "b": torch.ones(4)})}, "shape"),
        ({EXTRA: to_bytes({"w": torch.full((2, 3), float("nan")), "b": torch.ones(3)})}, "NaN"),
    ],
)
def test_missing_unknown_or_malformed_extras_are_failures(extras, why):
    good = {EXTRA: to_bytes(GOOD)}
    results, failures = _decode([_reply(0, extras=extras), _reply(1, extras=good)], extras={EXTRA})
    assert [r.client_id for r in results] == [1]
    assert failures[0].startswith("client 0: bad_extras") and why in failures[0]
    assert torch.equal(results[0].extras[EXTRA]["w"], GOOD["w"])


def test_duplicate_unasked_and_silent_clients():
    replies = [_reply(2), _reply(0), _reply(0, n=999), _reply(7)]
    results, failures = _decode(replies)
    assert [r.client_id for r in results] == [0, 2]  # sorted by client id
    assert results[0].num_examples == 10  # the first reply counts
    assert any(f.startswith("client 0: duplicate") for f in failures)
    assert any(f.startswith("client 7: not_asked") for f in failures)
    assert any(f.startswith("client 1: timeout") for f in failures)


def test_client_failures_and_wrong_rounds_pass_through_as_values():
    failed = FitReply(0, 1, 0, failure=Failure("train_error", "disk on fire"))
    stale = FitReply(1, 0, 10, to_bytes(GOOD))
    results, failures = _decode([failed, stale])
    assert not results
    assert failures[0] == "client 0: train_error: disk on fire"
    assert failures[1].startswith("client 1: bad_payload: answers round 0")


def test_non_numeric_metrics_are_dropped():
    reply = _reply(0, metrics={"train_loss": "high", "steps": 3, "bad": float("nan"), "flag": True})
    results, _ = _decode([reply])
    assert results[0].metrics == {"steps": 3.0}
