"""The results directory: its files, their columns, reading and writing them.

::

    RESULTS/manifest.json     config, library versions, machine, git commit, start and end times
    RESULTS/runs.parquet      one row per run (cell x seed)
    RESULTS/history.parquet   one row per run x epoch (epoch 0 is the untrained model)
    RESULTS/weights.parquet   one row per run: its final weights as a flat float vector
    RESULTS/parts/            one file set per finished cell, merged into the tables above
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
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
SUMMARY = "summary.parquet"
PARTS = "parts"
LOCK = ".lock"

# The keys that identify a cell; with `seed` they identify a run.
CELL_KEYS: list[str] = ["framework", "optimizer", "batch_size", "lr", "hidden", "epochs"]

# Known shortcoming: no optimizer_impl column (native or aligned Keras optimizers); the cell
# key ends in "-aligned" and the manifest's experiment holds it. The note goes when the column
# is added with a reader that fills "native" into tables written before it.
RUN_COLUMNS: list[str] = [
    "run_id",
    "cell",
    *CELL_KEYS,
    "seed",
    "init_index",
    "order_index",
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


class ResultsDirError(ValueError):
    """A results path that cannot be used as asked; the message is one line for the user."""


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
    """The manifest of a results directory; a damaged one is a ResultsDirError."""
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsDirError(f"{path / MANIFEST} cannot be read ({exc}); restore it, or "
                              "pass --restart to delete the results and start over") from None
    if not isinstance(data, dict) or not isinstance(data.get("experiment", {}), dict):
        raise ResultsDirError(f"{path / MANIFEST} is not an xorbench manifest; restore it, or "
                              "pass --restart to delete the results and start over")
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


# ---------------------------------------------------------------------------------------------
# Writing a results directory: manifest, one part per finished cell, merged tables


WALL_TIME_NOTES: dict[str, str] = {
    "per-run": "wall_s in runs.parquet is each run's own training time, from the start of its "
    "fit (model, Trainer or compile included) to its end",
    "batched": "wall_s in runs.parquet is the training time of the run's whole cell (all seeds "
    "trained together as one seed-batched model, setup included) divided by its number of seeds",
}


def _normalised(data: dict[str, Any]) -> dict[str, Any]:
    normal: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return normal


def check_target(path: Path, experiment: Any | None) -> None:
    """Refuse a path that is a file, not a results directory, or (when ``experiment`` is given)
    a results directory of a different experiment."""
    if path.exists() and not path.is_dir():
        raise ResultsDirError(f"--out must be a directory; {path} is a file")
    foreign = path.is_dir() and any(not _kept_beside_a_run(p.name) for p in path.iterdir())
    if foreign and not is_results_dir(path):
        raise ResultsDirError(
            f"--out {path} is a non-empty directory that is not an xorbench results directory"
        )
    if experiment is not None and is_results_dir(path):
        old = read_manifest(path).get("experiment")
        new = _normalised(experiment.to_dict())
        if old != new:
            raise ResultsDirError(
                f"{path} holds results of a different config ({config_changes(old, new)}); "
                "choose another --out, or pass --restart to delete them and start over"
            )


def config_changes(old: Any, new: dict[str, Any], shown: int = 3) -> str:
    """The settings that differ, as 'epochs 20 there, 31 here; ...' (the first ``shown``).

    The grid's axes live in ``cells``: a change there is named by axis (``epochs [20] there,
    [30] here``); when every axis keeps its values, the cells are said to be combined otherwise.
    """
    if not isinstance(old, dict):
        return "its manifest records no config"

    def brief(value: Any) -> str:
        text = json.dumps(value) if value is not None else "unset"
        return text if len(text) <= 40 else text[:37] + "..."

    def axis_values(experiment: dict[str, Any]) -> dict[str, list[Any]]:
        """The values each cell setting takes (epochs: [20], ...), from the list of cells."""
        cells = experiment.get("cells") or []
        keys = sorted({k for cell in cells for k in cell})
        return {k: sorted({json.dumps(cell.get(k)) for cell in cells}) for k in keys}

    pairs: dict[str, tuple[Any, Any]] = {
        k: (old.get(k), new.get(k)) for k in (set(old) | set(new)) - {"cells"}
        if old.get(k) != new.get(k)}
    if old.get("cells") != new.get("cells"):
        # The cells hold the grid's axes (epochs, lr, ...): name the axes whose values differ.
        before, after = axis_values(old), axis_values(new)
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                pairs[key] = ([json.loads(v) for v in before.get(key, [])],
                              [json.loads(v) for v in after.get(key, [])])
        if not pairs:
            return "the same setting values, combined into other cells"
    named = sorted(pairs)
    changes = [f"{k} {brief(pairs[k][0])} there, {brief(pairs[k][1])} here" for k in named[:shown]]
    more = len(named) - shown
    return "; ".join(changes) + (f"; and {more} more" if more > 0 else "")


# What a run writes into its results directory, and so what ``--restart`` deletes. Anything
# else there (a parity or benchmark subdirectory, the user's own notes) is not the run's.
RUN_OUTPUTS: tuple[str, ...] = (MANIFEST, RUNS, HISTORY, WEIGHTS, SUMMARY, PARTS)


def _kept_beside_a_run(name: str) -> bool:
    """Whether an entry may sit in a directory before its first run: the lock, parity tables
    (``xorbench parity --out RESULTS/parity``) or benchmark JSON (``RESULTS/bench*.json``)."""
    return name in (LOCK, "parity") or (name.startswith("bench") and name.endswith(".json"))


def clear(path: Path) -> list[str]:
    """Delete the run's outputs from a results directory (the caller holds its lock).

    Only the files a run writes (:data:`RUN_OUTPUTS`, and temporary files left by an
    interrupted write) are deleted; the names of the entries kept are returned.
    """
    import shutil

    kept = []
    for entry in sorted(path.iterdir()):
        if entry.name == LOCK:
            continue
        if entry.name not in RUN_OUTPUTS and ".tmp-" not in entry.name:
            kept.append(entry.name)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return kept


def check_unlocked(path: Path) -> None:
    """Refuse at once if a run holds the lock of ``path`` (a courtesy check before any output;
    :func:`locked` is the guard)."""
    if (path / LOCK).is_file():
        with locked(path):
            pass


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the results directory's lock, or refuse at once if another run holds it.

    The lock is an OS file lock, released by the kernel when its process dies, so the lock of
    a killed run never blocks the next one.
    """
    from filelock import FileLock, Timeout

    path.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path / LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ResultsDirError(
            f"another xorbench run is writing to {path}; wait for it to finish or choose "
            "another --out"
        ) from None
    try:
        yield
    finally:
        lock.release()


def start(
    path: Path, experiment: Any, *, workers: int, scheduler: str | None = None,
    cleared: bool = False,
) -> dict[str, Any]:
    """Create (or reopen, to resume) a results directory and write its manifest.

    ``workers`` counts local worker processes, or the Dask cluster's worker threads when this
    session runs on the Dask scheduler at ``scheduler`` (None: this machine). ``cleared``: the
    caller has just run :func:`clear` on this results directory (``--restart``), so what it
    kept there is the user's and is no reason to refuse.
    """
    from xorbench.environment import code_digest, describe

    if not cleared:
        check_target(path, experiment)
    (path / PARTS).mkdir(parents=True, exist_ok=True)
    previous = read_manifest(path) if is_results_dir(path) else {}
    machine = describe()
    session = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "workers": workers,
        "scheduler": scheduler,
        "git_commit": machine["git_commit"],
        "code_digest": code_digest()[:12],
        "versions": machine["versions"],
    }
    sessions = [*previous.get("sessions", []), session]
    _warn_if_code_changed(sessions)
    manifest = {
        "experiment": _normalised(experiment.to_dict()),
        **machine,
        "workers": workers,
        "scheduler": scheduler,
        "started": previous.get("started") or session["started"],
        "sessions": sessions,
        "finished": None,
        # Training time of the sessions that finished; an interrupted session is not timed.
        "wall_s": previous.get("wall_s") if previous.get("finished") else None,
        "session_started_unix": time.time(),
        "wall_time_note": WALL_TIME_NOTES[experiment.engine],
    }
    write_json_atomic(manifest, path / MANIFEST)
    return manifest


def _warn_if_code_changed(sessions: list[Any]) -> None:
    """Warn when this session runs other xorbench code or libraries than an earlier one.

    Resuming keeps the earlier sessions' cells, so their results and this session's would come
    from different code: allowed (most edits do not change training), but said.
    """
    *earlier, now = sessions
    for key, what in (("code_digest", "xorbench code"), ("versions", "library versions")):
        before = [s[key] for s in earlier if isinstance(s, dict) and key in s]
        if before and before[-1] != now[key]:
            logger.warning("resuming with other %s than the session of %s: its finished cells "
                           "are kept as they were trained; pass --restart to train every cell "
                           "with this code", what, earlier[-1].get("started"))


def finish(path: Path, manifest: dict[str, Any]) -> None:
    """Stamp the manifest with the end time and add this session's duration to ``wall_s``."""
    session = time.time() - float(manifest["session_started_unix"])
    manifest = dict(manifest, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    wall_s=(manifest.get("wall_s") or 0.0) + session)
    write_json_atomic(manifest, path / MANIFEST)


def _part_paths(parts_dir: Path, key: str) -> dict[str, Path]:
    return {table: parts_dir / f"{key}.{table}.parquet" for table in ("runs", "history", "weights")}


def write_part(
    parts_dir: Path, key: str, runs: pd.DataFrame, history: pd.DataFrame, weights: pd.DataFrame
) -> None:
    """Write one finished cell; its runs file is written last and marks the cell as done."""
    paths = _part_paths(parts_dir, key)
    write_atomic(history, paths["history"])
    write_atomic(weights, paths["weights"])
    write_atomic(runs, paths["runs"])


def _written_cells(path: Path) -> list[str]:
    """The cells whose runs part exists: it is written last, so the cell claims to be done."""
    return [p.name.removesuffix(".runs.parquet")
            for p in sorted((path / PARTS).glob("*.runs.parquet"))]


def _unreadable_parts(path: Path) -> dict[str, Exception]:
    """The written cells whose parts cannot be read."""
    broken = {}
    for key in _written_cells(path):
        try:
            for part in _part_paths(path / PARTS, key).values():
                pd.read_parquet(part, columns=["run_id"])
        except Exception as exc:  # torn, truncated or not parquet at all
            broken[key] = exc
    return broken


def readable_cells(path: Path) -> set[str]:
    """Keys of the cells whose parts are complete and readable; reads, never changes anything."""
    return set(_written_cells(path)) - set(_unreadable_parts(path))


def finished_cells(path: Path) -> set[str]:
    """Keys of the cells whose parts are complete and readable; unreadable parts are deleted."""
    for key, exc in _unreadable_parts(path).items():  # a torn part is rerun, never read
        logger.warning("part of cell %s is unreadable (%s); it will be rerun", key, exc)
        for part in _part_paths(path / PARTS, key).values():
            part.unlink(missing_ok=True)
    return set(_written_cells(path))


def read_parts(
    path: Path, cell_keys: Iterable[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The runs, history and weights of the given finished cells, read in memory.

    For a directory whose run has not finished (interrupted, or still running): nothing in it
    is written, so this is safe beside the run that holds the lock.
    """
    parts = [_part_paths(path / PARTS, key) for key in cell_keys]
    tables = [
        pd.concat([pd.read_parquet(p[table]) for p in parts], ignore_index=True)
        for table in ("runs", "history", "weights")
    ]
    return tables[0], tables[1], tables[2]


# Not yet built for grids of many thousand cells: history is kept for every epoch and merged
# into one history.parquet that the report reads whole (100 seeds x 500 epochs x 10,000 cells
# is 5e8 rows). This note goes when history can be kept every k epochs or a grid can be split
# over several results directories and reported together.
def merge_parts(path: Path, cell_keys: list[str]) -> pd.DataFrame:
    """Merge the cells' parts, in grid order, into runs, history and weights tables.

    History is streamed part by part, so the grid's seed-epoch rows are never all in memory.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = [_part_paths(path / PARTS, key) for key in cell_keys]
    parts = [p for p in parts if p["runs"].exists()]
    runs = pd.concat([pd.read_parquet(p["runs"]) for p in parts], ignore_index=True)
    weights = pd.concat([pd.read_parquet(p["weights"]) for p in parts], ignore_index=True)

    tmp = path / f".{HISTORY}.tmp-{os.getpid()}"
    writer = None
    try:
        for p in parts:
            table = pq.read_table(p["history"])
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table.cast(writer.schema))
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        pa.Table.from_pandas(pd.DataFrame(columns=HISTORY_COLUMNS)).to_pandas().to_parquet(tmp)
    os.replace(tmp, path / HISTORY)
    write_atomic(weights, path / WEIGHTS)
    write_atomic(runs, path / RUNS)
    return runs
