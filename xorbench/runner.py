"""Run an experiment's cells on an executor and write the results directory.

One loop owns the results directory: it holds the lock, writes the manifest, skips the cells
whose parts are already there (resume), writes each finished cell's part as the executor hands
its tables back, and merges the parts into ``runs.parquet``, ``history.parquet`` and
``weights.parquet`` at the end. Executors only train cells and return their tables:

- :class:`LocalPool` (the default): one spawned process pool per framework on this machine, one
  thread each, so torch and TensorFlow never share a process (importing both in one process has
  been reported to crash) and each framework is imported once per worker, not once per cell.
- ``xorbench.cluster.DaskExecutor`` (``scheduler="tcp://HOST:PORT"``): a running Dask cluster.
  Only then is Dask imported.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import pandas as pd

from xorbench import results, stats
from xorbench.adapters.base import HISTORY_METRICS, TrainOutput, load_adapter
from xorbench.cell_process import exit_with_parent
from xorbench.data import Dataset, batch_orders, make_xor, steps_per_epoch
from xorbench.grid import Cell, Experiment
from xorbench.model import Weights, evaluate, flatten, glorot_uniform
from xorbench.seeds import RunSeeds, data_seed, design_seeds

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[Cell, pd.DataFrame], None]


@dataclass(frozen=True)
class CellTask:
    """Everything a worker needs to train one cell (it writes nothing: it returns tables)."""

    cell: Cell
    seeds: tuple[RunSeeds, ...]
    base_seed: int
    data_per_run: bool
    target: float
    engine: str = "per-run"


class CellFrames(NamedTuple):
    """One cell's tables: a row per run, a row per run x epoch, a row per run's weights."""

    runs: pd.DataFrame
    history: pd.DataFrame
    weights: pd.DataFrame


# ---------------------------------------------------------------------------------------------
# One run


def initial_history(weights: Weights, data: Dataset) -> np.ndarray:
    """The epoch-0 row (train_loss, train_acc, val_loss, val_acc) of the untrained model."""
    train_loss, train_acc = evaluate(weights, data.x_train, data.y_train)
    val_loss, val_acc = evaluate(weights, data.x_val, data.y_val)
    return np.array([[train_loss, train_acc, val_loss, val_acc]])


def epochs_to_target(val_acc: np.ndarray, target: float) -> int | None:
    """The first epoch whose validation accuracy is >= target, or None if none is."""
    reached = np.flatnonzero(val_acc >= target)
    return int(reached[0]) if reached.size else None


@dataclass
class RunOutcome:
    """One trained (or failed) run, before it becomes table rows.

    ``history`` has shape (epochs_trained + 1, 4) and starts with the untrained epoch 0.
    """

    status: str
    error: str
    output: TrainOutput | None
    history: np.ndarray
    wall_s: float


def _failed(exc: BaseException, initial: Weights, data: Dataset, wall: float) -> RunOutcome:
    logger.debug("%s", traceback.format_exc())
    error = f"{type(exc).__name__}: {exc}"
    return RunOutcome("failed", error, None, initial_history(initial, data), wall)


def _trained(output: TrainOutput, initial: Weights, data: Dataset, wall: float) -> RunOutcome:
    history = np.vstack([initial_history(initial, data), output.history])
    status = "diverged" if output.diverged else "ok"
    return RunOutcome(status, "", output, history, wall)


def train_per_run(
    fit: Callable[..., TrainOutput], cell: Cell, runs: Sequence[RunSeeds],
    datasets: Sequence[Dataset],
) -> list[RunOutcome]:
    """Train the seeds one after the other; a failing run is recorded and the others go on."""
    outcomes = []
    for run, data in zip(runs, datasets, strict=True):
        initial = glorot_uniform(cell.hidden, run.init_seed)
        orders = batch_orders(run.order_seed, data.n_train, cell.epochs)
        start = time.perf_counter()
        try:
            output = fit(cell, data, initial, orders)
        except Exception as exc:  # recorded as failed; the other runs go on
            logger.warning("run %s seed %d failed: %s", cell.key, run.seed, exc)
            outcomes.append(_failed(exc, initial, data, time.perf_counter() - start))
            continue
        outcomes.append(_trained(output, initial, data, time.perf_counter() - start))
    return outcomes


def train_batched(
    fit_batched: Callable[..., list[TrainOutput]], cell: Cell, runs: Sequence[RunSeeds],
    data: Dataset,
) -> list[RunOutcome]:
    """Train all seeds as one seed-stacked model; each run's wall time is the cell's / seeds."""
    initials = [glorot_uniform(cell.hidden, run.init_seed) for run in runs]
    orders = np.stack([batch_orders(run.order_seed, data.n_train, cell.epochs) for run in runs])
    start = time.perf_counter()
    try:
        outputs = fit_batched(cell, data, initials, orders)
    except Exception as exc:  # the whole cell failed: every seed is recorded as failed
        logger.warning("cell %s failed: %s", cell.key, exc)
        wall = (time.perf_counter() - start) / len(runs)
        return [_failed(exc, initial, data, wall) for initial in initials]
    wall = (time.perf_counter() - start) / len(runs)
    return [_trained(out, w, data, wall) for out, w in zip(outputs, initials, strict=True)]


def cell_frames(
    task: CellTask,
    fit: Callable[..., TrainOutput],
    fit_batched: Callable[..., list[TrainOutput]] | None = None,
) -> CellFrames:
    """Train every seed of a cell; return its (runs, history, weights) tables.

    With ``fit_batched`` the seeds are trained together (the batched engine), else one by one.
    """
    cell = task.cell
    keys: dict[str, Any] = {
        "framework": cell.framework,
        "optimizer": cell.optimizer,
        "batch_size": cell.batch_size,
        "lr": cell.lr,
        "hidden": results.hidden_label(cell.hidden),
        "epochs": cell.epochs,
    }
    data_seeds = [
        data_seed(task.base_seed, run.seed if task.data_per_run else None) for run in task.seeds
    ]
    if fit_batched is not None:
        outcomes = train_batched(fit_batched, cell, task.seeds, make_xor(data_seeds[0]))
    else:
        cache = {seed: make_xor(seed) for seed in set(data_seeds)}
        outcomes = train_per_run(fit, cell, task.seeds, [cache[s] for s in data_seeds])

    run_rows, history_parts, weight_rows = [], [], []
    for run, run_data_seed, outcome in zip(task.seeds, data_seeds, outcomes, strict=True):
        run_id = f"{cell.key}-s{run.seed}"
        output, history = outcome.output, outcome.history

        frame = pd.DataFrame(history, columns=list(HISTORY_METRICS))
        frame.insert(0, "epoch", np.arange(len(history)))
        history_parts.append(frame.assign(run_id=run_id, **keys, seed=run.seed))

        trained = output is not None
        last = history[-1]
        run_rows.append(
            {
                "run_id": run_id,
                "cell": cell.key,
                **keys,
                "seed": run.seed,
                "init_index": run.init_index,
                "order_index": run.order_index,
                "init_seed": run.init_seed,
                "order_seed": run.order_seed,
                "data_seed": run_data_seed,
                "status": outcome.status,
                "error": outcome.error,
                "final_train_loss": last[0] if trained else np.nan,
                "final_val_loss": last[2] if trained else np.nan,
                "final_val_acc": last[3] if trained else np.nan,
                "best_val_acc": np.nanmax(history[1:, 3]) if trained else np.nan,
                "target": task.target,
                "epochs_to_target": epochs_to_target(history[:, 3], task.target)
                if trained
                else None,
                "epochs_trained": len(history) - 1,
                "steps": output.steps if output is not None else 0,
                "asgd_averaging": output.asgd_averaging if output is not None else None,
                "wall_s": outcome.wall_s,
            }
        )
        if output is not None:
            params = flatten(output.final_weights).astype(np.float32)
            weight_rows.append({"run_id": run_id, "hidden": keys["hidden"], "params": params})

    runs = pd.DataFrame(run_rows, columns=results.RUN_COLUMNS)
    runs["epochs_to_target"] = runs["epochs_to_target"].astype("Int64")
    runs["asgd_averaging"] = runs["asgd_averaging"].astype("boolean")
    history_table = pd.concat(history_parts, ignore_index=True)[results.HISTORY_COLUMNS]
    weights = pd.DataFrame(weight_rows, columns=results.WEIGHT_COLUMNS)
    return CellFrames(runs, history_table, weights)


# ---------------------------------------------------------------------------------------------
# Training a cell in a worker process (both executors)


THREAD_VARIABLES: tuple[str, ...] = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
)


def init_worker(framework: str, engine: str) -> None:
    """Pin the worker to one thread and import its framework once, before the first cell."""
    for var in THREAD_VARIABLES:
        os.environ[var] = "1"
    load_adapter(framework, engine)


def train_cell(task: CellTask) -> CellFrames:
    """Train one cell in this process with its framework's adapter; return its tables."""
    adapter = load_adapter(task.cell.framework, task.engine)
    if task.engine == "batched":
        return cell_frames(task, adapter.fit_batched, adapter.fit_batched)
    return cell_frames(task, adapter.fit)


LOST_CELL_REASON = ("worker process died while training this cell (killed by a signal, "
                    "a crash in native code, or out of memory)")


def lost_cell_frames(task: CellTask, reason: str = LOST_CELL_REASON) -> CellFrames:
    """The tables of a cell whose worker died on it again and again: every run failed."""
    logger.error("cell %s: %s", task.cell.key, reason)

    def fail(*_: object) -> TrainOutput:
        raise RuntimeError(reason)

    return cell_frames(task, fail)  # per-run: every seed is recorded


def estimated_cost(cell: Cell, seeds: int) -> float:
    """A rough cost in milliseconds, to balance workers and start the longest cells first."""
    per_step, per_epoch = (0.8, 1.5) if cell.framework == "lightning" else (0.9, 3.0)
    steps = steps_per_epoch(150, cell.batch_size)
    return seeds * cell.epochs * (steps * per_step + per_epoch)


# ---------------------------------------------------------------------------------------------
# The loop every executor shares


class CellExecutor(Protocol):
    """Trains cells somewhere and hands their tables back, in the order they finish.

    ``tasks`` come longest first. An executor writes nothing: the loop that holds the results
    directory's lock writes each part, so no cell is written twice or half.
    """

    workers: int  # for the manifest: processes (local) or worker threads (cluster)
    scheduler: str | None

    def run(self, tasks: Sequence[CellTask]) -> Iterator[tuple[CellTask, CellFrames]]: ...

    def close(self) -> None: ...


def open_executor(
    engine: str,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    cells_per_task: int | None = None,
) -> CellExecutor:
    """The local process pools, or a connection to the Dask scheduler at ``scheduler``.

    Connecting raises ``xorbench.cluster.ClusterError`` (one line) when the scheduler is not
    there, has no workers, or its workers differ from this machine.
    """
    if scheduler is None:
        return LocalPool(workers or os.cpu_count() or 1, engine)
    from xorbench.cluster import DaskExecutor  # Dask is imported only here

    return DaskExecutor(scheduler, cells_per_task=cells_per_task)


def run_experiment(
    experiment: Experiment,
    out_dir: Path,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    cells_per_task: int | None = None,
    executor: CellExecutor | None = None,
    on_cell_done: ProgressCallback | None = None,
    on_resume: Callable[[list[Cell]], None] | None = None,
    restart: bool = False,
) -> pd.DataFrame:
    """Train every cell not yet finished in ``out_dir`` and write the results directory.

    Returns the runs table. Cells whose parts are already in ``out_dir`` (same experiment) are
    skipped, so an interrupted run resumes where it stopped, on either executor. With
    ``restart``, the results already in ``out_dir`` are deleted first, once the lock is held
    (never under a running run).

    Parameters
    ----------
    workers
        Local worker processes (default: the number of cores); not used with ``scheduler``.
    scheduler
        ``tcp://HOST:PORT`` of a running Dask scheduler; None (default) trains on this machine.
    cells_per_task
        Cells per Dask task (default: chosen from the grid and the cluster's size).
    executor
        An executor from :func:`open_executor` to use instead (the caller closes it).
    on_cell_done
        Called with each cell and its runs table as its part is written.
    on_resume
        Called once, before training, with the cells already finished when resuming.
    """
    results.check_target(out_dir, None if restart else experiment)  # before creating anything
    owned = executor is None
    if executor is None:
        executor = open_executor(experiment.engine, workers=workers, scheduler=scheduler,
                                 cells_per_task=cells_per_task)
    try:
        with results.locked(out_dir):
            if restart:
                kept = results.clear(out_dir)
                if kept:
                    logger.warning("--restart kept what xorbench run did not write in %s: %s",
                                   out_dir, ", ".join(kept))
            return _run_locked(experiment, out_dir, executor, on_cell_done, on_resume,
                               cleared=restart)
    finally:
        if owned:
            executor.close()


def cell_tasks(experiment: Experiment, todo: Sequence[Cell]) -> list[CellTask]:
    """The tasks of the ``todo`` cells, longest first (LPT: the last cells to finish are short)."""
    seeds = tuple(design_seeds(experiment.base_seed, experiment.seeds, experiment.seed_design))
    return [
        CellTask(cell, seeds, experiment.base_seed, experiment.data_per_run, experiment.target,
                 experiment.engine)
        for cell in sorted(todo, key=lambda c: -estimated_cost(c, len(seeds)))
    ]


def _run_locked(
    experiment: Experiment, out_dir: Path, executor: CellExecutor,
    on_cell_done: ProgressCallback | None,
    on_resume: Callable[[list[Cell]], None] | None,
    *,
    cleared: bool = False,
) -> pd.DataFrame:
    manifest = results.start(out_dir, experiment, workers=executor.workers,
                             scheduler=executor.scheduler, cleared=cleared)
    done = results.finished_cells(out_dir)
    todo = [cell for cell in experiment.cells if cell.key not in done]
    if len(todo) < len(experiment.cells):
        logger.info("resuming: %d of %d cells already finished",
                    len(experiment.cells) - len(todo), len(experiment.cells))
        if on_resume is not None:
            on_resume([cell for cell in experiment.cells if cell.key in done])

    parts_dir = out_dir / results.PARTS
    for task, frames in executor.run(cell_tasks(experiment, todo)):
        results.write_part(parts_dir, task.cell.key, *frames)
        logger.info("cell %s: part written", task.cell.key)
        if on_cell_done is not None:
            on_cell_done(task.cell, frames.runs)

    runs = results.merge_parts(out_dir, [c.key for c in experiment.cells])
    stats.write_summary(out_dir)
    results.finish(out_dir, manifest)
    return runs


# ---------------------------------------------------------------------------------------------
# The local executor: process pools on this machine


def split_workers(workers: int, cost_by_framework: dict[str, float]) -> dict[str, int]:
    """Share ``workers`` processes among frameworks in proportion to their estimated work."""
    frameworks = [fw for fw, cost in cost_by_framework.items() if cost > 0]
    if len(frameworks) == 1 or workers < len(frameworks):
        return dict.fromkeys(frameworks, workers)
    total = sum(cost_by_framework[fw] for fw in frameworks)
    shares = {fw: max(1, round(workers * cost_by_framework[fw] / total)) for fw in frameworks}
    while sum(shares.values()) > workers:
        biggest = max(shares, key=lambda fw: shares[fw])
        shares[biggest] -= 1
    return shares


class LocalPool:
    """Trains cells in spawned worker processes on this machine, one framework per process."""

    scheduler: str | None = None

    def __init__(self, workers: int, engine: str) -> None:
        self.workers = workers
        self.engine = engine

    def run(self, tasks: Sequence[CellTask]) -> Iterator[tuple[CellTask, CellFrames]]:
        costs: dict[str, float] = {}
        for task in tasks:
            fw = task.cell.framework
            costs[fw] = costs.get(fw, 0.0) + estimated_cost(task.cell, len(task.seeds))
        shares = split_workers(self.workers, costs)
        logger.info("%d cells to train; worker processes per framework: %s", len(tasks), shares)

        if sum(shares.values()) <= self.workers:
            yield from _run_pools(tasks, shares, self.engine)
            return
        for fw in shares:  # fewer workers than frameworks: one framework after the other
            fw_tasks = [t for t in tasks if t.cell.framework == fw]
            yield from _run_pools(fw_tasks, {fw: shares[fw]}, self.engine)

    def close(self) -> None:
        """Nothing to release: the pools live only while :meth:`run` is iterated."""


EXIT_INTERRUPTED = 130


def _init_pool_worker(framework: str, engine: str, parent: int) -> None:
    """:func:`init_worker`, and the worker ends itself when its run dies or is interrupted.

    A killed run must not leave workers that go on training. On Ctrl-C (sent to the whole
    process group) the worker exits quietly; the run reports the interruption once.
    """
    signal.signal(signal.SIGINT, lambda *_: os._exit(EXIT_INTERRUPTED))
    exit_with_parent(parent)
    init_worker(framework, engine)


def _new_pool(framework: str, workers: int, engine: str) -> cf.ProcessPoolExecutor:
    context = multiprocessing.get_context("spawn")
    return cf.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_pool_worker,
        initargs=(framework, engine, os.getpid()),
    )


@dataclass
class _Pool:
    """A process pool working for one framework, and how many of its workers are busy."""

    framework: str
    size: int
    executor: cf.ProcessPoolExecutor
    busy: int = 0
    broken: bool = False


def _run_pools(
    tasks: Sequence[CellTask], shares: dict[str, int], engine: str
) -> Iterator[tuple[CellTask, CellFrames]]:
    """Train ``tasks`` on one spawned process pool per framework, yielding each finished cell.

    Cells are handed out one per free worker, longest first. When a framework has no cell left,
    its workers are handed to the framework with the most estimated work left, so two workers
    never idle while one framework's queue is long.

    A worker that dies (a segfault, an out-of-memory kill) breaks its whole pool, and every cell
    in flight there fails with it. Those cells are retried one at a time in a fresh process: the
    cell that kills its worker again is recorded as failed; the others finish normally.
    """
    queues = {fw: deque(t for t in tasks if t.cell.framework == fw) for fw in shares}
    pools = [_Pool(fw, n, _new_pool(fw, n, engine)) for fw, n in shares.items()]
    in_flight: dict[cf.Future[CellFrames], tuple[CellTask, _Pool]] = {}
    suspects: list[CellTask] = []

    def fill(pool: _Pool) -> None:
        queue = queues[pool.framework]
        while pool.busy < pool.size and queue and not pool.broken:
            task = queue.popleft()
            in_flight[pool.executor.submit(train_cell, task)] = (task, pool)
            pool.busy += 1

    def most_work_left() -> str | None:
        left = {fw: sum(estimated_cost(t.cell, len(t.seeds)) for t in q)
                for fw, q in queues.items() if q}
        return max(left, key=lambda fw: left[fw]) if left else None

    try:
        for pool in pools:
            fill(pool)
        while in_flight:
            done, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
            for future in done:
                task, pool = in_flight.pop(future)
                pool.busy -= 1
                try:
                    frames = future.result()
                except BrokenProcessPool:
                    pool.broken = True
                    suspects.append(task)
                    continue
                yield task, frames

            for pool in list(pools):
                if pool.busy or (queues[pool.framework] and not pool.broken):
                    fill(pool)
                    continue
                # Idle: its framework is done (or its pool broke); give its workers new work.
                pool.executor.shutdown(wait=True)
                pools.remove(pool)
                framework = pool.framework if queues[pool.framework] else most_work_left()
                if framework is not None:
                    logger.info("%d worker(s) move to %s cells", pool.size, framework)
                    fresh = _Pool(framework, pool.size, _new_pool(framework, pool.size, engine))
                    pools.append(fresh)
                    fill(fresh)
    finally:
        for pool in pools:
            pool.executor.shutdown(wait=True, cancel_futures=True)

    if suspects:
        logger.warning("a worker process died; retrying its %d cells one at a time",
                       len(suspects))
    for task in suspects:
        with _new_pool(task.cell.framework, 1, engine) as alone:
            try:
                frames = alone.submit(train_cell, task).result()
            except BrokenProcessPool:
                frames = lost_cell_frames(task)
        yield task, frames
