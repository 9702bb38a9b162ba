"""A training call paused after its warm-up epochs, so a benchmark times only the epochs after.

A framework's ``fit`` does its start-up work (Lightning's Trainer start, Keras's tracing and
compilation) inside the call, before the first epoch, and its shut-down work after the last one.
To time steady-state epochs and nothing else, :class:`PausedFit` runs the whole ``fit`` in a
worker thread and parks it at the start of the first timed epoch. The framework's own epoch
hooks (a Lightning ``Callback``, a Keras ``Callback``) call :meth:`PausedFit.timed_epochs_begin`
and :meth:`PausedFit.timed_epochs_end`; the caller sees three calls::

    run.start()    # build, start-up and warm-up epochs; returns when the thread is parked
    run.resume()   # the timed epochs; returns right after the last one
    run.finish()   # the framework's shut-down, then the thread is joined

While the worker trains, the calling thread waits on an event and holds no lock, so nothing
competes with the training. Hand-over costs tens of microseconds, against timed calls of tens of
milliseconds or more. This module imports no framework.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger(__name__)

# No call of a training benchmark takes anywhere near this long; a wait this long means a hook
# was never called, and an error beats a hung benchmark session.
WAIT_LIMIT_S = 900.0


class PreparedRun(Protocol):
    """A training run built for timing: start-up, timed epochs and shut-down as three calls."""

    def start(self) -> None:
        """Run everything before the timed epochs: start-up and warm-up epochs."""

    def resume(self) -> None:
        """Train the timed epochs, and nothing else."""

    def finish(self) -> None:
        """Run what follows the timed epochs and release every resource of the run."""


class PausedFit:
    """Run ``fit`` in a worker thread that parks at the start of the timed epochs.

    Parameters
    ----------
    fit
        The whole training call, run once in the worker thread. Its epoch hooks must call
        :meth:`timed_epochs_begin` at the start of the first timed epoch and
        :meth:`timed_epochs_end` at the end of the last one.
    name
        The worker thread's name, for logs and tracebacks.
    """

    def __init__(self, fit: Callable[[], object], name: str = "paused-fit") -> None:
        self._fit = fit
        self._parked = threading.Event()
        self._go = threading.Event()
        self._timed_done = threading.Event()
        self._error: BaseException | None = None
        self._began = False
        self._ended = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)

    # -- hooks, called inside fit (worker thread) -------------------------------------------

    def timed_epochs_begin(self) -> None:
        """Park until :meth:`resume`; called at the start of the first timed epoch."""
        self._began = True
        self._parked.set()
        if not self._go.wait(WAIT_LIMIT_S):
            raise RuntimeError(f"PausedFit waited {WAIT_LIMIT_S:.0f} s for resume(); none came")

    def timed_epochs_end(self) -> None:
        """Release :meth:`resume`; called at the end of the last timed epoch."""
        self._ended = True
        self._timed_done.set()

    # -- calls of the benchmark (calling thread) --------------------------------------------

    def start(self) -> None:
        """Start ``fit`` and return once it is parked before the timed epochs."""
        self._thread.start()
        self._wait(self._parked, "the start of the timed epochs")
        if not self._began:
            raise RuntimeError(
                "fit returned before its timed epochs began: a run needs more epochs than its "
                "warm-up, and its epoch hooks must call the PausedFit"
            )

    def resume(self) -> None:
        """Run the timed epochs: return at the end of the last one."""
        self._go.set()
        self._wait(self._timed_done, "the end of the timed epochs")
        if not self._ended:
            # A run that stopped early (a diverged loss) trained fewer epochs than were timed.
            raise RuntimeError("fit returned before the end of its timed epochs")

    def finish(self) -> None:
        """Let ``fit`` finish, join the worker and re-raise whatever it raised."""
        self._go.set()
        self._thread.join(WAIT_LIMIT_S)
        if self._thread.is_alive():
            raise RuntimeError(f"fit did not return within {WAIT_LIMIT_S:.0f} s of finish()")
        self._raise_error()

    # -- internals ----------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            self._fit()
        except BaseException as exc:  # re-raised in the calling thread
            self._error = exc
        finally:
            # A fit that stops early or fails never reaches a hook: nobody may wait forever.
            self._parked.set()
            self._timed_done.set()

    def _wait(self, event: threading.Event, what: str) -> None:
        if not event.wait(WAIT_LIMIT_S):
            raise RuntimeError(f"fit did not reach {what} within {WAIT_LIMIT_S:.0f} s")
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"fit failed in its worker thread: {error!r}") from error
