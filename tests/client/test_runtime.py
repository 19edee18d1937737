"""The one client program, tested on a toy task (digits, no transformers): failures are
values, evaluation and personalisation, LoRA rank padding, stage metrics."""

import torch

from fedfm.client.hooks import FitContext, HookBase
from fedfm.messages import EvalTask, FitTask, TrainOverrides
from fedfm.pipeline import Pipeline
from fedfm.privacy.clip import ClipNorm
from fedfm.strategies.lora import RankAdapter
from fedfm.strategies.lora_math import lora_ranks, truncate_rank
from tests.helpers import toy_config, toy_runtime


class Boom(HookBase):
    def before_train(self, ctx: FitContext) -> None:
        raise RuntimeError("disk on fire")


def test_unknown_client_and_errors_are_failure_values():
    runtime = toy_runtime(toy_config(), hooks=[Boom()])
    state = runtime.model.get_state()
    unknown = runtime.fit(FitTask(99, 1), state)
    broken = runtime.fit(FitTask(0, 1), state)
    bad_eval = runtime.evaluate(EvalTask(99, 1), state)
    assert unknown.failure.kind == "unknown_client" and unknown.payload == b""
    assert broken.failure.kind == "train_error" and "disk on fire" in broken.failure.detail
    assert bad_eval.failure.kind == "unknown_client"


def test_fit_reports_steps_examples_and_stage_metrics():
    # Prepare: 2 local steps, clipping on the uplink
    uplink = Pipeline([ClipNorm(1e-3)])
    runtime = toy_runtime(toy_config(), uplink=uplink)
    state = runtime.model.get_state()
    # Execute
    reply = runtime.fit(FitTask(1, 1, TrainOverrides(max_steps=2)), state)
    # Assert
    assert reply.ok and reply.num_examples == len(runtime.shards[1].train)
    assert reply.metrics["steps"] == 2.0 and reply.metrics["clip/clipped"] == 1.0
    update = uplink.decode(reply.payload, state, uplink.context(1, 1))
    norm = torch.linalg.vector_norm(torch.cat([v.flatten() for v in update.values()]))
    assert float(norm) <= 1e-3 * (1 + 1e-5)


def test_same_task_same_reply_bytes():
    runtime = toy_runtime(toy_config())
    state = runtime.model.get_state()
    a = runtime.fit(FitTask(2, 3), state)
    b = runtime.fit(FitTask(2, 3), state)
    assert a.payload == b.payload


def test_personalisation_changes_the_local_metrics_and_nothing_else():
    runtime = toy_runtime(toy_config())
    state = runtime.model.get_state()
    before = runtime.evaluate(EvalTask(0, 1), state)
    tuned = runtime.evaluate(EvalTask(0, 1, personalize_steps=5), state)
    again = runtime.evaluate(EvalTask(0, 1), state)
    assert before.ok and before.num_examples == len(runtime.shards[0].test)
    assert tuned.metrics["loss"] != before.metrics["loss"]
    assert again.metrics == before.metrics  # evaluation starts from the given state


def test_rank_adapter_trains_a_lower_rank_state_and_padded_slots_stay_zero():
    # Prepare: LoRA r=4 model, a client at rank 2, AdamW with weight decay
    cfg = toy_config(
        "adapter.method=lora",
        "adapter.r=4",
        "client.optimizer=adamw",
        "client.weight_decay=0.1",
        "client.max_steps=3",
    )
    runtime = toy_runtime(cfg, hooks=[RankAdapter()])
    full = runtime.model.get_state()
    start = truncate_rank(full, 2)
    # Execute
    reply = runtime.fit(FitTask(0, 1, state=start), full)
    # Assert: the update has the client's rank, and the model's padded slots stayed zero
    update = runtime.uplink.decode(reply.payload, start, runtime.uplink.context(0, 1))
    assert set(lora_ranks(update).values()) == {2}
    trained = runtime.model.get_state()
    for name, value in trained.items():
        if "lora_A" in name:
            assert not value[2:].any()
        elif "lora_B" in name:
            assert not value[:, 2:].any()
