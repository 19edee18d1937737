"""Robust aggregation under attack on the default job (natural split by movie).

20% of the 50 clients are malicious: `sign-flip` sends -4 x its honest update, `scale`
sends 20 x its update (model-replacement boosting). Rows: FedAvg and the robust strategies;
columns: clean, sign-flip, scale. The norm bound is set to the median honest update norm of
the clean FedAvg run's first round (printed). Runs are kept in runs/bench-robust/.

Usage: python benchmarks/robust.py [--rounds 5]
       python benchmarks/robust.py --quick   (tiny random BERT, 1 round, 2 steps: seconds)
"""

from __future__ import annotations

import argparse

from common import QUICK, default_config, run, runs_dir, table

STRATEGIES = {
    "FedAvg": {"name": "fedavg"},
    "median": {"name": "median"},
    "trimmed mean (beta=0.2)": {"name": "trimmed-mean", "trim_beta": 0.2},
    "Krum (f=2)": {"name": "krum", "num_byzantine": 2},
    "norm-bound": {"name": "norm-bound"},
}
ATTACKS = {
    "clean": {"kind": "none"},
    "sign-flip 20% (x4)": {"kind": "sign-flip", "fraction": 0.2, "strength": 4.0},
    "scale 20% (x20)": {"kind": "scale", "fraction": 0.2, "strength": 20.0},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--quick", action="store_true", help="tiny random BERT, 1 round, 2 steps")
    args = ap.parse_args()
    base: dict = {"rounds": args.rounds, "backend": {"threads": args.threads}}
    if args.quick:
        base = {**base, **QUICK, "rounds": 1, "client": {"max_steps": 2}}
    out = runs_dir("bench-robust", args.quick)
    per_round = {"clients_per_round": 7} if args.quick else {}  # Krum f=2 needs n > 6
    clean = run(
        default_config({**base, "strategy": {"name": "fedavg", **per_round}}), out / "fedavg-clean"
    )
    bound = next(r["update_norm"] for r in clean if r["round"] == 1)
    print(f"norm bound = median honest update norm of round 1 = {bound:.4f}", flush=True)
    rows = []
    for label, strategy in STRATEGIES.items():
        row = [label]
        for attack_label, attack in ATTACKS.items():
            strat = {**strategy, **per_round}
            if strat["name"] == "norm-bound":
                strat["norm_bound"] = bound
            slug = f"{strat['name']}-{attack['kind']}"
            cfg = default_config({**base, "strategy": strat, "attack": attack})
            print(f"running {label} / {attack_label} ...", flush=True)
            records = run(cfg, out / slug)
            row.append(f"{records[-1]['accuracy']:.3f}")
            print(f"  accuracy {row[-1]}", flush=True)
        rows.append(row)
    print()
    if args.quick:
        print("--quick: tiny random BERT, IID split, 12 clients, 7 per round, 1 round")
    else:
        print(f"Natural split, 50 clients, 10 per round, {args.rounds} rounds, MiniLM + LoRA r=8")
    print(table(["strategy", *ATTACKS], rows))


if __name__ == "__main__":
    main()
