"""The instruction-tuning task on tiny-llama: masking, templates, generation, rounds, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedfm.config import load_config
from fedfm.run import run
from fedfm.tasks.generation import generate
from fedfm.tasks.instruction import IGNORE, encode_chat, response_nll
from fedfm.tasks.registry import build_task
from tests.helpers import crash_and_resume, records, states_equal

TINY_LLAMA = [
    "task.name=instruction",
    "task.model=tiny-llama",
    "task.per_category=16",
    "task.max_length=96",
    "task.max_new_tokens=4",
    "task.generate_eval=12",
    "data.test_size=16",
    "partition.name=dirichlet",
    "partition.alpha=0.5",
    "partition.num_clients=4",
    "partition.min_size=6",
    "strategy.clients_per_round=2",
    "client.batch_size=8",
    "client.max_steps=2",
    "client.lr=0.01",
    "eval.batch_size=8",
    "rounds=2",
    "backend.threads=1",
]


@pytest.fixture(scope="module")
def built():
    cfg = load_config(None, TINY_LLAMA)
    task = build_task(cfg)
    examples = task.load_examples()
    torch.manual_seed(0)
    from fedfm.models.adapters import make_trainable

    module = make_trainable(
        task.build_model(examples),
        cfg.adapter,
        task.peft_task_type,
        task.head_prefixes,
        task.default_target_modules,
    )
    return cfg, task, examples, module


def test_prompt_tokens_and_padding_carry_no_loss(built):
    # Prepare
    _, task, examples, module = built
    idx = np.arange(6)
    # Execute
    batch = next(iter(task.batches(examples, idx, 6, None)))
    # Assert: labels are exactly the response tokens of each row
    for row, i in enumerate(batch_order(examples, idx, 6)):
        start, n = int(examples.prompt_lengths[i]), len(examples.input_ids[i])
        labels = batch["labels"][row]
        assert (labels[:start] == IGNORE).all() and (labels[n:] == IGNORE).all()
        assert torch.equal(labels[start:n], torch.from_numpy(examples.input_ids[i][start:]))
    # and the loss equals cross-entropy of the full logits on those tokens only
    with torch.no_grad():
        logits = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        want = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            batch["labels"][:, 1:].reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
        total, count = response_nll(module, batch)
    assert int(count) == int((batch["labels"] != IGNORE).sum())
    assert float(total) == pytest.approx(float(want), rel=1e-5)


def batch_order(examples, idx, batch_size):
    from fedfm.data.batching import bucketed_batches

    return list(bucketed_batches(examples.lengths, idx, batch_size, None)[0])


def test_chat_template_round_trip_keeps_framing_and_response(built):
    # Prepare
    _, _, examples, _ = built
    tok = examples.tokenizer
    prompt, response = "Is this review fresh or rotten? A fine film.", "fresh"
    # Execute
    ids, n_prompt = encode_chat(tok, prompt, response, max_length=512)
    short, n_short = encode_chat(tok, prompt + " word" * 200, response, max_length=48)
    # Assert
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
        tokenize=False,
    )
    assert rendered.startswith(tok.decode(ids))
    assert tok.decode(ids[n_prompt:], skip_special_tokens=True) == response
    assert ids[-1] == tok.eos_token_id
    assert len(short) == 48
    assert tok.decode(short[n_short:], skip_special_tokens=True) == response
    head = tok.decode(short[:n_short])
    assert head.startswith("<|im_start|>system") and head.endswith("<|im_start|>assistant\n")


def test_left_padded_batched_greedy_equals_one_by_one(built):
    # Prepare
    _, _, examples, module = built
    prompts = [examples.input_ids[i][: examples.prompt_lengths[i]] for i in range(7)]
    assert len({len(p) for p in prompts}) > 1  # padding really happens
    # Execute
    batched = generate(module, examples.tokenizer, prompts, 4, 6)
    alone = [generate(module, examples.tokenizer, [p], 1, 6)[0] for p in prompts]
    # Assert
    assert batched == alone


def test_evaluate_reports_perplexity_and_exact_match_per_category(built):
    _, task, examples, module = built
    metrics = task.evaluate(module, examples, np.arange(len(examples)), 8)
    assert metrics["perplexity"] == pytest.approx(np.exp(metrics["loss"]))
    assert 0.0 <= metrics["exact_match"] <= 1.0
    assert {k for k in metrics if k.startswith("exact_match_")} == {
        "exact_match_sentiment",
        "exact_match_debate_party",
        "exact_match_debate_speaker",
        "exact_match_hamlet_speaker",
    }


def test_a_federated_run_writes_a_data_card_and_resumes_bitwise(tmp_path):
    # Prepare
    cfg = load_config(None, TINY_LLAMA)
    full = run(cfg, tmp_path / "full")
    crashed = tmp_path / "crashed"
    # Execute
    resumed = crash_and_resume(cfg, crashed)
    # Assert
    assert states_equal(full, resumed)
    rows = records(tmp_path / "full")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all("exact_match" in r and "perplexity" in r for r in rows)
    assert rows[-1]["perplexity"] < rows[0]["perplexity"]  # training lowers held-out loss
    import json

    card = json.loads((tmp_path / "full" / "data_card.json").read_text())
    assert card["splits"]["central_test"] == 16
    assert sum(card["counts"].values()) == card["num_examples"] == 80
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["primary_metric"] == "exact_match" and "final_exact_match" in summary


STRATEGY_EXTRA = {
    "krum": ["strategy.num_byzantine=0"],
    "multi-krum": ["strategy.num_byzantine=0"],
    "hetlora": ["strategy.lora_ranks=[2, 4, 8]"],
    "flexlora": ["strategy.lora_ranks=[2, 4, 8]"],
}


@pytest.mark.parametrize("name", sorted(STRATEGY_EXTRA.keys() | {"fedavg", "fedadam", "scaffold"}))
def test_strategies_and_the_attack_harness_run_on_a_causal_lm(name, tmp_path):
    from fedfm.strategies.registry import STRATEGIES

    assert name in STRATEGIES
    attack = ["attack.kind=sign-flip", "attack.fraction=0.25"] if name == "krum" else []
    cfg = load_config(
        None,
        [
            *TINY_LLAMA,
            "rounds=1",
            "eval.initial=false",
            "task.generate_eval=0",
            "strategy.clients_per_round=4",
            f"strategy.name={name}",
            *STRATEGY_EXTRA.get(name, []),
            *attack,
        ],
    )
    state = run(cfg, tmp_path)
    (row,) = records(tmp_path)
    assert row["num_failures"] == 0 and np.isfinite(row["perplexity"])
    assert all(torch.isfinite(v).all() for v in state.values())


def test_a_client_without_classification_examples_keeps_the_files_strict_json(tmp_path):
    # One category per client: the hamlet client's local test has no exact-match answer (NaN)
    split = ["task.categories=['sentiment', 'hamlet']", "partition.name=natural"]
    split += ["partition.num_clients=2", "strategy.clients_per_round=2", "rounds=1"]
    cfg = load_config(None, [*TINY_LLAMA, *split, "eval.federated_every=1"])
    run(cfg, tmp_path / "fed")
    run(load_config(None, [*TINY_LLAMA, *split, "mode=local-only"]), tmp_path / "local")
    import json

    def strict(text: str) -> object:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))

    fed = [strict(line) for line in (tmp_path / "fed" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(v is None for v in fed[-1]["client_exact_match"].values()) == [False, True]
    summary = strict((tmp_path / "local" / "summary.json").read_text())
    assert isinstance(summary["local_only_mean"], float)  # the other client's score
    assert summary["local_only_max"] == summary["local_only_min"] == summary["local_only_mean"]
