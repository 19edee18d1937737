"""Strategies on the default job at Dirichlet alpha = 0.1 (strong label skew), with the
baselines: final central accuracy and the first round reaching 0.70.

Every run uses the same data split, model, seed and budget: 10 rounds, 10 of 50 clients,
one local epoch capped at 10 steps (`--max-steps`), client lr 5e-3 (`--lr`). The cap keeps
a round's cost independent of which clients are drawn. At alpha = 0.1 most clients hold one
label and a few hold most of the data (the largest 1,738 training reviews, the smallest 8),
so example-weighted averaging is dominated by a few single-label clients: in probes, FedAvg
sat at the majority class or flipped to the minority class at lr 5e-3, at lr 1e-3, and with
the 10-step cap. Runs are kept in runs/bench-strategies/<name> (finished runs with the same
config are reused), so `fedfm compare` can overlay them afterwards.

Usage: python benchmarks/strategies.py [--rounds 10] [--only fedavg,fedprox]
       python benchmarks/strategies.py --quick   (tiny random BERT, 2 rounds, 2 steps: seconds)
"""

from __future__ import annotations

import argparse
import time

from common import QUICK, default_config, rounds_to, run, runs_dir, table

RUNS = {
    "FedAvg": {"strategy": {"name": "fedavg"}},
    "FedProx (mu=0.01)": {"strategy": {"name": "fedprox", "proximal_mu": 0.01}},
    "FedAdam (eta=1e-2)": {"strategy": {"name": "fedadam"}},
    "FedYogi (eta=1e-2)": {"strategy": {"name": "fedyogi"}},
    "SCAFFOLD": {"strategy": {"name": "scaffold"}},
    "local-only": {"mode": "local-only"},
    "centralised": {"mode": "centralised"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--only", default="", help="comma-separated run names (default: all)")
    ap.add_argument("--lr", type=float, default=5e-3, help="client learning rate")
    ap.add_argument("--max-steps", type=int, default=10, help="cap on local steps per round")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--quick", action="store_true", help="tiny random BERT, 2 rounds, 2 steps")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.max_steps = 2, 2
    base = runs_dir("bench-strategies", args.quick)
    only = [x for x in args.only.split(",") if x]
    rows = []
    for label, changes in RUNS.items():
        slug = label.split(" ")[0].lower()
        if only and slug not in only:
            continue
        cfg = default_config(
            {
                "partition": {"name": "dirichlet", "alpha": 0.1},
                "client": {"lr": args.lr, "max_steps": args.max_steps},
                "backend": {"threads": args.threads},
                "rounds": args.rounds,
                **(QUICK if args.quick else {}),
                **changes,
            }
        )
        if args.quick:  # the quick split is IID-sized: keep the skew, fewer clients per round
            cfg = cfg.model_copy(
                update={"strategy": cfg.strategy.model_copy(update={"clients_per_round": 4})}
            )
        t = time.perf_counter()
        print(f"running {label} ...", flush=True)
        records = run(cfg, base / slug)
        if cfg.mode == "federated":  # every round ran and was logged once
            assert [r["round"] for r in records] == list(range(0, args.rounds + 1))
        final = records[-1]
        if cfg.mode == "local-only":
            acc = list(final["client_accuracy"].values())
            mean = sum(acc) / len(acc)
            std = (sum((a - mean) ** 2 for a in acc) / len(acc)) ** 0.5
            rows.append(
                [
                    label,
                    f"{mean:.3f} ± {std:.3f} (client tests)",
                    "n/a",
                    f"{time.perf_counter() - t:.0f}",
                ]
            )
        else:
            best = max(r["accuracy"] for r in records)
            rows.append(
                [
                    label,
                    f"{final['accuracy']:.3f} (best {best:.3f})",
                    rounds_to(records, 0.70),
                    f"{time.perf_counter() - t:.0f}",
                ]
            )
        print(rows[-1], flush=True)
    print()
    print(
        f"Dirichlet alpha=0.1, 50 clients, 10 per round, {args.rounds} rounds, "
        f"MiniLM + LoRA r=8, client lr {args.lr}, at most {args.max_steps} local steps"
    )
    print(table(["strategy", "final accuracy", "rounds to 0.70", "wall s"], rows))


if __name__ == "__main__":
    main()
