"""Fabricated results directories, shaped like the runner's, for tests that need no training.

:func:`write_results_dir` writes ``manifest.json``, ``runs.parquet``, ``history.parquet`` and
``weights.parquet`` with the columns and dtypes of :mod:`xorbench.results`, from a list of
:class:`FakeRun`. Each run's history is a smooth, seed-dependent curve that ends at the run's
``final_val_acc``; ``epochs_to_target`` and the final columns are computed from that history, so
the tables agree with each other as the runner's do. Runs that reach the target store weights
close to :func:`xor_rule_weights`; the others store their untrained Glorot weights.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xorbench import results
from xorbench.data import N_TRAIN
from xorbench.model import Weights, flatten, glorot_uniform
from xorbench.seeds import data_seed, derive_seeds

BASE_SEED = 0
TARGET = 0.9


@dataclass(frozen=True)
class FakeRun:
    """One run to fabricate: its cell, its seed and how it ends."""

    framework: str = "lightning"
    optimizer: str = "sgd"
    batch_size: int = N_TRAIN
    lr: float = 0.05
    hidden: str = "3x4"
    epochs: int = 20
    seed: int = 0
    final_val_acc: float = 1.0
    status: str = "ok"  # ok, diverged or failed
    error: str = ""
    diverged_at: int | None = None  # the epoch whose loss is not finite
    wall_s: float = field(default=0.5)

    @property
    def cell(self) -> str:
        return (
            f"{self.framework}-{self.optimizer}-b{self.batch_size}-lr{self.lr:g}"
            f"-h{self.hidden}-e{self.epochs}"
        )

    @property
    def run_id(self) -> str:
        return f"{self.cell}-s{self.seed}"

    def keys(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in results.CELL_KEYS}


def xor_rule_weights(margin: float = 1e-6) -> Weights:
    """2-3-4-1 weights whose logit is |x1 + x2| - |x1 - x2| + margin on [-1, 1]^2.

    The logit is > 0 exactly where x1 * x2 >= 0 (up to ``margin`` at the axes), the XOR rule of
    :func:`xorbench.data.xor_labels`. Hidden layer 1: relu(x1 + x2), relu(-x1 - x2) and
    relu(x1 - x2 + 2), which equals x1 - x2 + 2 on the square; layer 2 turns them into
    relu(x1 + x2), relu(-x1 - x2), relu(x1 - x2), relu(x2 - x1); the output adds the first two and
    subtracts the last two.
    """
    k1 = np.array([[1.0, -1.0, 1.0], [1.0, -1.0, -1.0]], dtype=np.float32)
    b1 = np.array([0.0, 0.0, 2.0], dtype=np.float32)
    k2 = np.array(
        [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]], dtype=np.float32
    )
    b2 = np.array([0.0, 0.0, -2.0, 2.0], dtype=np.float32)
    k3 = np.array([[1.0], [1.0], [-1.0], [-1.0]], dtype=np.float32)
    b3 = np.array([margin], dtype=np.float32)
    return [(k1, b1), (k2, b2), (k3, b3)]


def _curve(run: FakeRun, epochs: int) -> np.ndarray:
    """History rows (epochs + 1, 4): train_loss, train_acc, val_loss, val_acc; epoch 0 first."""
    rng = np.random.default_rng([run.seed, epochs, int(run.final_val_acc * 1000)])
    tau = rng.uniform(0.1, 0.3) * max(run.epochs, 1)
    e = np.arange(epochs + 1, dtype=float)
    progress = 1.0 - np.exp(-e / tau)
    start = 0.5 + rng.uniform(-0.06, 0.06)
    val_acc = start + (run.final_val_acc - start) * progress
    val_acc[-1] = run.final_val_acc if epochs == run.epochs else val_acc[-1]
    floor = 0.05 + 0.6 * (1.0 - run.final_val_acc)
    val_loss = floor + (0.70 - floor) * np.exp(-e / tau)
    train_loss = val_loss * 0.95
    train_acc = np.clip(val_acc + 0.01, 0.0, 1.0)
    return np.column_stack([train_loss, train_acc, val_loss, val_acc])


def _history(run: FakeRun) -> np.ndarray:
    if run.status == "failed":
        return _curve(run, 0)  # the runner keeps the untrained epoch 0 of a failed run
    if run.status == "diverged":
        at = run.diverged_at or max(1, run.epochs // 2)
        rows = _curve(run, at)
        rows[-1, 0], rows[-1, 2] = math.inf, math.nan
        return rows
    return _curve(run, run.epochs)


def _weights(run: FakeRun, init_seed: int, reached: bool) -> np.ndarray:
    hidden = results.parse_hidden(run.hidden)
    if reached and hidden == (3, 4):
        rng = np.random.default_rng(init_seed)
        weights = [
            (k + rng.normal(0, 0.05, k.shape).astype(np.float32), b)
            for k, b in xor_rule_weights()
        ]
    else:
        weights = glorot_uniform(hidden, init_seed)
    return flatten(weights).astype(np.float32)


def _epochs_to_target(val_acc: np.ndarray, target: float) -> int | None:
    reached = np.flatnonzero(val_acc >= target)
    return int(reached[0]) if reached.size else None


def _run_row(run: FakeRun, history: np.ndarray, target: float) -> dict[str, Any]:
    seeds = derive_seeds(BASE_SEED, run.seed + 1)[run.seed]
    trained = run.status != "failed"
    last = history[-1]
    return {
        "run_id": run.run_id,
        "cell": run.cell,
        **run.keys(),
        "seed": run.seed,
        "init_seed": seeds.init_seed,
        "order_seed": seeds.order_seed,
        "data_seed": data_seed(BASE_SEED),
        "status": run.status,
        "error": run.error,
        "final_train_loss": last[0] if trained else np.nan,
        "final_val_loss": last[2] if trained else np.nan,
        "final_val_acc": last[3] if trained else np.nan,
        "best_val_acc": np.nanmax(history[1:, 3]) if trained else np.nan,
        "target": target,
        "epochs_to_target": _epochs_to_target(history[:, 3], target) if trained else None,
        "epochs_trained": len(history) - 1,
        "steps": (len(history) - 1) * -(-N_TRAIN // run.batch_size),
        "asgd_averaging": False if run.optimizer == "asgd" and trained else None,
        "wall_s": run.wall_s,
    }


def _history_frame(run: FakeRun, history: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame(history, columns=["train_loss", "train_acc", "val_loss", "val_acc"])
    frame.insert(0, "epoch", np.arange(len(history)))
    return frame.assign(run_id=run.run_id, **run.keys(), seed=run.seed)[results.HISTORY_COLUMNS]


def manifest(runs: list[FakeRun], *, name: str = "fake", target: float = TARGET) -> dict[str, Any]:
    """A manifest shaped like the runner's, for the cells of ``runs``."""
    cells = list(dict.fromkeys((r.framework, r.optimizer, r.batch_size, r.lr, r.epochs, r.hidden)
                               for r in runs))
    return {
        "experiment": {
            "name": name,
            "cells": [
                {"framework": fw, "optimizer": opt, "batch_size": b, "lr": lr, "epochs": e,
                 "hidden": list(results.parse_hidden(h))}
                for fw, opt, b, lr, e, h in cells
            ],
            "seeds": max(r.seed for r in runs) + 1,
            "base_seed": BASE_SEED,
            "target": target,
            "data_per_run": False,
            "engine": "per-run",
            "n_train": N_TRAIN,
        },
        "versions": {"python": "3.11.9", "numpy": "2.1.0", "pandas": "3.1.1", "torch": "2.13.0",
                     "lightning": "2.5.0", "tensorflow": None, "tensorflow-cpu": "2.18.0",
                     "keras": "3.8.0"},
        "platform": "Linux-6.1.0-x86_64-with-glibc2.36",
        "cpu": "Fake CPU @ 2.00GHz",
        "cpu_count": 2,
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "workers": 2,
        "started": "2026-01-02T03:04:05+0000",
        "sessions": ["2026-01-02T03:04:05+0000"],
        "finished": "2026-01-02T03:06:10+0000",
    }


def write_results_dir(path: Path, runs: list[FakeRun], *, target: float = TARGET,
                      name: str = "fake") -> Path:
    """Write a results directory holding ``runs`` under ``path``; return ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    run_rows, histories, weight_rows = [], [], []
    for run in runs:
        history = _history(run)
        row = _run_row(run, history, target)
        run_rows.append(row)
        histories.append(_history_frame(run, history))
        if run.status != "failed":
            params = _weights(run, row["init_seed"], row["epochs_to_target"] is not None)
            weight_rows.append({"run_id": run.run_id, "hidden": run.hidden, "params": params})

    table = pd.DataFrame(run_rows, columns=results.RUN_COLUMNS)
    table["epochs_to_target"] = table["epochs_to_target"].astype("Int64")
    table["asgd_averaging"] = table["asgd_averaging"].astype("boolean")
    table.to_parquet(path / results.RUNS, index=False)
    pd.concat(histories, ignore_index=True).to_parquet(path / results.HISTORY, index=False)
    weights = pd.DataFrame(weight_rows, columns=results.WEIGHT_COLUMNS)
    weights.to_parquet(path / results.WEIGHTS, index=False)
    text = json.dumps(manifest(runs, name=name, target=target), indent=2, sort_keys=True)
    (path / results.MANIFEST).write_text(text + "\n")
    return path


def seed_runs(accuracies: list[float], **cell: Any) -> list[FakeRun]:
    """One cell's runs, seed i ending at ``accuracies[i]``."""
    return [FakeRun(seed=i, final_val_acc=a, **cell) for i, a in enumerate(accuracies)]


def grid_runs(
    frameworks: tuple[str, ...] = ("lightning", "keras"),
    optimizers: tuple[str, ...] = ("sgd", "adam"),
    batch_sizes: tuple[int, ...] = (32, N_TRAIN),
    seeds: int = 5,
    epochs: int = 20,
) -> list[FakeRun]:
    """A small grid of ok runs with varied final accuracies (some never reach the target)."""
    levels = [1.0, 1.0, 0.96, 0.74, 0.5]
    runs = []
    for i, (fw, opt, batch) in enumerate(
        (f, o, b) for f in frameworks for o in optimizers for b in batch_sizes
    ):
        for seed in range(seeds):
            acc = levels[(seed + i) % len(levels)]
            runs.append(FakeRun(fw, opt, batch, 0.05, "3x4", epochs, seed, acc,
                                wall_s=0.1 + 0.01 * seed))
    return runs
