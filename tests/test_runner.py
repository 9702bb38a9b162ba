"""The runner's bookkeeping, with a stand-in for the framework's fit (no framework needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xorbench import results
from xorbench.adapters.base import TrainOutput
from xorbench.data import Dataset, make_xor
from xorbench.grid import Cell, build_experiment
from xorbench.model import Weights, evaluate, glorot_uniform
from xorbench.runner import CellTask, cell_frames, epochs_to_target, split_workers
from xorbench.seeds import data_seed, derive_seeds

CELL = Cell("lightning", "sgd", 32, 0.05, 4)


def scripted_fit(val_acc_by_seed: dict[int, list[float]]):  # type: ignore[no-untyped-def]
    """A fit that returns a scripted validation accuracy per epoch, keyed by init seed."""

    def fit(cell: Cell, data: Dataset, initial: Weights, orders: np.ndarray) -> TrainOutput:
        assert orders.shape == (cell.epochs, data.n_train)
        acc = val_acc_by_seed[int(initial[0][0][0, 0] * 1e6)]
        if acc == "boom":
            raise RuntimeError("the framework fell over")
        history = np.column_stack(
            [np.linspace(0.6, 0.1, len(acc)), acc, np.linspace(0.7, 0.2, len(acc)), acc]
        )
        return TrainOutput(history, initial, diverged=bool(np.isnan(acc[-1])), steps=20)

    return fit


def make_task(n_seeds: int = 3) -> CellTask:
    return CellTask(CELL, tuple(derive_seeds(0, n_seeds)), 0, False, 0.9)


def seed_key(task: CellTask, i: int) -> int:
    return int(glorot_uniform(CELL.hidden, task.seeds[i].init_seed)[0][0][0, 0] * 1e6)


def test_cell_frames_keep_every_run_with_its_status() -> None:
    task = make_task()
    script = {
        seed_key(task, 0): [0.5, 0.8, 0.95, 1.0],
        seed_key(task, 1): [0.5, 0.5, 0.5, 0.5],
        seed_key(task, 2): "boom",
    }

    runs, history, weights = cell_frames(task, scripted_fit(script))

    assert list(runs.columns) == results.RUN_COLUMNS
    assert list(history.columns) == results.HISTORY_COLUMNS
    assert runs["status"].tolist() == ["ok", "ok", "failed"]
    assert runs["error"].iloc[2] == "RuntimeError: the framework fell over"
    assert runs["epochs_to_target"].tolist() == [3, pd.NA, pd.NA]
    assert runs["final_val_acc"].iloc[0] == 1.0 and np.isnan(runs["final_val_acc"].iloc[2])
    # Epoch 0 is the untrained model, in numpy, for every run (failed ones too).
    assert history.groupby("seed")["epoch"].max().tolist() == [4, 4, 0]
    data = make_xor(data_seed(0))
    first = glorot_uniform(CELL.hidden, task.seeds[0].init_seed)
    row0 = history[(history.seed == 0) & (history.epoch == 0)].iloc[0]
    assert (row0.val_loss, row0.val_acc) == pytest.approx(evaluate(first, data.x_val, data.y_val))
    assert len(weights) == 2  # a failed run has no final weights


def test_parts_merge_in_grid_order_and_resume_skips_finished_cells(tmp_path: Path) -> None:
    experiment = build_experiment("smoke", overrides={"framework": ("lightning",)})
    results.start(tmp_path, experiment, workers=1)
    task = make_task(2)
    script = {seed_key(task, i): [0.5, 0.7, 0.9, 0.9, 0.9] for i in range(2)}
    for cell in experiment.cells[:2]:
        part = CellTask(cell, task.seeds, 0, False, 0.9)
        runs, history, weights = cell_frames(part, scripted_fit(script))
        results.write_part(tmp_path / results.PARTS, cell.key, runs, history, weights)

    assert results.finished_cells(tmp_path) == {c.key for c in experiment.cells[:2]}

    merged = results.merge_parts(tmp_path, [c.key for c in experiment.cells])
    assert merged["cell"].tolist() == [c.key for c in experiment.cells[:2] for _ in range(2)]
    assert len(results.read_history(tmp_path)) == 2 * 2 * (1 + 5)  # epoch 0 + 5


def test_a_torn_part_is_detected_and_rerun(tmp_path: Path) -> None:
    experiment = build_experiment("smoke", overrides={"framework": ("lightning",)})
    results.start(tmp_path, experiment, workers=1)
    parts = tmp_path / results.PARTS
    (parts / "x.history.parquet").write_bytes(b"PAR1 torn")
    (parts / "x.weights.parquet").write_bytes(b"")
    (parts / "x.runs.parquet").write_bytes(b"garbage")

    assert results.finished_cells(tmp_path) == set()
    assert list(parts.iterdir()) == []


def test_a_different_config_in_the_same_directory_is_refused(tmp_path: Path) -> None:
    results.start(tmp_path, build_experiment("smoke"), workers=1)

    with pytest.raises(results.ResultsDirError) as info:
        results.start(tmp_path, build_experiment("smoke", overrides={"seeds": 9}), workers=1)

    assert str(info.value) == (
        f"{tmp_path} holds results of a different config (seeds 3 there, 9 here); choose "
        "another --out, or pass --restart to delete them and start over")


def test_a_changed_config_names_what_changed_and_how_much_more() -> None:
    def cell(optimizer: str, batch: int, epochs: int = 20) -> dict[str, object]:
        return {"optimizer": optimizer, "batch_size": batch, "epochs": epochs}

    old = {"seeds": 3, "target": 0.9, "cells": [cell("sgd", 1), cell("adam", 8)]}
    new = {"seeds": 5, "target": 0.8, "cells": [cell("sgd", 1, 30), cell("adam", 8, 30)]}

    # The grid's axes live in the cells: a change there is named by axis.
    assert results.config_changes(old, new) == (
        "epochs [20] there, [30] here; seeds 3 there, 5 here; target 0.9 there, 0.8 here")
    assert results.config_changes(old, new, shown=2) == (
        "epochs [20] there, [30] here; seeds 3 there, 5 here; and 1 more")
    # The same values paired otherwise: no axis differs, the cells do.
    swapped = {**old, "cells": [cell("sgd", 8), cell("adam", 1)]}
    assert results.config_changes(old, swapped) == (
        "the same setting values, combined into other cells")
    assert results.config_changes(None, new) == "its manifest records no config"


def test_epochs_to_target_and_worker_split() -> None:
    assert epochs_to_target(np.array([0.5, 0.89, 0.9, 1.0]), 0.9) == 2
    assert epochs_to_target(np.array([0.5, 0.5]), 0.9) is None
    assert split_workers(2, {"lightning": 1.0, "keras": 3.0}) == {"lightning": 1, "keras": 1}
    assert split_workers(4, {"lightning": 1.0, "keras": 3.0}) == {"lightning": 1, "keras": 3}
    assert split_workers(3, {"keras": 1.0}) == {"keras": 3}
    assert split_workers(1, {"lightning": 1.0, "keras": 1.0}) == {"lightning": 1, "keras": 1}


def test_each_session_is_recorded_and_a_code_change_is_warned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from xorbench import environment

    experiment = build_experiment("smoke")
    real_digest = environment.code_digest()[:12]
    results.start(tmp_path, experiment, workers=2)
    results.start(tmp_path, experiment, workers=1, scheduler="tcp://127.0.0.1:8786")
    assert "other xorbench code" not in caplog.text  # the same code: nothing to say

    monkeypatch.setattr(environment, "code_digest", lambda: "0" * 64)
    with caplog.at_level("WARNING", logger="xorbench.results"):
        results.start(tmp_path, experiment, workers=1)

    sessions = results.read_manifest(tmp_path)["sessions"]
    assert [(s["workers"], s["scheduler"]) for s in sessions] == [
        (2, None), (1, "tcp://127.0.0.1:8786"), (1, None)]
    assert sessions[0]["code_digest"] == sessions[1]["code_digest"] == real_digest
    assert sessions[2]["code_digest"] == "0" * 12
    assert "resuming with other xorbench code than the session of" in caplog.text
    assert "library versions" not in caplog.text
