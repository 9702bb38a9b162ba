"""Real faults in real runs: a worker process SIGKILLed mid-grid, and cells that must not care
which worker ran them or what it ran before.

The fault is injected without any hook in xorbench: a ``sitecustomize`` module, put on the
PYTHONPATH of the run and therefore loaded by every process it spawns, wraps the worker entry
point ``xorbench.runner._run_task`` so that the worker kills itself with SIGKILL when it is handed
the chosen cell (once, or every time).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

FAULTY_SITE = '''
import os

_SPEC = os.environ.get("XORBENCH_TEST_KILL_CELL")
if _SPEC:
    import signal
    from pathlib import Path

    import xorbench.runner as _runner

    _key, _marker = _SPEC.split("|")
    _real = _runner._run_task

    def _run_task(task):
        first = not _marker or not Path(_marker).exists()
        if task.cell.key == _key and first:
            if _marker:
                Path(_marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)  # the cell is in flight, its part unwritten
        return _real(task)

    _run_task.__module__, _run_task.__qualname__ = _real.__module__, _real.__qualname__
    _runner._run_task = _run_task
'''

VICTIM = "lightning-sgd-b8-lr0.05-h3x4-e10"  # the longest cell: the first one a worker gets
CELLS = {f"{fw}-{opt}-b{b}-lr0.05-h3x4-e10" for fw in ("lightning", "keras")
         for opt in ("sgd", "adam") for b in (8, 150)}


def xorbench_run(
    out: Path, *extra: str, kill: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`xorbench run` of a small grid in a subprocess; ``kill`` is "CELL|MARKER" or "CELL|"."""
    env = dict(os.environ)
    if kill is not None:
        site = out.parent / "faulty-site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(FAULTY_SITE)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
        env["XORBENCH_TEST_KILL_CELL"] = kill
    argv = ["run", "--preset", "smoke", "--optimizer", "sgd,adam", "--batch-size", "8,150",
            "--epochs", "10", "--seeds", "3", "--workers", "1", "--out", str(out),
            "--no-report", "-q", *extra]
    return subprocess.run([sys.executable, "-m", "xorbench.cli", *argv], env=env,
                          capture_output=True, text=True, timeout=900)


def tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs without wall_s, history), indexed by run (and epoch), sorted."""
    runs = pd.read_parquet(out / "runs.parquet").drop(columns="wall_s")
    history = pd.read_parquet(out / "history.parquet")
    return (runs.set_index("run_id").sort_index(),
            history.set_index(["run_id", "epoch"]).sort_index())


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The grid run once, undisturbed: one worker per framework trains its four cells in turn."""
    out = tmp_path_factory.mktemp("whole") / "results"
    done = xorbench_run(out)
    assert done.returncode == 0, done.stderr
    return out


def test_a_cell_gives_the_same_numbers_alone_as_after_other_cells(
    whole: Path, tmp_path: Path
) -> None:
    # Longest first: adam at batch 150 is the last of each framework's four cells.
    alone = tmp_path / "alone"
    done = xorbench_run(alone, "--optimizer", "adam", "--batch-size", "150")
    assert done.returncode == 0, done.stderr

    runs, history = tables(alone)
    all_runs, all_history = tables(whole)
    assert set(runs["cell"]) == {"lightning-adam-b150-lr0.05-h3x4-e10",
                                 "keras-adam-b150-lr0.05-h3x4-e10"}
    pd.testing.assert_frame_equal(runs, all_runs.loc[runs.index])
    pd.testing.assert_frame_equal(history, all_history.loc[history.index])


def test_a_worker_killed_once_loses_nothing(whole: Path, tmp_path: Path) -> None:
    """The cell in flight is retried in a fresh process; the tables equal an undisturbed run's."""
    out = tmp_path / "results"
    done = xorbench_run(out, kill=f"{VICTIM}|{tmp_path / 'killed-once'}")

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "killed-once").exists()  # the worker really died
    assert "a worker process died; retrying its 1 cells one at a time" in done.stderr
    runs, history = tables(out)
    assert set(runs["status"]) == {"ok"} and len(runs) == len(CELLS) * 3
    assert not runs.index.duplicated().any() and set(runs["cell"]) == CELLS
    # Same config, second run, one worker lost on the way: the same rows and values to the bit.
    expected_runs, expected_history = tables(whole)
    pd.testing.assert_frame_equal(runs, expected_runs)
    pd.testing.assert_frame_equal(history, expected_history)


def test_a_cell_that_kills_every_worker_fails_alone_and_is_reported(
    whole: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    done = xorbench_run(out, "--framework", "lightning", kill=f"{VICTIM}|")

    assert done.returncode == 0, done.stderr
    runs, history = tables(out)
    victim = runs[runs["cell"] == VICTIM]
    assert len(victim) == 3 and set(victim["status"]) == {"failed"}
    assert victim["error"].str.contains("worker process died while training this cell").all()
    # The grid went on: every other cell finished, with the undisturbed run's numbers.
    others = runs[runs["cell"] != VICTIM]
    assert set(others["status"]) == {"ok"} and others["cell"].nunique() == 3
    pd.testing.assert_frame_equal(others, tables(whole)[0].loc[others.index])
    assert history.loc[victim.index.tolist()].index.get_level_values("epoch").max() == 0

    report = subprocess.run(
        [sys.executable, "-m", "xorbench.cli", "report", str(out), "--out",
         str(tmp_path / "report")], capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    assert text.count("worker process died while training this cell") == 3
