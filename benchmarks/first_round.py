"""Time to the first round of `configs/digits.toml`, measured beside torch's own start-up.

Each figure is the wall time from spawning a fresh `python` process to an event, the median
of `--repeats` spawns, all measured in this one run:

- `import torch`: a bare `python -c "import torch"` until it exits;
- `import torch + first optimiser`: the same plus constructing one `torch.optim.SGD`, which
  imports `torch._dynamo` (every torch training loop pays it on its first optimiser);
- `fedfm round 1`: `fedfm run configs/digits.toml` until round 1's record is in
  `metrics.jsonl` (the CLI, config, data, model, the round-0 evaluation of the starting
  point, 5 clients' training, evaluation, checkpoint);
- `warm round`: the median wall time of the rounds after the first (from the records).

Both sides do their whole work: the script checks the fedfm run logged every round it asked
for before printing.

    python benchmarks/first_round.py            # 5 repeats
    python benchmarks/first_round.py --quick    # 1 repeat, 2 rounds (seconds; the test suite)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "digits.toml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def time_python(code: str) -> float:
    """Seconds from spawning `python -c code` to its exit."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV)
    return time.perf_counter() - t


def time_first_round(rounds: int) -> tuple[float, list[float]]:
    """Seconds from spawning `fedfm run` to round 1's record, and every round's seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "metrics.jsonl"
        args = ["run", str(DIGITS), "--set", f"rounds={rounds}", "--out", tmp]
        t = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedfm.cli", *args],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        first = None
        while proc.poll() is None:
            if first is None and metrics.exists() and metrics.read_text().count("\n") >= 2:
                first = time.perf_counter() - t
            time.sleep(0.002)
        if proc.returncode != 0:
            raise SystemExit(
                f"fedfm run failed: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        first = first if first is not None else time.perf_counter() - t
        records = [json.loads(x) for x in metrics.read_text().splitlines()]
    if [r["round"] for r in records] != list(range(0, rounds + 1)):
        raise SystemExit(f"fedfm logged rounds {[r['round'] for r in records]}, not 0..{rounds}")
    return first, [float(r["seconds"]) for r in records if r["round"] > 0]


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 repeat of a 2-round job")
    args = parser.parse_args()
    repeats, rounds = (1, 2) if args.quick else (args.repeats, args.rounds)
    bare, optim, first, warm = [], [], [], []
    for _ in range(repeats):
        bare.append(time_python("import torch"))
        optim.append(
            time_python("import torch; torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1)")
        )
        t_first, seconds = time_first_round(rounds)
        first.append(t_first)
        warm.append(statistics.median(seconds[1:]))
    med = {
        k: statistics.median(v)
        for k, v in {"bare": bare, "optim": optim, "first": first, "warm": warm}.items()
    }
    print(f"digits job, {rounds} rounds, median of {repeats} spawn(s), seconds from process start")
    print(f"  import torch                      {med['bare']:6.2f}")
    print(f"  import torch + first optimiser    {med['optim']:6.2f}")
    print(f"  fedfm run: end of round 1         {med['first']:6.2f}")
    print(f"  fedfm run: warm round             {med['warm']:6.2f}")
    print(
        f"round 1 ends {med['first'] - med['bare']:.2f} s after torch's import time "
        f"({med['first'] - med['optim']:.2f} s after torch + its first optimiser)"
    )


if __name__ == "__main__":
    main()
