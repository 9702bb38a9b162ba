"""A long-lived child process that trains the cells of one framework, fed over pipes.

A Dask worker runs xorbench's tasks in threads of one Python process, and torch and TensorFlow
must never be imported in the same process (importing both has been reported to crash). So a
worker never trains a cell itself: it keeps one child process per framework, started on first
use with ``python -m xorbench.cell_process FRAMEWORK ENGINE PARENT_PID``, and sends it cells.
The framework is imported once per child, not once per cell.

Plain ``subprocess`` pipes rather than ``multiprocessing``: Dask starts its worker processes as
daemons, and a daemonic process may not start ``multiprocessing`` children.

Protocol: the parent writes a pickled :class:`~xorbench.runner.CellTask` to the child's stdin;
the child answers on its original stdout with a pickled ``("ok", CellFrames)`` or
``("error", traceback_text)``. Anything the frameworks print goes to stderr, so it can never
corrupt an answer. The child exits when its stdin closes (its worker stopped), or within a
second of its worker dying.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
import traceback
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # the child imports the runner only after it starts watching its parent
    from xorbench.runner import CellFrames, CellTask

logger = logging.getLogger(__name__)


class ChildDied(RuntimeError):
    """The framework's child process ended while training a cell."""


class CellProcess:
    """One child process training the cells of one framework, one cell at a time."""

    def __init__(self, framework: str, engine: str) -> None:
        self.framework = framework
        self.engine = engine
        self._lock = threading.Lock()  # a worker with several threads shares its children
        self._proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        from xorbench.runner import THREAD_VARIABLES

        env = dict(os.environ, **dict.fromkeys(THREAD_VARIABLES, "1"))
        logger.info("starting a %s child process", self.framework)
        return subprocess.Popen(
            [sys.executable, "-m", "xorbench.cell_process", self.framework, self.engine,
             str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
        )

    def train(self, task: CellTask) -> CellFrames:
        """Train ``task`` in the child; raise :class:`ChildDied` if the child ends meanwhile.

        A dead child is replaced before the next cell, so one crash costs one cell's attempt.
        """
        with self._lock:
            if self._proc.poll() is not None:
                self._proc = self._spawn()
            proc = self._proc
            if proc.stdin is None or proc.stdout is None:  # pragma: no cover - Popen(PIPE)
                raise RuntimeError("child process has no pipes")
            try:
                pickle.dump(task, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                proc.stdin.flush()
                status, payload = pickle.load(proc.stdout)
            except (EOFError, BrokenPipeError, pickle.UnpicklingError) as exc:
                code = proc.wait()
                raise ChildDied(f"{self.framework} child process ended with status {code} "
                                f"while training {task.cell.key}") from exc
        if status == "error":
            raise RuntimeError(f"training {task.cell.key} failed in its child process:\n"
                               f"{payload}")
        frames: CellFrames = payload
        return frames

    def close(self) -> None:
        """Close the child's stdin; it exits when it reads the end (see :meth:`wait`)."""
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            self._proc.stdin.close()

    def wait(self, timeout: float = 5.0) -> None:
        """Wait for a closed child to exit; kill it after ``timeout`` seconds."""
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def serve(framework: str, engine: str, requests: IO[bytes], answers: IO[bytes]) -> None:
    """The child's loop: read a task, train it, answer; return when ``requests`` ends."""
    from xorbench.runner import init_worker, train_cell

    init_worker(framework, engine)
    while True:
        try:
            task = pickle.load(requests)
        except EOFError:
            return
        answer: tuple[str, Any]
        try:
            answer = ("ok", train_cell(task))
        except Exception:  # reported to the parent, which raises it in the Dask task
            answer = ("error", traceback.format_exc())
        pickle.dump(answer, answers, protocol=pickle.HIGHEST_PROTOCOL)
        answers.flush()


def exit_with_parent(parent: int, interval_s: float = 1.0) -> None:
    """End this process soon after its parent ``parent`` dies, even in the middle of a cell.

    A worker killed by SIGKILL closes the pipes, but the child would only read the end after
    finishing its cell; by then Dask has sent the cell to another worker. The parent's pid comes
    from the parent: one read here could already be the reaper's, if the parent died first.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main() -> None:
    framework, engine, parent = sys.argv[1:4]
    exit_with_parent(int(parent))
    # Keep the real stdout for answers; point fd 1 at stderr so a framework's prints cannot
    # corrupt the pickle stream.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    with contextlib.suppress(BrokenPipeError):  # the parent went away mid-answer
        serve(framework, engine, sys.stdin.buffer, answers)
    # Every answer is flushed; skipping the frameworks' slow teardown (about 2 s each here)
    # lets a stopping Dask worker close its children before its nanny kills it.
    os._exit(0)


if __name__ == "__main__":
    main()
