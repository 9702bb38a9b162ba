"""The results directory: its files, their columns, reading and writing them.

::

    RESULTS/manifest.json     config, library versions, machine, git commit, start and end times
    RESULTS/runs.parquet      one row per run (cell x seed)
    RESULTS/history.parquet   one row per run x epoch (epoch 0 is the untrained model)
    RESULTS/weights.parquet   one row per run: its final weights as a flat float vector
    RESULTS/parts/            one file set per finished cell, merged into the tables above
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xorbench.model import Weights, unflatten

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RUNS = "runs.parquet"
HISTORY = "history.parquet"
WEIGHTS = "weights.parquet"
PARTS = "parts"

# The keys that identify a cell; with `seed` they identify a run.
CELL_KEYS: list[str] = ["framework", "optimizer", "batch_size", "lr", "hidden", "epochs"]

RUN_COLUMNS: list[str] = [
    "run_id",
    "cell",
    *CELL_KEYS,
    "seed",
    "init_seed",
    "order_seed",
    "data_seed",
    "status",
    "error",
    "final_train_loss",
    "final_val_loss",
    "final_val_acc",
    "best_val_acc",
    "target",
    "epochs_to_target",
    "epochs_trained",
    "steps",
    "asgd_averaging",
    "wall_s",
]

HISTORY_COLUMNS: list[str] = [
    "run_id",
    *CELL_KEYS,
    "seed",
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
]

WEIGHT_COLUMNS: list[str] = ["run_id", "hidden", "params"]


def hidden_label(hidden: Iterable[int]) -> str:
    """The hidden sizes as stored in the tables: (3, 4) -> "3x4"."""
    return "x".join(str(h) for h in hidden)


def parse_hidden(label: str) -> tuple[int, ...]:
    """Inverse of :func:`hidden_label`."""
    return tuple(int(h) for h in label.split("x"))


def write_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write a parquet file under a temporary name, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    """Write JSON under a temporary name, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def is_results_dir(path: Path) -> bool:
    """Whether ``path`` holds a manifest written by xorbench."""
    return (path / MANIFEST).is_file()


def read_manifest(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((path / MANIFEST).read_text())
    return data


def read_runs(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path / RUNS)


def read_history(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path / HISTORY)


def read_weights(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path / WEIGHTS)


def run_weights(weights: pd.DataFrame, run_id: str) -> Weights:
    """The final weights of one run, as (kernel, bias) pairs."""
    row = weights.loc[weights["run_id"] == run_id]
    if row.empty:
        raise KeyError(f"no weights stored for run {run_id!r}")
    params = np.asarray(row["params"].iloc[0], dtype=np.float32)
    return unflatten(params, parse_hidden(row["hidden"].iloc[0]))
