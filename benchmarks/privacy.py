"""Client-level DP and secure aggregation on the default job: accuracy at a privacy budget,
and what masking costs.

(a) Accuracy. LoRA and FFA-LoRA (Sun et al. ICLR 2024, https://arxiv.org/abs/2403.12313:
A frozen at its random init, only B and the head train and travel) on the default job,
without DP and with DP-FedAvg at ε ∈ {1, 3, 8}, δ = 1e-5: each update clipped to `clip_norm`
(`clip` stage), Gaussian noise added by the server to the sum (`noise` stage, central
mode), clients weighed uniformly (`privacy.weighting = "uniform"`, which the noise stage
requires), and σ calibrated by `privacy.target_epsilon` for the planned rounds. Runs go one
after another in this call; each row gives σ, the final ε the accountant reports, the final
central accuracy, the share of client updates clipped (mean over rounds), the run's wall
time (build, σ calibration and rounds; the first run also pays for imports) and the sum of
its rounds' seconds (training, noise and accounting, evaluation, checkpoints).

Sampling and accounting. The default job samples 10 of its 50 clients a round. Accounted as
what it is, a fixed-size cohort drawn without replacement (`privacy.sampling = "fixed"`:
RDP only, replace-one adjacency, so the Gaussian gets σ/2), ε = 8 over 10 rounds needs
σ = 2.05. With Poisson sampling at q = 10/50 (each client takes part independently with
probability 0.2: 10 clients expected, the cohort size varies) and the PLD accountant
(add-or-remove-one client, the notion of McMahan et al. 2018), ε = 8 needs σ = 0.77 (RDP:
0.83). The runs therefore switch the sampler to Poisson (`privacy.sampling = "poisson"`,
`privacy.accountant = "pld"`): the mechanism that runs is the one accounted, not an
approximation of it. The rows without DP use the same sampler and uniform weights, so that
clip + noise is the only difference (asserted: every run sees the same rounds and the same
clients). Per-round metrics the clients send (train loss, update norms) are not covered by
the guarantee; per-client evaluation and personalisation are off.

(b) Secure aggregation. `measure_overhead` runs the whole SecAgg+ protocol (complete graph,
32-bit sums) in one process for cohorts of 10 and 50, each client holding as many values as
one update of the default job (its LoRA state: the factors of `query` and `value` and the
head, counted from the built model), against a plain sum of the same float32 vectors
(serialise, parse, sum); it refuses a secure sum that differs from the plain one beyond the
fixed-point bound. Times are the median of `--repeats`; bytes are every protocol message.

Usage: python benchmarks/privacy.py [--rounds 10] [--set client.max_steps=4 ...]
           [--epsilons 1,3,8] [--adapters lora,ffa-lora] [--clip-norm 1.0] [--part all]
       python benchmarks/privacy.py --quick   (configs/tiny.toml, 2 rounds, ε = 8, RDP;
                                               cohorts 5 and 10: seconds)
Runs are kept in runs/bench-privacy/<name> (`--runs` names another folder, for runs with other
`--set`s; finished runs with the same config are reused).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import time
from collections.abc import Sequence
from typing import Any

from common import ROOT, run, runs_dir, table

from fedfm.config import Config, load_config
from fedfm.privacy.secagg.simulation import Overhead, measure_overhead

DELTA = 1e-5
ADAPTERS = {"lora": "LoRA", "ffa-lora": "FFA-LoRA"}
STRATEGY = {"lora": "fedavg", "ffa-lora": "ffa-lora"}  # FFA-LoRA is a strategy: A frozen
EVAL_OFF = ["eval.federated_every=null", "eval.personalize_steps=0"]


def overrides(adapter: str, epsilon: float | None, clip_norm: float, accountant: str) -> list[str]:
    """The `--set` overrides of one run (the same for `fedfm run`)."""
    common = [
        f"strategy.name={STRATEGY[adapter]}",
        "privacy.sampling=poisson",
        "privacy.weighting=uniform",
    ]
    if epsilon is None:
        return [*common, "pipeline.uplink=[]"]
    return [
        *common,
        f"privacy.accountant={accountant}",
        f"privacy.delta={DELTA}",
        f"privacy.target_epsilon={epsilon}",
        f'pipeline.uplink=[{{name="clip", clip_norm={clip_norm}}}, '
        '{name="noise", mode="central"}]',
    ]


def config(job: str, changes: list[str], rounds: int | None, sets: Sequence[str]) -> Config:
    """`configs/<job>` with per-client evaluation off, a run's changes, then `--set`."""
    extra = [f"rounds={rounds}"] if rounds is not None else []
    return load_config(ROOT / "configs" / job, [*EVAL_OFF, *changes, *extra, *sets])


def update_size(cfg: Config) -> int:
    """Values in one client update of `cfg`'s job: its trainable state, from the built model."""
    from fedfm.build import build

    return sum(t.numel() for t in build(cfg).initial_state.values())


def accuracy_part(args: argparse.Namespace, job: str, epsilons: list[float]) -> None:
    """Run every (adapter, ε) of part (a), check they did the same work, print the table."""
    out = runs_dir(args.runs, args.quick)
    results: dict[tuple[str, float | None], tuple[list[dict[str, Any]], list[str]]] = {}
    for adapter in args.adapters.split(","):
        for epsilon in [None, *epsilons]:
            changes = overrides(adapter, epsilon, args.clip_norm, args.accountant)
            name = f"{adapter}-{'nodp' if epsilon is None else f'eps{epsilon:g}'}"
            sets = " ".join(f"--set {shlex.quote(c)}" for c in changes)
            print(f"running {name}: {sets}", flush=True)
            t = time.perf_counter()
            cfg = config(job, changes, args.rounds, args.sets)
            records = run(cfg, out / name)
            wall = time.perf_counter() - t
            rounds_s = sum(r.get("seconds") or 0.0 for r in records)
            times = [f"{wall:.0f}" if wall >= rounds_s else "reused", f"{rounds_s:.0f}"]
            results[(adapter, epsilon)] = (records, times)
    check_same_work(results)
    rows = []
    for (adapter, epsilon), (records, times) in results.items():
        last = records[-1]
        clipped = [r["clip/clipped"] for r in records if r.get("clip/clipped") is not None]
        rows.append(
            [
                ADAPTERS[adapter],
                "no DP" if epsilon is None else f"{epsilon:g}",
                "-" if epsilon is None else f"{last['noise/noise_multiplier']:.4f}",
                "∞" if epsilon is None else f"{last['noise/epsilon']:.4f}",
                f"{last['accuracy']:.4f}",
                f"{sum(clipped) / len(clipped):.2f}" if clipped else "-",
                *times,
            ]
        )
    rounds = next(iter(results.values()))[0][-1]["round"]
    print()
    where = "configs/tiny.toml (tiny random BERT, synthetic data)" if args.quick else "default job"
    q = f"{cfg.strategy.clients_per_round} / {cfg.partition.num_clients}"
    print(
        f"{where}, {rounds} rounds, Poisson sampling at q = {q}, uniform weights; DP: clip_norm "
        f"{args.clip_norm:g} + central noise, {args.accountant.upper()} accountant, δ = {DELTA}"
    )
    header = ["adapter", "ε target", "σ", "final ε", "final accuracy", "clipped"]
    header += ["wall s", "rounds s"]
    print(table(header, rows))
    norms = []
    for adapter in args.adapters.split(","):
        first = next(r for r in results[(adapter, None)][0] if r["round"] == 1)
        norms.append(f"{ADAPTERS[adapter]} {first['update_norm']:.3f}")
    print(f"median update norm in round 1 without DP: {', '.join(norms)}")


def check_same_work(results: dict[tuple[str, float | None], Any]) -> None:
    """Every run: the same rounds and clients, no failure; every DP run: ε every round,
    never above its target, the clip stage before the noise."""
    ref = None
    for (adapter, epsilon), (records, _) in results.items():
        plan = [(r["round"], r.get("clients")) for r in records]
        ref = ref or plan
        assert plan == ref, f"{adapter} at ε={epsilon} saw other rounds or clients"
        assert all(r.get("num_failures", 0) == 0 for r in records), (adapter, epsilon)
        if epsilon is None:
            assert not any("noise/epsilon" in r for r in records), (adapter, epsilon)
            continue
        eps = [r["noise/epsilon"] for r in records[1:]]
        assert len(eps) == len(records) - 1 and eps == sorted(eps), (adapter, epsilon)
        assert eps[-1] <= epsilon and records[-1]["noise/delta"] == DELTA, (adapter, epsilon)
        assert all("clip/norm" in r for r in records[1:]), (adapter, epsilon)
    for epsilon in {e for _, e in results if e is not None}:
        sigmas = {results[k][0][-1]["noise/noise_multiplier"] for k in results if k[1] == epsilon}
        assert len(sigmas) == 1, f"ε={epsilon}: adapters calibrated different σ {sigmas}"


def secagg_part(cohorts: list[int], length: int, repeats: int) -> None:
    """Time and bytes of secure aggregation vs a plain sum, per cohort; print the table."""
    rows = []
    for n in cohorts:
        runs = [measure_overhead(n, length, seed=s) for s in range(repeats)]
        for o in runs:  # both sides summed the same n vectors of `length` floats
            assert (o.num_clients, o.vector_length, o.bytes_plain) == (n, length, 4 * n * length)
        rows.append(_secagg_row(runs))
    print()
    print(
        f"Secure aggregation (SecAgg+, complete graph, 32-bit sums, every client and the server "
        f"in one process) vs a plain float32 sum, {length:,} values per client, median of "
        f"{repeats}"
    )
    header = [
        "cohort",
        "degree / threshold",
        "plain s",
        "secure s",
        "of which clients / server",
        "time ×",
        "plain bytes",
        "secure up",
        "secure down",
        "up ×",
        "total ×",
    ]
    print(table(header, rows))


def _secagg_row(runs: list[Overhead]) -> list[str]:
    o = runs[0]

    def median(key: str) -> float:
        return statistics.median(float(getattr(r, key)) for r in runs)

    plain, secure = median("seconds_plain"), median("seconds_secure")
    return [
        str(o.num_clients),
        f"{o.degree} / {o.threshold}",
        f"{plain:.4f}",
        f"{secure:.3f}",
        f"{median('seconds_secure_clients'):.3f} / {median('seconds_secure_server'):.3f}",
        f"{secure / plain:.0f}",
        f"{o.bytes_plain:,}",
        f"{o.bytes_secure_up:,}",
        f"{o.bytes_secure_down:,}",
        f"{o.bytes_secure_up / o.bytes_plain:.3f}",
        f"{(o.bytes_secure_up + o.bytes_secure_down) / o.bytes_plain:.3f}",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=None, help="default: the config's")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="key=value, any run")
    ap.add_argument("--epsilons", default="1,3,8", help="comma-separated targets")
    ap.add_argument("--adapters", default="lora,ffa-lora", help=f"among {','.join(ADAPTERS)}")
    ap.add_argument("--clip-norm", type=float, default=1.0, help="the clip stage's bound C")
    ap.add_argument("--accountant", default="pld", choices=["pld", "rdp"])
    ap.add_argument("--part", default="all", choices=["all", "accuracy", "secagg"])
    ap.add_argument("--repeats", type=int, default=3, help="secure-aggregation timings")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--runs", default="bench-privacy", help="runs/<this> keeps the runs")
    ap.add_argument("--quick", action="store_true", help="configs/tiny.toml, 2 rounds, ε = 8")
    args = ap.parse_args()
    job, epsilons = "default.toml", [float(e) for e in args.epsilons.split(",") if e]
    cohorts = [10, 50]
    if args.quick:  # PLD's calibration at tiny's q = 0.5 takes about a minute: RDP
        job, args.rounds, epsilons, args.accountant = "tiny.toml", 2, [8.0], "rdp"
        cohorts, args.repeats = [5, 10], 1
    if args.threads is not None:
        args.sets = [f"backend.threads={args.threads}", *args.sets]
    if any(a not in ADAPTERS for a in args.adapters.split(",")):
        ap.error(f"--adapters: among {', '.join(ADAPTERS)}")
    if args.part in ("all", "accuracy"):
        accuracy_part(args, job, epsilons)
    if args.part in ("all", "secagg"):
        length = update_size(config(job, ["strategy.name=fedavg"], args.rounds, args.sets))
        secagg_part(cohorts, length, args.repeats)


if __name__ == "__main__":
    main()
