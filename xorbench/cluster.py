"""Train a grid's cells on a running Dask cluster (``xorbench run --scheduler tcp://HOST:PORT``).

Dask is imported only inside the functions here, and this module only when a scheduler is given,
so a local run never imports Dask.

How the work is shared out:

- A Dask task trains one or a few cells of one framework and *returns* their tables; the client
  writes each cell's part with :func:`xorbench.results.write_part`, under the results
  directory's lock. Workers need no shared file system, and a worker killed mid-task has written
  nothing: Dask runs its task again on another worker, and the part is written once, when the
  client receives it. Resume is the part-based one of a local run, so a cell finished on the
  cluster is not trained again locally, and the other way round.
- Inside a worker, cells are trained by a child process per framework
  (:mod:`xorbench.cell_process`), so torch and TensorFlow never share a process however the
  cluster mixes the tasks.
- Several cells per task (``cells_per_task``) cut the scheduler's per-task overhead on grids of
  thousands of short cells; a killed worker then costs the whole task's cells one rerun.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from xorbench.cell_process import CellProcess
    from xorbench.runner import CellFrames, CellTask

logger = logging.getLogger(__name__)

SCHEDULER_FORM = "tcp://HOST:PORT"
CONNECT_TIMEOUT_S = 10
# Packages whose versions must match between this machine and the workers for the cluster's
# tables to equal a local run's.
MATCHED_PACKAGES: tuple[str, ...] = (
    "python", "numpy", "pandas", "torch", "lightning", "tensorflow-cpu", "tensorflow", "keras",
    "xorbench",
)
# Aim for this many tasks per worker thread, so the last tasks to finish are short.
TASKS_PER_THREAD = 4


class ClusterError(ValueError):
    """A Dask scheduler that cannot be used as asked; the message is one line for the user."""


def _connect(client_class: Any, address: str) -> Any:
    """A Dask client of the scheduler at ``address``, or ClusterError after the timeout.

    The client's own timeout covers the TCP connection, not a server that accepts it and never
    speaks Dask (another service on that port): the connection is made in a daemon thread that
    is abandoned if it has not finished in time.
    """
    outcome: dict[str, Any] = {}

    def connect() -> None:
        try:
            outcome["client"] = client_class(address, timeout=CONNECT_TIMEOUT_S,
                                             set_as_default=False)
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=connect, name="dask-connect", daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT_S + 5)
    error = outcome.get("error")
    if "client" in outcome:
        return outcome["client"]
    why = type(error).__name__ if error is not None else "no Dask handshake"
    raise ClusterError(
        f"no Dask scheduler answered at {address} within {CONNECT_TIMEOUT_S} s ({why}); "
        "start one (dask scheduler) or fix --scheduler")


# Not yet supported: tls:// schedulers (Dask's only authentication). This note goes when
# --scheduler accepts tls:// with a certificate option passed to distributed.Security.
def parse_scheduler(text: str) -> str:
    """Check a ``--scheduler`` value: ``tcp://HOST:PORT`` with a port from 1 to 65535."""
    refusal = ClusterError(
        f"--scheduler must be {SCHEDULER_FORM}, e.g. tcp://127.0.0.1:8786; received {text!r}"
    )
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:  # a port that is not a number, or out of range
        raise refusal from None
    if (parts.scheme != "tcp" or not parts.hostname or port is None or port == 0
            or parts.username or parts.password or parts.path not in ("", "/")
            or parts.query or parts.fragment):
        raise refusal
    return f"tcp://{parts.netloc}"


# ---------------------------------------------------------------------------------------------
# Client side


def chunk_tasks(tasks: Sequence[CellTask], cells_per_task: int) -> list[tuple[CellTask, ...]]:
    """Group ``tasks`` (longest first) into chunks of one framework, keeping that order."""
    chunks: list[tuple[CellTask, ...]] = []
    open_chunk: dict[str, list[CellTask]] = {}
    for task in tasks:
        chunk = open_chunk.setdefault(task.cell.framework, [])
        chunk.append(task)
        if len(chunk) == cells_per_task:
            chunks.append(tuple(chunk))
            del open_chunk[task.cell.framework]
    chunks.extend(tuple(chunk) for chunk in open_chunk.values())
    return chunks


def auto_cells_per_task(n_cells: int, threads: int) -> int:
    """One cell per task, unless the grid gives each worker thread many more than enough."""
    return max(1, n_cells // (TASKS_PER_THREAD * max(threads, 1)))


class DaskExecutor:
    """Trains cells on the Dask cluster whose scheduler is at ``address``.

    Connecting checks the cluster: it must answer within :data:`CONNECT_TIMEOUT_S` seconds, have
    at least one worker, and its workers must run xorbench with the same library versions as
    this machine. Each failure is a one-line :class:`ClusterError`.
    """

    def __init__(self, address: str, *, cells_per_task: int | None = None) -> None:
        address = parse_scheduler(address)
        try:
            from distributed import Client
        except ImportError:
            raise ClusterError("--scheduler needs Dask: pip install -c constraints.txt "
                               "'xorbench[dask]'") from None
        self.client = _connect(Client, address)
        self.scheduler: str | None = address
        self.cells_per_task = cells_per_task
        try:
            self.workers = self._check_workers()
        except BaseException:
            self.client.close()
            raise

    def _check_workers(self) -> int:
        """The cluster's worker threads, once its workers are known to match this machine."""
        from xorbench.environment import code_digest, versions

        try:
            self.client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
        except TimeoutError:
            raise ClusterError(f"the Dask scheduler at {self.scheduler} has no workers after "
                               f"{CONNECT_TIMEOUT_S} s; start some (dask worker)") from None
        try:
            by_worker: dict[str, dict[str, str | None]] = self.client.run(versions)
        except Exception as exc:  # a worker that cannot unpickle xorbench's function
            raise ClusterError(
                f"the Dask workers could not run xorbench ({type(exc).__name__}: {exc}); "
                "install it on every worker: pip install -c constraints.txt 'xorbench[dask]'"
            ) from None
        here = versions()
        for worker, found in sorted(by_worker.items()):
            for package in MATCHED_PACKAGES:
                if found.get(package) != here.get(package):
                    raise ClusterError(
                        f"Dask worker {worker} has {package} {found.get(package)}, this machine "
                        f"{here.get(package)}; install the same constraints.txt everywhere"
                    )
        # The same version number can hide other code (an edited checkout): compare the code.
        digests: dict[str, str] = self.client.run(code_digest)
        for worker, digest in sorted(digests.items()):
            if digest != code_digest():
                raise ClusterError(
                    f"Dask worker {worker} runs other xorbench code than this machine (same "
                    "version, different files); install the same checkout on every worker")
        info = self.client.scheduler_info(n_workers=-1)["workers"]
        return sum(int(w.get("nthreads", 1)) for w in info.values())

    def run(self, tasks: Sequence[CellTask]) -> Iterator[tuple[CellTask, CellFrames]]:
        """Submit ``tasks`` in chunks, longest first; yield each cell as its chunk returns."""
        from distributed import KilledWorker, as_completed

        from xorbench.runner import lost_cell_frames

        if not tasks:
            return
        # Not yet built: sending tasks to workers that already hold a child of their framework.
        # Now a worker may start a child for each framework (two imports, both in memory).
        # This note goes when tasks carry a per-framework Dask resource or worker restriction.
        size = self.cells_per_task or auto_cells_per_task(len(tasks), self.workers)
        chunks = chunk_tasks(tasks, size)
        logger.info("%d cells in %d Dask tasks of up to %d cells on %d worker threads",
                    len(tasks), len(chunks), size, self.workers)
        # Higher priority runs first: the scheduler keeps the longest-first order.
        futures = [
            self.client.submit(train_chunk, chunk, pure=False, priority=len(chunks) - i)
            for i, chunk in enumerate(chunks)
        ]
        chunk_of = {future.key: chunk for future, chunk in zip(futures, chunks, strict=True)}
        try:
            for future in as_completed(futures, loop=self.client.loop):
                chunk = chunk_of[future.key]
                try:
                    frames = future.result()
                except KilledWorker as exc:  # it took down several workers: record, go on
                    reason = f"the Dask workers running this cell died ({exc})"
                    frames = [lost_cell_frames(task, reason) for task in chunk]
                yield from zip(chunk, frames, strict=True)
                future.release()
        finally:
            self.client.cancel([f for f in futures if not f.done()])

    def close(self) -> None:
        self.client.close()


# ---------------------------------------------------------------------------------------------
# Worker side: runs inside a Dask worker process


_children: dict[tuple[str, str], CellProcess] = {}
_children_lock = threading.Lock()


def _child(framework: str, engine: str) -> CellProcess:
    """This worker process's child for ``framework``, started on first use."""
    from xorbench.cell_process import CellProcess

    with _children_lock:
        if not _children:
            atexit.register(_close_children)
        key = (framework, engine)
        if key not in _children:
            _children[key] = CellProcess(framework, engine)
        return _children[key]


def _close_children() -> None:
    # Close them all first, then wait: a Dask nanny kills a worker that takes 8 s to stop.
    with _children_lock:
        for child in _children.values():
            child.close()
        for child in _children.values():
            child.wait()
        _children.clear()


def train_chunk(chunk: Sequence[CellTask]) -> list[CellFrames]:
    """The Dask task: train each cell of ``chunk`` in its framework's child; return the tables.

    A child that dies on a cell (a crash in native code, an out-of-memory kill) is replaced and
    the cell tried once more; a cell that kills its child twice is recorded as failed, as on a
    local run.
    """
    from xorbench.cell_process import ChildDied
    from xorbench.runner import lost_cell_frames

    out = []
    for task in chunk:
        child = _child(task.cell.framework, task.engine)
        try:
            frames = child.train(task)
        except ChildDied as first:
            logger.warning("%s; trying the cell once more in a fresh child", first)
            try:
                frames = child.train(task)
            except ChildDied as second:
                frames = lost_cell_frames(task, str(second))
        out.append(frames)
    return out
