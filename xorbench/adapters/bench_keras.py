"""Keras training runs (per-run and seed-batched), built for the speed benchmarks.

:func:`prepare` builds a run the way the engine's ``fit`` builds it (model, optimizer,
``compile``, input pipeline, epoch recorder) and returns a
:class:`~xorbench.adapters.paused.PreparedRun` whose ``model.fit`` covers all its epochs and
runs in a worker thread, parked by :class:`~xorbench.adapters.paused.PausedFit` between the
warm-up and the timed epochs. The warm-up epoch holds the first call of the training function,
i.e. its tracing (and XLA compilation where the engine turns ``jit_compile`` on). The timed
window opens at ``on_epoch_begin`` of the first timed epoch and closes at ``on_train_end``:
whole epochs, with their per-epoch validation, and no tracing, start-up or shut-down.

The runs are assembled from the pieces the engines' ``fit`` uses, some of them private to those
modules (the epoch recorders, the evaluation weights, the seed freezer): the adapters have no
public build/train split yet, and a copy could drift from what the grid runs. The tests check
that a prepared run trains exactly what ``fit`` trains.

Importing this module starts TensorFlow; keep it out of any process that imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Imported first: it sets TensorFlow's environment (threads, oneDNN, log level) before TF starts.
from xorbench.adapters import keras as keras_adapter

# isort: split

import keras
import numpy as np

from xorbench.adapters import keras_batched
from xorbench.adapters.paused import PausedFit, PreparedRun
from xorbench.data import Dataset, batch_bounds
from xorbench.grid import Cell
from xorbench.model import Weights

FRAMEWORKS: tuple[str, ...] = ("keras",)

class _Gate(keras.callbacks.Callback):
    """Calls the PausedFit's hooks: at the first timed epoch's start and at the end of training."""

    def __init__(self, paused: PausedFit, warmup: int) -> None:
        super().__init__()
        self.paused = paused
        self.warmup = warmup

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch == self.warmup:
            self.paused.timed_epochs_begin()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.paused.timed_epochs_end()


class KerasRun:
    """One ``model.fit`` over all epochs of a run, paused after the warm-up epochs.

    Attributes
    ----------
    model
        The compiled model being trained.
    recorder
        The engine's epoch recorder: it holds the rows of the epochs trained so far.
    jit_compile
        Whether the engine compiles its training step with XLA.
    """

    def __init__(self, model: keras.Model, batches: Any, recorder: keras.callbacks.Callback,
                 epochs: int, steps_per_epoch: int, warmup: int, jit_compile: bool) -> None:
        self.model = model
        self.recorder = recorder
        self.jit_compile = jit_compile
        self._batches = batches
        self._epochs = epochs
        self._steps_per_epoch = steps_per_epoch
        self._paused = PausedFit(self._fit, name="keras-fit")
        self._gate = _Gate(self._paused, warmup)

    def _fit(self) -> None:
        # As the engines call it; the gate comes after the recorder, so the timed window
        # holds each epoch's validation.
        self.model.fit(
            self._batches,
            epochs=self._epochs,
            steps_per_epoch=self._steps_per_epoch,
            shuffle=False,
            verbose=0,
            callbacks=[self.recorder, self._gate],
        )

    def start(self) -> None:
        """Start ``model.fit``: trace the training function and train the warm-up epochs."""
        self._paused.start()

    def resume(self) -> None:
        """Train the timed epochs."""
        self._paused.resume()

    def finish(self) -> None:
        """Let ``fit`` end and drop the graphs it built, so rounds do not pile them up."""
        try:
            self._paused.finish()
        finally:
            # The full garbage-collection pass is slow and frees nothing the next round needs.
            keras.backend.clear_session(free_memory=False)


def _per_run(cell: Cell, data: Dataset, initial: Weights, orders: np.ndarray,
             warmup: int) -> KerasRun:
    """What :func:`xorbench.adapters.keras.train` builds, validation every epoch."""
    ka = keras_adapter
    steps = len(batch_bounds(data.n_train, cell.batch_size))
    model = ka.build_model(tuple(cell.hidden))
    ka.set_weights(model, initial)
    optimizer = ka.keras_optimizer(cell.optimizer_spec)
    ka.compile_model(model, optimizer, steps, ka.JIT_COMPILE)
    optimizer.build(model.trainable_variables)
    weights = ka._EvaluationWeights(model)
    recorder = ka._EpochRecorder(data, weights, cell.epochs, 1, steps)
    batches = ka.batch_pipeline(data, orders, cell.batch_size, cell.epochs)
    return KerasRun(model, batches, recorder, cell.epochs, steps, warmup, ka.JIT_COMPILE)


def _batched(cell: Cell, data: Dataset, initials: Sequence[Weights], orders: np.ndarray,
             warmup: int) -> KerasRun:
    """What :func:`xorbench.adapters.keras_batched.fit_batched` builds."""
    kb = keras_batched
    seeds = len(initials)
    steps = len(batch_bounds(data.n_train, cell.batch_size))
    model = kb.SeedBatchedMLP(seeds, cell.hidden, data)
    model.load_weights_per_seed(initials)
    optimizer = keras_adapter.keras_optimizer(cell.optimizer_spec)
    model.compile(optimizer=optimizer, steps_per_execution=steps, jit_compile=kb.JIT_COMPILE)
    optimizer.build(model.trainable_variables)
    model.freezer = kb._Freezer(model.seed_variables(), seeds)
    recorder = kb._SeedRecorder(data, seeds, cell.epochs, steps)
    batches = kb.batch_pipeline(orders, cell.batch_size, cell.epochs)
    return KerasRun(model, batches, recorder, cell.epochs, steps, warmup, kb.JIT_COMPILE)


def prepare(cell: Cell, data: Dataset, initials: Sequence[Weights], orders: np.ndarray,
            engine: str, warmup: int = 1) -> PreparedRun:
    """Build a Keras run of ``cell`` for timing; nothing is trained until ``start()``.

    Parameters
    ----------
    cell
        The grid point; ``cell.framework`` is ``"keras"`` and ``cell.epochs`` counts the
        warm-up and the timed epochs.
    data
        Training and validation sets.
    initials
        Each seed's starting weights in Keras layout; exactly one for the per-run engine.
    orders
        int array of shape (seeds, epochs, n_train): each seed's training indices per epoch.
    engine
        ``"per-run"`` or ``"batched"``.
    warmup
        Epochs trained by ``start()``; at least 1, the epoch that traces the training function.

    Returns
    -------
    PreparedRun
        ``start()`` traces and trains the warm-up epochs, ``resume()`` the other
        ``cell.epochs - warmup``.
    """
    if cell.framework not in FRAMEWORKS:
        raise ValueError(f"framework must be 'keras' here; received {cell.framework!r}")
    if engine not in ("per-run", "batched"):
        raise ValueError(f"engine must be one of per-run, batched; received {engine!r}")
    if not 1 <= warmup < cell.epochs:
        raise ValueError(
            f"warmup must be in [1, cell.epochs = {cell.epochs}), so that some epochs are timed; "
            f"received {warmup}"
        )
    orders = np.asarray(orders)
    if engine == "per-run" and (len(initials) != 1 or len(orders) != 1):
        raise ValueError(
            f"the per-run engine trains one seed; received {len(initials)} initial weights "
            f"and orders for {len(orders)} seeds"
        )

    if engine == "per-run":
        return _per_run(cell, data, initials[0], orders[0], warmup)
    return _batched(cell, data, initials, orders, warmup)
