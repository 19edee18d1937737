"""Every benchmark runs in `--quick` mode, so one that breaks or stops comparing like with
like (each asserts that both sides did the same work) fails the suite."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "common.py")


def test_the_list_of_benchmarks_is_complete():
    expected = {"overhead.py", "first_round.py", "strategies.py", "robust.py", "memory.py"}
    expected |= {"compression.py", "privacy.py"}
    assert expected <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_in_quick_mode(script):
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        cwd=BENCHMARKS,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.strip()
