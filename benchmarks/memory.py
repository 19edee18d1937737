"""Peak memory of whole jobs: `fedfm run` in a subprocess, sampled every 250 ms.

Each job runs once per mode, one after another (never two at a time), in the same call:
  before     FEDFM_ALLOCATOR=glibc: glibc's defaults, no trimming (fedfm.memory switched off)
  after      fedfm.memory on: 2 MiB mmap threshold, malloc_trim between clients and after evals
  after+thp  the same plus THP_MEM_ALLOC_ENABLE=1 (torch backs blocks >= 2 MiB with huge pages;
             it must be set before Python starts, which is why it is a separate mode)
The sampler sums RSS and PSS (/proc/<pid>/smaps_rollup) over the job's process tree; VmHWM
is the kernel's own high-water mark of the job's process (exact, not sampled). CPU seconds
and minor page faults come from the child's rusage: they are the price of giving memory back.
"peak in" says which round was running at the peak (the records in metrics.jsonl so far).
Before it prints a verdict, the script checks that every mode computed the same numbers
(metrics.jsonl and summary.json without timings: the allocator must not change a result).
Runs are kept in runs/memory/<config>-<mode> (--quick: a temporary folder).

Usage: python benchmarks/memory.py                  (the default job with --set rounds=2)
       python benchmarks/memory.py --fedit configs/fedit-smollm2.toml
       python benchmarks/memory.py --job A.toml --job B.toml --set rounds=1 --modes before,after
       python benchmarks/memory.py --quick          (configs/tiny.toml: seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import ROOT, runs_dir, table

GIB = 2**30
MODES: dict[str, dict[str, str]] = {
    "before": {"FEDFM_ALLOCATOR": "glibc"},
    "after": {"FEDFM_ALLOCATOR": "tuned"},
    "after+thp": {"FEDFM_ALLOCATOR": "tuned", "THP_MEM_ALLOC_ENABLE": "1"},
}
TARGETS = {"default.toml": 1.2 * GIB}  # peak RSS a client machine should afford


@dataclass
class Peak:
    """What one job in one mode cost."""

    rss: int  # bytes, sampled, summed over the process tree
    pss: int
    hwm: int  # bytes, the kernel's high-water mark of the job's main process
    peak_in: str
    seconds: float
    cpu_user: float
    cpu_sys: float
    minor_faults: int
    numbers: Any  # metrics.jsonl and summary.json without timings


def fedfm_command() -> list[str]:
    """The `fedfm` entry point of this interpreter's environment."""
    script = Path(sys.executable).with_name("fedfm")
    return [str(script)] if script.exists() else [sys.executable, "-m", "fedfm.cli"]


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (via /proc/<pid>/task/<tid>/children)."""
    out = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                for child in fh.read().split():
                    out += tree(int(child))
    except OSError:  # gone, or a kernel without the children file
        pass
    return out


def read_kib(path: str, keys: tuple[str, ...]) -> dict[str, int]:
    """`key: <n> kB` lines of a /proc file (missing file: {})."""
    found: dict[str, int] = {}
    try:
        with open(path) as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in keys:
                    found[key] = int(value.split()[0])
    except OSError:
        pass
    return found


def measure(
    config: Path, overrides: list[str], env: dict[str, str], interval: float, out: Path
) -> Peak:
    """Run one job into `out` and sample its memory until it exits.

    Raises:
        RuntimeError: the job failed (with the tail of its output).
    """
    sets = [a for o in overrides for a in ("--set", o)]
    cmd = [*fedfm_command(), "run", str(config), "--out", str(out), *sets]
    log = out.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    full_env.update({"HF_HUB_OFFLINE": "1", **env})
    rss = pss = hwm = 0
    peak_in = "start"
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            sizes = [read_kib(f"/proc/{p}/smaps_rollup", ("Rss", "Pss")) for p in tree(proc.pid)]
            now_rss = 1024 * sum(s.get("Rss", 0) for s in sizes)
            pss = max(pss, 1024 * sum(s.get("Pss", 0) for s in sizes))
            own = read_kib(f"/proc/{proc.pid}/status", ("VmHWM",))
            hwm = max(hwm, 1024 * own.get("VmHWM", 0))
            if now_rss > rss:
                rss, peak_in = now_rss, _round_running(out)
            time.sleep(interval)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{log.read_text()[-3000:]}")
    return Peak(
        rss=rss,
        pss=pss,
        hwm=max(hwm, usage.ru_maxrss * 1024),  # ru_maxrss: the same counter, at exit
        peak_in=peak_in,
        seconds=seconds,
        cpu_user=usage.ru_utime,
        cpu_sys=usage.ru_stime,
        minor_faults=usage.ru_minflt,
        numbers=_numbers(out),
    )


def _round_running(run_dir: Path) -> str:
    """Which part of the job runs now, from the records written so far."""
    path = run_dir / "metrics.jsonl"
    done = path.read_text().count("\n") if path.exists() else 0
    if done == 0:
        return "load, build, round-0 eval"
    if (run_dir / "summary.json").exists():
        return "shutdown"
    config = json.loads((run_dir / "config.json").read_text())
    return f"round {done}" if done <= config["rounds"] else "after the rounds"


def _numbers(run_dir: Path) -> Any:
    """What the job computed, without wall times (which differ run to run)."""

    def strip(record: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in record.items() if "seconds" not in k}

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    summary = json.loads((run_dir / "summary.json").read_text())
    return [strip(json.loads(x)) for x in lines], strip(summary)


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", action="append", type=Path, help="a job config (repeatable)")
    ap.add_argument("--fedit", type=Path, help="also measure this config (e.g. the FedIT job)")
    ap.add_argument("--set", dest="sets", action="append", help="override for every job")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
    ap.add_argument("--interval", type=float, default=0.25, help="sampling period, seconds")
    ap.add_argument("--quick", action="store_true", help="configs/tiny.toml, 1 round: seconds")
    args = ap.parse_args()
    modes = args.modes.split(",")
    unknown = set(modes) - set(MODES)
    if unknown:
        ap.error(f"--modes: {', '.join(sorted(unknown))} not among {', '.join(MODES)}")
    jobs = args.job or [ROOT / "configs" / ("tiny.toml" if args.quick else "default.toml")]
    if args.fedit:
        jobs.append(args.fedit)
    sets = args.sets or (["rounds=1"] if args.quick else ["rounds=2"])
    where = runs_dir("memory", args.quick)
    rows = []
    for config in jobs:
        peaks = {}
        for mode in modes:
            print(f"{config.name} [{mode}] {' '.join(sets)} ...", flush=True)
            out = where / f"{config.stem}-{mode}"
            peaks[mode] = measure(config, sets, MODES[mode], args.interval, out)
        first = peaks[modes[0]]
        for mode, p in peaks.items():  # both sides did the same work: same numbers
            assert p.numbers == first.numbers, f"{config.name}: {mode} computed other numbers"
        target = TARGETS.get(config.name)
        for mode, p in peaks.items():
            verdict = "-" if target is None else ("met" if p.rss <= target else "missed")
            rows.append(
                [
                    config.name,
                    mode,
                    gib(p.rss),
                    gib(p.pss),
                    gib(p.hwm),
                    "-" if target is None else f"<= {gib(target)} ({verdict})",
                    p.peak_in,
                    f"{p.seconds:.0f}",
                    f"{p.cpu_user:.0f} / {p.cpu_sys:.1f}",
                    f"{p.minor_faults / 1e6:.2f}",
                ]
            )
    header = ["job", "mode", "peak RSS", "peak PSS", "VmHWM", "target (RSS)", "peak in"]
    header += ["wall s", "CPU user / sys s", "minor faults (M)"]
    print(f"\noverrides: {' '.join(sets)}; every mode computed the same numbers; runs: {where}")
    print(table(header, rows))


if __name__ == "__main__":
    main()
