"""Keras 3 adapter: trains one run with a real ``model.fit`` on the TensorFlow backend.

What it builds, and why it is fast on a 30-parameter network:

- a ``Sequential`` of ``Dense`` layers (ReLU hidden, linear logit output), compiled with
  ``BinaryCrossentropy(from_logits=True)`` and ``BinaryAccuracy(threshold=0.0)`` (the threshold
  applies to the logit; Keras's default 0.5 is meant for probabilities);
- one ``tf.data`` pipeline for the whole run, built once: epoch ``e`` yields ``orders[e]`` in
  consecutive slices of the batch size, the last one possibly smaller, so ``fit`` runs with
  ``shuffle`` off and no Python work per batch;
- ``steps_per_execution`` equal to the steps of one epoch, so one call of the traced training
  function trains one whole epoch;
- validation in a callback after each epoch's last update, in numpy from the weights
  (:func:`xorbench.model.evaluate`, the same code that computes epoch 0). Measured per epoch at
  full batch: about 0.5 ms, against about 30 ms for ``fit(validation_data=...)``, which runs a
  whole ``evaluate`` loop every epoch; a traced forward pass on the validation tensors cost the
  same as numpy.

The train loss and accuracy are Keras's own epoch values: its loss tracker is a mean weighted by
each batch's size, over the losses computed before each update, which is xorbench's definition
(field case F5); this holds with several steps per execution, as the tests check.

Importing this module starts TensorFlow; the runner imports it only inside a worker process.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

# TensorFlow reads these when its runtime starts, i.e. at import; setdefault lets a caller
# override them. One thread is fastest for a tiny model, and oneDNN off removes one source of
# float reordering.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import keras
import numpy as np
import tensorflow as tf

from xorbench.adapters.base import DTYPES, HISTORY_METRICS, OPTIMIZER_IMPLS, Trace, TrainOutput
from xorbench.adapters.keras_aligned import ALIGNED
from xorbench.adapters.keras_asgd import ASGD
from xorbench.data import Dataset, batch_bounds
from xorbench.grid import Cell
from xorbench.model import Weights, evaluate, flatten
from xorbench.optimizers import OptimizerSpec, asgd_averaging_active, keras_kwargs

logger = logging.getLogger(__name__)

FRAMEWORK = "keras"

# XLA (jit_compile=True) adds 0.5-1.5 s of compilation to every run and, measured on the
# reference 2-core machine, trained no faster: at batch 1, 200 epochs took 5.3-10.5 s with it and
# 5.4-10.5 s without (interleaved runs); at batch 8 to 150 it was as fast or slower per epoch.
JIT_COMPILE = False

# TensorFlow warns when one tf.function retraces often; a benchmark round or a parity cell
# builds a fresh model on purpose, and each model traces its own training function once.
_RETRACING = "triggered tf.function retracing"


class _DropRetracingNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _RETRACING not in str(record.msg)


def quiet_retracing_notes() -> None:
    """Drop TensorFlow's retracing warning in this process; every other message still shows."""
    tf_logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _DropRetracingNote) for f in tf_logger.filters):
        tf_logger.addFilter(_DropRetracingNote())


_OPTIMIZERS: dict[str, Any] = {
    "sgd": keras.optimizers.SGD,
    "asgd": ASGD,
    "rmsprop": keras.optimizers.RMSprop,
    "adam": keras.optimizers.Adam,
}


def keras_optimizer(spec: OptimizerSpec, impl: str = "native") -> keras.optimizers.Optimizer:
    """The Keras optimizer of ``spec``, every hyperparameter taken from ``keras_kwargs``.

    ``impl`` "aligned" builds torch's formulas for rmsprop and adam
    (:mod:`xorbench.adapters.keras_aligned`); sgd and asgd are the same in both.
    """
    if impl not in OPTIMIZER_IMPLS:
        raise ValueError(
            f"optimizer_impl must be one of {', '.join(OPTIMIZER_IMPLS)}; received {impl!r}"
        )
    classes = _OPTIMIZERS | ALIGNED if impl == "aligned" else _OPTIMIZERS
    return classes[spec.name](**keras_kwargs(spec))


def optimizer_settings(
    spec: OptimizerSpec, impl: str = "native", dtype: str = "float32"
) -> dict[str, Any]:
    """What the Keras optimizer object for ``spec`` holds, read back from a live object.

    Returns ``{"class": ..., "settings": optimizer.get_config(), "library_defaults": ...}``, the
    last from the same class built without arguments; both built with ``dtype`` as Keras's
    floatx, which is the type Keras keeps the learning rate in.
    """
    with floatx(dtype):
        optimizer = keras_optimizer(spec, impl)
        cls = type(optimizer)
        defaults = cls().get_config()
        settings = optimizer.get_config()
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "settings": settings,
        "library_defaults": defaults,
    }


@contextlib.contextmanager
def floatx(dtype: str) -> Iterator[None]:
    """Make ``dtype`` Keras's default float type while a run is built and trained.

    Keras gives layers, the learning-rate variable, the loss and the metrics the default type
    when they are created, so a float64 run needs it from the model's construction on.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; received {dtype!r}")
    previous = keras.config.floatx()
    keras.config.set_floatx(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(previous)


def build_model(hidden: tuple[int, ...], dtype: str = "float32") -> keras.Model:
    """The MLP 2 -> hidden... -> 1 as a ``Sequential`` of ``Dense`` layers, outputting a logit.

    Kernels start at zero: every run loads its own weights, so drawing Keras's random defaults
    would only consume the global generator. ``dtype`` is the float type of inputs and weights.
    """
    layers: list[Any] = [keras.Input(shape=(2,), dtype=dtype)]
    for i, width in enumerate(hidden):
        layers.append(
            keras.layers.Dense(
                width,
                activation="relu",
                kernel_initializer="zeros",
                name=f"hidden_{i + 1}",
                dtype=dtype,
            )
        )
    layers.append(keras.layers.Dense(1, kernel_initializer="zeros", name="logit", dtype=dtype))
    return keras.Sequential(layers, name="xor_mlp")


def compile_model(
    model: keras.Model, optimizer: keras.optimizers.Optimizer, steps: int, jit: bool = False
) -> None:
    """Compile with the logit loss, a logit-threshold accuracy and ``steps`` per execution.

    ``jit`` compiles the training step with XLA (see ``JIT_COMPILE``).
    """
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)],
        steps_per_execution=steps,
        jit_compile=jit,
    )


def set_weights(model: keras.Model, weights: Weights) -> None:
    """Load ``(kernel [in, out], bias)`` pairs, the Keras layout, into ``model``."""
    dtype = model.weights[0].dtype
    flat = [np.asarray(a, dtype=dtype) for pair in weights for a in pair]
    model.set_weights(flat)


def weights_from(variables: list[Any], dtype: Any = np.float32) -> Weights:
    """``(kernel, bias)`` numpy pairs of ``dtype`` from a flat list [kernel, bias, kernel, ...]."""
    flat = [np.asarray(v.numpy(), dtype=dtype) for v in variables]
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def batch_pipeline(
    data: Dataset, orders: np.ndarray, batch_size: int, epochs: int, dtype: str = "float32"
) -> tf.data.Dataset:
    """All batches of all epochs as one ``tf.data.Dataset``, in the order they are fed.

    Epoch ``e`` yields ``orders[e]`` in consecutive slices of ``batch_size``, the last one
    possibly smaller, as :func:`xorbench.data.batch_bounds`: batching restarts at every epoch.
    The samples are gathered in numpy once (epochs x n_train x 3 floats, under 1 MB for 500
    epochs), which measured cheaper per batch than gathering inside the pipeline.
    """
    x = np.asarray(data.x_train, dtype=dtype)[orders[:epochs]]
    y = np.asarray(data.y_train, dtype=dtype)[orders[:epochs]][..., None]
    per_epoch = tf.data.Dataset.from_tensor_slices((x, y))
    batches = per_epoch.flat_map(
        lambda xe, ye: tf.data.Dataset.from_tensor_slices((xe, ye)).batch(batch_size)
    )
    return batches.prefetch(tf.data.AUTOTUNE)


class _EpochRecorder(keras.callbacks.Callback):
    """Collects each epoch's row, validates on schedule and stops on a non-finite loss."""

    def __init__(
        self,
        data: Dataset,
        weights: _EvaluationWeights,
        epochs: int,
        val_every: int,
        steps_per_epoch: int,
    ) -> None:
        super().__init__()
        self.data = data
        self.to_evaluate = weights
        self.epochs = epochs
        self.val_every = val_every
        self.steps_per_epoch = steps_per_epoch
        self.rows: list[list[float]] = []
        self.diverged = False

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        loss, acc = float(logs["loss"]), float(logs["accuracy"])
        if not math.isfinite(loss):
            self.diverged = True
            self.model.stop_training = True
        number = epoch + 1
        val_loss = val_acc = math.nan
        if number % self.val_every == 0 or number == self.epochs or self.diverged:
            weights = self.to_evaluate(number * self.steps_per_epoch)
            val_loss, val_acc = validate(weights, self.data)
        self.rows.append([loss, acc, val_loss, val_acc])


class _EvaluationWeights:
    """The weights to evaluate after a number of updates: ASGD's average once it averages.

    They come in the model's float type, so a float64 run also validates in float64.
    """

    def __init__(self, model: keras.Model) -> None:
        optimizer = model.optimizer
        self._weights = list(model.weights)
        self._dtype = np.dtype(self._weights[0].dtype)
        self._t0: float | None = None
        if isinstance(optimizer, ASGD):
            self._t0 = optimizer.t0
            self._averages = optimizer.averaged_variables()

    def __call__(self, steps: int) -> Weights:
        if self._t0 is not None and asgd_averaging_active(steps, self._t0):
            return weights_from(self._averages, self._dtype)
        return weights_from(self._weights, self._dtype)


def validate(weights: Weights, data: Dataset) -> tuple[float, float]:
    """(loss, accuracy) on the validation split, in numpy like the caller's epoch 0.

    A diverged run has non-finite weights; its NaN values are the record, not a warning.
    """
    with np.errstate(all="ignore"):
        return evaluate(weights, data.x_val, data.y_val)


def train(
    cell: Cell,
    data: Dataset,
    initial: Weights,
    orders: np.ndarray,
    optimizer: keras.optimizers.Optimizer,
    val_every: int = 1,
    dtype: str = "float32",
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> TrainOutput:
    """:func:`fit` with a given optimizer object (tests use it for lr 0, which specs refuse).

    ``dtype`` is the float type of the whole run (it must also be Keras's ``floatx`` while the
    optimizer is created and trained, see :func:`floatx`); ``callbacks`` run after the
    adapter's own epoch recorder.
    """
    _check_inputs(cell, data, orders, val_every)
    started = time.perf_counter()
    steps_per_epoch = len(batch_bounds(data.n_train, cell.batch_size))

    model = build_model(tuple(cell.hidden), dtype)
    set_weights(model, initial)
    compile_model(model, optimizer, steps_per_epoch, JIT_COMPILE)
    # Built here, eagerly, rather than while Keras traces the first step: the callback reads
    # the optimizer's ASGD averages from the start.
    optimizer.build(model.trainable_variables)
    weights = _EvaluationWeights(model)
    recorder = _EpochRecorder(data, weights, cell.epochs, val_every, steps_per_epoch)
    batches = batch_pipeline(data, orders, cell.batch_size, cell.epochs, dtype)

    fit_started = time.perf_counter()
    model.fit(
        batches,
        epochs=cell.epochs,
        steps_per_epoch=steps_per_epoch,
        shuffle=False,
        verbose=0,
        callbacks=[recorder, *callbacks],
    )
    fit_s = time.perf_counter() - fit_started

    steps = int(optimizer.iterations.numpy())
    is_asgd = isinstance(optimizer, ASGD)
    averaging = asgd_averaging_active(steps, optimizer.t0) if is_asgd else None
    history = np.asarray(recorder.rows, dtype=np.float64).reshape(-1, len(HISTORY_METRICS))
    logger.debug("%s: %d epochs, %d steps in %.3f s", cell.key, len(history), steps, fit_s)
    return TrainOutput(
        history=history,
        final_weights=[(k.astype(np.float32), b.astype(np.float32)) for k, b in weights(steps)],
        diverged=recorder.diverged,
        asgd_averaging=averaging,
        steps=steps,
        extra={"setup_s": fit_started - started, "fit_s": fit_s},
    )


def fit(
    cell: Cell, data: Dataset, initial: Weights, orders: np.ndarray, val_every: int = 1
) -> TrainOutput:
    """Train ``cell`` from ``initial`` on ``data`` in the batch order ``orders``.

    Parameters
    ----------
    cell
        The grid point: optimizer, batch size, lr, epochs and hidden sizes.
    data
        Train and validation splits.
    initial
        Starting weights in Keras layout (kernel [in, out]).
    orders
        Training indices per epoch, shape (>= cell.epochs, n_train).
    val_every
        Validate every ``val_every`` epochs, and always after the last one; other rows hold NaN
        validation values.

    Returns
    -------
    TrainOutput
        One row per trained epoch; see :class:`xorbench.adapters.base.TrainOutput`.
    """
    optimizer = keras_optimizer(cell.optimizer_spec, cell.optimizer_impl)
    return train(cell, data, initial, orders, optimizer, val_every)


class _WeightTrace(keras.callbacks.Callback):
    """Flattened iterates of the model, in its float type, after every epoch."""

    def __init__(self, rows: list[np.ndarray]) -> None:
        super().__init__()
        self.rows = rows

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._record()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._record()

    def _record(self) -> None:
        dtype = np.dtype(self.model.weights[0].dtype)
        self.rows.append(flatten(weights_from(self.model.trainable_variables, dtype)))


def trace(
    cell: Cell, data: Dataset, initial: Weights, orders: np.ndarray, dtype: str = "float32"
) -> Trace:
    """Train ``cell`` as :func:`fit` does, in ``dtype``, keeping the weights of every epoch.

    Row 0 of the weights is read back from the model when training begins, after ``initial``
    was loaded, so a layout mistake on the way in shows in the parity table.
    """
    rows: list[np.ndarray] = []
    with floatx(dtype):
        optimizer = keras_optimizer(cell.optimizer_spec, cell.optimizer_impl)
        recorder = _WeightTrace(rows)
        out = train(cell, data, initial, orders, optimizer, dtype=dtype, callbacks=[recorder])
    return Trace(
        history=out.history,
        weights=np.vstack(rows).astype(np.float64),
        asgd_averaging=out.asgd_averaging,
        steps=out.steps,
    )


def _check_inputs(cell: Cell, data: Dataset, orders: np.ndarray, val_every: int) -> None:
    """Raise ValueError for a cell, order array or validation period this adapter cannot run."""
    if cell.framework != FRAMEWORK:
        raise ValueError(f"framework must be {FRAMEWORK!r} here; received {cell.framework!r}")
    if orders.ndim != 2 or orders.shape[0] < cell.epochs or orders.shape[1] != data.n_train:
        raise ValueError(
            f"orders must have shape (>= {cell.epochs}, {data.n_train}); received {orders.shape}"
        )
    if isinstance(val_every, bool) or not isinstance(val_every, int) or val_every < 1:
        raise ValueError(f"val_every must be an integer >= 1; received {val_every!r}")
