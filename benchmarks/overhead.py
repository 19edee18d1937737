"""Framework overhead: fedfm in-process rounds vs a bare PyTorch loop doing the same work.

Both sides evaluate the starting point (round 0), train the same sampled clients on the same
batches (same composition, order and dropout seeds) of MiniLM + LoRA r=8 for the same steps,
FedAvg the updates and evaluate the final state on the same central test split. Model
loading and tokenisation happen before the clock starts. Per-client and personalisation
evaluation are off on both sides. Before it prints a ratio, the script checks that both sides
trained the same clients for the same steps and evaluated the same two states. Repeats
alternate a/b; it prints each wall time, the median ratio b/a, and the largest difference
between the two final states (they should agree).

Usage: python benchmarks/overhead.py [--repeats 5] [--rounds 2] [--clients 4] [--steps 3]
       python benchmarks/overhead.py --quick   (tiny random BERT, 1 repeat: seconds)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedfm.backends.inprocess import InProcessBackend
from fedfm.build import Built, build
from fedfm.config import load_config
from fedfm.data.batching import bucketed_batches, collate
from fedfm.run import loop_parts
from fedfm.server.loop import SilentProgress, run_rounds

QUICK = [
    "task.model=tiny-bert",
    "task.dataset=synthetic",
    "task.max_length=32",
    "partition.name=iid",
    "partition.num_clients=8",
]


class Work(SilentProgress):
    """What fedfm did: which clients trained how many steps, and the round records."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []
        self.records: list = []

    def client_done(self, reply) -> None:
        self.steps.append((reply.client_id, int(reply.metrics["steps"])))

    def on_round_end(self, record) -> None:
        self.records.append(record)


def bare_loop(
    exp: Built, rounds: int, clients: int, steps: int, seed: int
) -> tuple[dict, list[tuple[int, int]], list[int]]:
    """The same job as plain PyTorch: no strategy, backend, pipeline or checkpoint.

    Returns:
        The final state, (client, steps) per client trained, and the rounds evaluated.
    """
    model, data, cfg = exp.model, exp.data, exp.cfg
    params = model.params
    ds = data.examples
    work = []
    lengths = ds.lengths
    glob = {k: v.clone() for k, v in exp.initial_state.items()}
    evaluate(exp, glob)  # round 0: the starting point, as fedfm evaluates it
    evaluated = [0]
    for r in range(1, rounds + 1):
        rng = np.random.default_rng([seed, r, 0x5A3D])
        picked = sorted(
            int(c) for c in rng.choice(np.asarray(data.client_ids), clients, replace=False)
        )
        deltas, weights = [], []
        for c in picked:
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(glob[k])
            crng = np.random.default_rng([seed, r, c])
            torch.manual_seed(int(crng.integers(2**62)))
            opt = torch.optim.AdamW(
                list(params.values()), lr=cfg.client.lr, weight_decay=cfg.client.weight_decay
            )
            model.module.train()
            train = data.clients[c].train
            done = 0
            for i, batch in enumerate(
                bucketed_batches(lengths, train, cfg.client.batch_size, crng)
            ):
                if i == steps:
                    break
                ids, mask, labels = collate(ds, batch, ds.pad_id)
                out = model.module(input_ids=ids, attention_mask=mask).logits
                loss = torch.nn.functional.cross_entropy(out, labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.client.grad_clip)
                opt.step()
                done += 1
            work.append((c, done))
            deltas.append({k: p.detach() - glob[k] for k, p in params.items()})
            weights.append(len(train))
        total = sum(weights)
        glob = {
            k: v
            + sum(d[k].double() * (w / total) for d, w in zip(deltas, weights, strict=True)).float()
            for k, v in glob.items()
        }
    evaluate(exp, glob)  # the final state, as fedfm does after the last round
    evaluated.append(rounds)
    return glob, work, evaluated


def evaluate(exp: Built, state: dict) -> float:
    """Central accuracy of `state`, batched by length under inference_mode."""
    model, data, cfg = exp.model, exp.data, exp.cfg
    ds = data.examples
    with torch.no_grad():
        for k, p in model.params.items():
            p.copy_(state[k])
    model.module.eval()
    correct = 0
    with torch.inference_mode():
        for batch in bucketed_batches(ds.lengths, data.central_test, cfg.eval.batch_size, None):
            ids, mask, labels = collate(ds, batch, ds.pad_id)
            logits = model.module(input_ids=ids, attention_mask=mask).logits
            correct += int((logits.argmax(-1) == labels).sum())
    return correct / len(data.central_test)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny random BERT, 1 repeat")
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats
    overrides = [
        *(QUICK if args.quick else []),
        f"rounds={args.rounds}",
        f"strategy.clients_per_round={args.clients}",
        f"client.max_steps={args.steps}",
        "data.test_size=256",
        f"eval.every={args.rounds}",
        "eval.federated_every=null",
        "eval.personalize_steps=0",
    ]
    cfg = load_config(Path(__file__).parents[1] / "configs" / "default.toml", overrides)
    times_a, times_b = [], []
    max_diff = 0.0
    for rep in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            exp = build(cfg)
            t = time.perf_counter()
            ref, bare_work, bare_evaluated = bare_loop(
                exp, args.rounds, args.clients, args.steps, cfg.seed
            )
            times_a.append(time.perf_counter() - t)
            exp = build(cfg)
            work = Work()
            parts = loop_parts(exp, InProcessBackend(exp.runtime), Path(tmp), [work], work)
            t = time.perf_counter()
            out = run_rounds(parts, exp.initial_state)
            times_b.append(time.perf_counter() - t)
            # both sides did the same work: same clients, same steps, two evaluations
            assert work.steps == bare_work, (work.steps, bare_work)
            scored = [r.round for r in work.records if r.central.get("accuracy") is not None]
            assert scored == bare_evaluated == [0, args.rounds]
            assert not any(r.client_metrics for r in work.records)
            max_diff = max(max_diff, max(float((out[k] - ref[k]).abs().max()) for k in ref))
        print(
            f"repeat {rep + 1}: bare {times_a[-1]:.2f} s, fedfm {times_b[-1]:.2f} s, "
            f"ratio {times_b[-1] / times_a[-1]:.3f}"
        )
    ratios = [b / a for a, b in zip(times_a, times_b, strict=True)]
    med_a, med_b = statistics.median(times_a), statistics.median(times_b)
    print(f"bare loop median {med_a:.2f} s; fedfm median {med_b:.2f} s")
    ratio = statistics.median(ratios)
    print(f"overhead ratio fedfm/bare (median of {repeats} paired repeats): {ratio:.3f}")
    print(f"max |fedfm - bare| over final trainable state: {max_diff:.3g}")


if __name__ == "__main__":
    main()
