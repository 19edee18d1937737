"""Compression on the default job: final accuracy against bytes on the wire, both ways.

One run per codec, one after another in this call, every one with the same data, model,
seed, rounds and sampled clients (asserted): the uplink as fp32 ("none"), fp16, int8, int4
(stochastic rounding, one scale per tensor), top-k 10% and top-k 1% (error feedback), and int8
both ways. Bytes are the serialised payloads summed over rounds (`bytes_up`, `bytes_down`),
headers included; ratios are to the fp32 run. Targets: int8 loses at most 1 accuracy point
at <= 1/4 of the fp32 bytes (uplink; both ways: the total); top-k 10% with error feedback
loses at most 2 points. Runs are kept in runs/bench-compression/<name> (finished runs with
the same config are reused).

Usage: python benchmarks/compression.py [--rounds 10] [--only none,int8]
       python benchmarks/compression.py --quick   (configs/tiny.toml, 2 rounds: seconds)
"""

from __future__ import annotations

import argparse
from typing import Any

from common import ROOT, default_config, run, runs_dir, table

from fedfm.config import Config, config_from_dict, load_config

INT8 = [{"name": "int8"}]
RUNS: dict[str, dict[str, list[dict[str, Any]]]] = {
    "none": {"uplink": []},
    "fp16": {"uplink": [{"name": "fp16"}]},
    "int8": {"uplink": INT8},
    "int4": {"uplink": [{"name": "int4"}]},
    "topk-10": {"uplink": [{"name": "topk", "fraction": 0.1}]},
    "topk-1": {"uplink": [{"name": "topk", "fraction": 0.01}]},
    "int8-both": {"uplink": INT8, "downlink": INT8},
}
LABELS = {
    "none": "none (fp32)",
    "topk-10": "top-k 10% + EF",
    "topk-1": "top-k 1% + EF",
    "int8-both": "int8 both ways",
}


def target(name: str, loss: float, up: float, total: float) -> str:
    """Whether a run meets its target (`-` when it has none); `loss` in accuracy points."""
    if name == "int8":
        return _verdict(loss <= 1 and up <= 0.25, f"loss <= 1 pt at up <= 1/4: {up:.3f}")
    if name == "int8-both":
        return _verdict(loss <= 1 and total <= 0.25, f"loss <= 1 pt at total <= 1/4: {total:.3f}")
    if name == "topk-10":
        return _verdict(loss <= 2, "loss <= 2 pt")
    return "-"


def _verdict(ok: bool, what: str) -> str:
    return f"{'yes' if ok else 'NO'} ({what})"


def config(name: str, rounds: int | None, threads: int | None, quick: bool) -> Config:
    """The default job (or configs/tiny.toml with --quick) with this run's pipelines."""
    pipeline = {"uplink": [], "downlink": [], **RUNS[name]}
    changes: dict[str, Any] = {"pipeline": pipeline, "backend": {"threads": threads}}
    if rounds is not None:
        changes["rounds"] = rounds
    if not quick:
        return default_config(changes)
    raw = load_config(ROOT / "configs" / "tiny.toml").model_dump()
    raw.update(pipeline=pipeline, rounds=rounds or 2)
    raw["backend"]["threads"] = threads
    return config_from_dict(raw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=None, help="default: the config's")
    ap.add_argument("--only", default="", help=f"comma-separated runs among {','.join(RUNS)}")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--quick", action="store_true", help="configs/tiny.toml, 2 rounds")
    args = ap.parse_args()
    out = runs_dir("bench-compression", args.quick)
    only = [x for x in args.only.split(",") if x] or list(RUNS)
    names = ["none", *[n for n in RUNS if n in only and n != "none"]]  # fp32 is the reference
    results: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        print(f"running {LABELS.get(name, name)} ...", flush=True)
        results[name] = run(config(name, args.rounds, args.threads, args.quick), out / name)
    # Same work everywhere: the same rounds, the same clients asked, nobody failed.
    ref = [(r["round"], r.get("clients")) for r in results["none"]]
    for name, records in results.items():
        assert [(r["round"], r.get("clients")) for r in records] == ref, name
        assert all(r.get("num_failures", 0) == 0 for r in records), name
    base = results["none"]
    base_acc = base[-1]["accuracy"]
    base_up = sum(r["bytes_up"] for r in base)
    base_down = sum(r["bytes_down"] for r in base)
    rows = []
    for name, records in results.items():
        acc = records[-1]["accuracy"]
        up = sum(r["bytes_up"] for r in records)
        down = sum(r["bytes_down"] for r in records)
        delta = 100 * (acc - base_acc)  # accuracy points gained (negative: lost)
        ratio_up, ratio_total = up / base_up, (up + down) / (base_up + base_down)
        rows.append(
            [
                LABELS.get(name, name),
                f"{acc:.4f}",
                f"{delta:+.1f}",
                f"{up:,}",
                f"{down:,}",
                f"{ratio_up:.3f}",
                f"{down / base_down:.3f}",
                f"{ratio_total:.3f}",
                target(name, -delta, ratio_up, ratio_total),
            ]
        )
    rounds = base[-1]["round"]
    print()
    if args.quick:
        print(f"--quick: configs/tiny.toml (tiny random BERT, synthetic data), {rounds} rounds")
    else:
        print(f"Default job (MiniLM + LoRA r=8, natural split, 10 of 50 clients), {rounds} rounds")
    header = [
        "uplink",
        "final accuracy",
        "Δ points",
        "bytes up",
        "bytes down",
        "up / fp32",
        "down / fp32",
        "total / fp32",
        "target",
    ]
    print(table(header, rows))


if __name__ == "__main__":
    main()
