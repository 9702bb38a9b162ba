"""The benchmark suites as a user runs them: pytest in a fresh process, autosave and compare.

Field case F10: the first run on a machine has no saved baseline and must pass; the second
compares against the first. A tiny subset (the plain torch loop, one case, the short profile)
keeps this to seconds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from xorbench import bench

ROOT = Path(__file__).resolve().parents[1]
SUBSET = "torch-per-run-sgd-b32"


def run_suite(storage: Path, json_out: Path) -> subprocess.CompletedProcess[str]:
    """One ``pytest`` run of a one-case subset of the torch suite, as tox runs it."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "benchmark", "benchmarks/test_bench_torch.py",
         "-k", f"test_train and {SUBSET}", "--bench-profile=short", "-p", "no:cacheprovider",
         f"--benchmark-storage={storage}", "--benchmark-autosave", "--benchmark-compare",
         f"--benchmark-json={json_out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )


def test_first_run_without_baseline_passes_and_second_compares(tmp_path: Path) -> None:
    """F10: autosave + compare from a fresh checkout, then against that first run."""
    storage = tmp_path / "storage"

    first = run_suite(storage, tmp_path / "first.json")
    second = run_suite(storage, tmp_path / "second.json")

    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "1 passed" in first.stdout
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "Comparing against benchmarks from" in second.stdout + second.stderr
    assert len(list(storage.rglob("*.json"))) == 2

    # The JSON holds the case and its derived figures, and reads back as a torch row.
    row = bench.load_benchmarks([tmp_path / "first.json"]).iloc[0]
    assert (row["framework"], row["engine"], row["optimizer"], row["batch_size"]) == (
        "torch", "per-run", "sgd", 32)
    assert row["rounds"] == 1
    assert row["ms_per_step_median"] == pytest.approx(1e3 * row["median_s"] / row["steps"])
    assert row["peak_rss_mib"] > 10


def test_benchmarks_are_opt_in() -> None:
    """The default run collects tests/ only, and deselects anything marked benchmark."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "benchmarks/test_bench_torch.py", "--bench-profile=short"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )

    assert "deselected" in done.stdout
    assert "test_train[" not in done.stdout
