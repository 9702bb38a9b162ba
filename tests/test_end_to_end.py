"""The whole job for real: `xorbench run` trains in both frameworks and writes results + report."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xorbench import results
from xorbench.data import make_xor
from xorbench.model import evaluate
from xorbench.seeds import data_seed


def run_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xorbench.cli", *argv], cwd=cwd, capture_output=True, text=True,
        timeout=600,
    )


@pytest.mark.parametrize("engine", ["per-run", "batched"])
def test_a_tiny_grid_in_both_frameworks(tmp_path: Path, engine: str) -> None:
    out = tmp_path / "res"
    done = run_cli(
        "run", "--preset", "smoke", "--optimizer", "adam,asgd", "--batch-size", "32",
        "--epochs", "3", "--seeds", "2", "--workers", "2", "--engine", engine,
        "--out", str(out), "--report-dir", str(tmp_path / "report"), "-q", cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr

    runs = results.read_runs(out)
    history = results.read_history(out)
    weights = results.read_weights(out)
    manifest = json.loads((out / "manifest.json").read_text())

    assert len(runs) == 2 * 2 * 2 and set(runs["status"]) == {"ok"}
    assert not runs["run_id"].duplicated().any()
    assert len(history) == len(runs) * 4  # epochs 0..3, one row per run and epoch
    assert not history[["train_loss", "train_acc", "val_loss", "val_acc"]].isna().any().any()
    assert manifest["finished"] is not None and manifest["versions"]["torch"].startswith("2.")
    assert runs.loc[runs.optimizer == "asgd", "asgd_averaging"].eq(False).all()

    # The stored final weights reproduce the last validation row through numpy.
    data = make_xor(data_seed(0))
    for run in runs.itertuples():
        loss, acc = evaluate(results.run_weights(weights, run.run_id), data.x_val, data.y_val)
        assert loss == pytest.approx(run.final_val_loss, abs=1e-5)
        assert acc == run.final_val_acc

    # Same seed index, same initial weights in both frameworks: epoch 0 rows agree exactly.
    first = history[history.epoch == 0].pivot_table(
        index=["optimizer", "seed"], columns="framework", values="val_loss"
    )
    np.testing.assert_array_equal(first["keras"], first["lightning"])
    assert (tmp_path / "report" / "report.md").is_file()


def test_resuming_a_finished_run_trains_nothing(tmp_path: Path) -> None:
    argv = ("run", "--preset", "smoke", "--framework", "lightning", "--optimizer", "sgd",
            "--batch-size", "150", "--epochs", "2", "--seeds", "1", "--out", str(tmp_path / "r"),
            "--no-report", "-q")
    assert run_cli(*argv, cwd=tmp_path).returncode == 0
    before = pd.read_parquet(tmp_path / "r" / "runs.parquet")
    first = json.loads((tmp_path / "r" / "manifest.json").read_text())
    time.sleep(3)  # a gap between the sessions, which must not count

    again = run_cli(*argv, cwd=tmp_path)

    assert again.returncode == 0, again.stderr
    pd.testing.assert_frame_equal(before, pd.read_parquet(tmp_path / "r" / "runs.parquet"))
    # The manifest's wall time adds the sessions' own durations, not the gap between them.
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert len(manifest["sessions"]) == 2
    span = datetime.fromisoformat(manifest["finished"]) - datetime.fromisoformat(
        manifest["started"])
    assert manifest["wall_s"] > first["wall_s"]
    assert span.total_seconds() - manifest["wall_s"] > 1.5  # the 3 s gap (timestamps: 1 s steps)
