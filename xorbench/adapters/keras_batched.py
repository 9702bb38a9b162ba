"""Seed-batched Keras 3 engine: every seed of a cell trained at once by one ``model.fit``.

All S seeds of a cell live in one model whose weights carry a leading seed axis (kernel
[S, in, out], bias [S, out]). What makes this exactly S independent runs:

- each seed gets its own batch order: the input pipeline yields index tensors of shape [B, S]
  (batch axis first, as Keras slices it) and the training step gathers x [S, B, 2] from the
  training set, so batch ``j`` of epoch ``e`` for seed ``s`` is ``orders[s, e, j*B:(j+1)*B]``;
- the objective is the sum over seeds of each seed's batch-mean BCE-with-logits, so the gradient
  of seed ``s``'s slice is the per-run gradient (a mean over seeds would scale it by 1/S, which
  changes the balance between gradient and epsilon in Adam and RMSprop);
- every optimizer in the grid updates each weight from its own gradient and its own slot
  variables; the only shared state (step count, ASGD's eta and mu) depends on the step number
  alone, which is the same for every seed;
- a seed whose epoch loss is not finite finishes that epoch, as the per-run engine does, keeps
  its row and is frozen from then on: its slices of the weights and of the optimizer's slot
  variables are copied at the end of the epoch and put back after every later update, so it
  neither moves nor disturbs the others. Training stops when every seed diverged.

Per-seed train loss and accuracy are accumulated inside the step, before each update, as sums
of ``loss * batch_size`` and correct counts (Keras's own definition, see ``keras.py``); a
callback turns them into epoch rows and validates every seed in numpy after the epoch's last
update, through a batched version of :func:`xorbench.model.evaluate`.

Importing this module starts TensorFlow; the runner imports it only inside a worker process.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from typing import Any

# Imported first: it sets the TensorFlow environment defaults (threads, oneDNN, log level)
# before TensorFlow starts, and it owns the optimizer table.
from xorbench.adapters.keras import keras_optimizer

# isort: split

import keras
import numpy as np
import tensorflow as tf

from xorbench.adapters.base import HISTORY_METRICS, TrainOutput
from xorbench.adapters.keras_asgd import ASGD
from xorbench.data import Dataset, batch_bounds
from xorbench.grid import Cell
from xorbench.model import Weights, bce_with_logits, layer_sizes
from xorbench.optimizers import asgd_averaging_active

logger = logging.getLogger(__name__)

FRAMEWORK = "keras"

# XLA off: on the 2-core reference machine it added 1-2 s of compilation per cell (two batch
# shapes at batch 32) and saved at most ~1.5 ms per epoch at batch 32 and nothing measurable at
# batch 1, with 1 or 100 seeds, so a cell of a few hundred epochs never wins it back.
JIT_COMPILE = False

# Seed-batched weights: per layer (kernel [S, in, out], bias [S, out]).
BatchedWeights = list[tuple[np.ndarray, np.ndarray]]


class SeedDense(keras.layers.Layer):
    """A dense layer per seed: ``x [S, B, in] @ kernel [S, in, out] + bias [S, out]``.

    Parameters
    ----------
    seeds
        Number of seeds S, the leading axis of every weight.
    units
        Output width.
    relu
        Apply ReLU to the output (hidden layers); the last layer outputs a logit.
    **kwargs
        Other :class:`keras.layers.Layer` arguments, such as ``name``.
    """

    def __init__(self, seeds: int, units: int, relu: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seeds = seeds
        self.units = units
        self.relu = relu

    def build(self, input_shape: Any) -> None:
        """Create the kernel and bias; every run loads its own values, so zeros suffice."""
        fan_in = int(input_shape[-1])
        self.kernel = self.add_weight(
            shape=(self.seeds, fan_in, self.units), initializer="zeros", name="kernel"
        )
        self.bias = self.add_weight(
            shape=(self.seeds, self.units), initializer="zeros", name="bias"
        )

    def call(self, inputs: Any) -> Any:
        """Outputs [S, B, units] for inputs [S, B, in]."""
        out = tf.matmul(inputs, self.kernel) + self.bias[:, None, :]
        return tf.nn.relu(out) if self.relu else out


class _Freezer:
    """Keeps the state of frozen seeds: a copy of every seed-axis variable, and puts it back.

    Not a Keras layer: its copies are created after the model and its optimizer are built, and
    are no part of the model's weights.
    """

    def __init__(self, variables: Sequence[Any], seeds: int) -> None:
        self.seeds = seeds
        self.pairs = [
            (v, tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False)) for v in variables
        ]

    def mask(self, flags: Any, variable: Any) -> Any:
        """Per-seed ``flags`` [S] reshaped to broadcast against ``variable`` [S, ...]."""
        return tf.reshape(flags, [self.seeds] + [1] * (len(variable.shape) - 1))

    def freeze(self, diverged: np.ndarray) -> None:
        """Copy the current state of the seeds where ``diverged`` [S] is True."""
        flags = tf.constant(diverged)
        for variable, frozen in self.pairs:
            frozen.assign(tf.where(self.mask(flags, variable), variable.value, frozen))

    def restore(self, active: Any) -> Any:
        """Put back the copied state of every seed where ``active`` [S] is False (traced)."""
        for variable, frozen in self.pairs:
            variable.assign(tf.where(self.mask(active, variable), variable.value, frozen))
        return tf.constant(True)


class SeedBatchedMLP(keras.Model):
    """The MLP of ``xorbench.model`` with a leading seed axis, and its seed-batched training step.

    Parameters
    ----------
    seeds
        Number of seeds S.
    hidden
        Hidden layer widths.
    data
        The training set is kept as constants; each step gathers its batch from index tensors.
    """

    def __init__(self, seeds: int, hidden: Sequence[int], data: Dataset) -> None:
        super().__init__(name="xor_mlp_seed_batched")
        self.seeds = seeds
        widths = layer_sizes(hidden)[1:]
        self.dense_layers = [
            SeedDense(seeds, width, relu=i < len(widths) - 1, name=f"dense_{i + 1}")
            for i, width in enumerate(widths)
        ]
        self.x_train = np.asarray(data.x_train, dtype=np.float32)
        self.y_train = np.asarray(data.y_train, dtype=np.float32)

        # Per-seed state the step updates and the recorder reads: sums over the current epoch
        # of loss * batch_size and of correct predictions, and 1.0 for seeds still training.
        self.loss_sum = self._seed_state("loss_sum", "zeros")
        self.correct = self._seed_state("correct", "zeros")
        self.active = self._seed_state("active", "ones")
        # Set by fit_batched once the optimizer's slot variables exist.
        self.freezer: _Freezer | None = None

        fan_in = layer_sizes(hidden)[0]
        self.build((seeds, None, fan_in))

    def _seed_state(self, name: str, initializer: str) -> Any:
        return self.add_weight(
            shape=(self.seeds,), initializer=initializer, trainable=False, name=name
        )

    def build(self, input_shape: Any) -> None:
        """Build every layer for inputs of shape [S, B, 2]."""
        shape = tuple(input_shape)
        for layer in self.dense_layers:
            layer.build(shape)
            shape = (*shape[:-1], layer.units)
        self.built = True

    def call(self, inputs: Any) -> Any:
        """Logits [S, B] for inputs [S, B, 2]."""
        h = inputs
        for layer in self.dense_layers:
            h = layer(h)
        return h[..., 0]

    def seed_variables(self) -> list[Any]:
        """Every variable with a leading seed axis that training changes: weights and slots."""
        slots = [
            v for v in self.optimizer.variables if tuple(v.shape)[:1] == (self.seeds,)
        ]
        return [*self.trainable_variables, *slots]

    def train_step(self, data: Any) -> dict[str, Any]:
        """One update of every seed from index tensors ``data`` of shape [B, S]."""
        indices = tf.transpose(data)
        x = tf.gather(tf.constant(self.x_train), indices)
        y = tf.gather(tf.constant(self.y_train), indices)
        batch = tf.cast(tf.shape(indices)[1], tf.float32)

        # Each seed's loss is its batch mean, computed as Keras does (sum / batch size); the
        # objective is their sum, so each seed's gradient is its per-run gradient.
        with tf.GradientTape() as tape:
            logits = self(x, training=True)
            per_sample = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits)
            losses = tf.reduce_sum(per_sample, axis=1) / batch
            objective = tf.reduce_sum(losses)
        variables = self.trainable_variables
        gradients = tape.gradient(objective, variables)

        # Update every seed, then put back the state of frozen ones; until a seed diverges the
        # branch is skipped, so freezing costs nothing in the common case.
        freezer = self.freezer
        if freezer is None:
            raise RuntimeError("set SeedBatchedMLP.freezer before training; see fit_batched")
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        active = self.active.value > 0.5
        tf.cond(tf.reduce_all(active), lambda: tf.constant(True), lambda: freezer.restore(active))

        # Statistics of the batch as seen before the update, as Keras's own metrics.
        hits = tf.equal(logits > 0.0, y > 0.5)
        self.loss_sum.assign_add(losses * batch)
        self.correct.assign_add(tf.reduce_sum(tf.cast(hits, tf.float32), axis=1))
        return {"objective": tf.reduce_sum(tf.where(active, losses, 0.0))}

    def batched_weights(self, averaged: bool = False) -> BatchedWeights:
        """Current (kernel [S, in, out], bias [S, out]) per layer, or ASGD's averages ``ax``."""
        pairs = [(layer.kernel, layer.bias) for layer in self.dense_layers]
        if averaged:
            # ASGD keeps one average per variable, in the order of the list it was built with.
            averages = self.optimizer.averaged_variables()
            average_of = dict(zip(map(id, self.trainable_variables), averages, strict=True))
            pairs = [(average_of[id(k)], average_of[id(b)]) for k, b in pairs]
        return [(_as_numpy(k), _as_numpy(b)) for k, b in pairs]

    def load_weights_per_seed(self, initials: Sequence[Weights]) -> None:
        """Stack each seed's ``(kernel, bias)`` pairs along the seed axis and assign them."""
        for index, layer in enumerate(self.dense_layers):
            kernels = np.stack([np.asarray(w[index][0], np.float32) for w in initials])
            biases = np.stack([np.asarray(w[index][1], np.float32) for w in initials])
            layer.kernel.assign(kernels)
            layer.bias.assign(biases)


def _as_numpy(variable: Any) -> np.ndarray:
    return np.asarray(variable.numpy(), dtype=np.float32)


def batched_evaluate(
    weights: BatchedWeights, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed (mean loss [S], accuracy [S]) of seed-batched weights, in numpy float32.

    The batched counterpart of :func:`xorbench.model.evaluate`, with the same formulas.
    """
    # Diverged seeds are evaluated too (their rows are dropped): their overflows are expected.
    # Products are summed over the input axis explicitly, not by a stacked matmul: BLAS may
    # round differently with the memory alignment of each seed's slice, i.e. with S.
    with np.errstate(invalid="ignore", over="ignore"):
        h = np.asarray(x, dtype=np.float32)[None]
        for i, (kernel, bias) in enumerate(weights):
            h = np.sum(h[..., :, None] * kernel[:, None, :, :], axis=2) + bias[:, None, :]
            if i < len(weights) - 1:
                h = np.maximum(h, 0)
        logits = h[..., 0]
        target = np.asarray(y, dtype=np.float32)[None]
        losses = np.mean(bce_with_logits(logits, target), axis=1)
    accuracy = np.mean((logits > 0) == (target > 0.5), axis=1)
    return losses.astype(np.float64), accuracy.astype(np.float64)


class _SeedRecorder(keras.callbacks.Callback):
    """Turns the step's per-seed sums into epoch rows, validates, and freezes diverged seeds."""

    def __init__(self, data: Dataset, seeds: int, epochs: int, steps_per_epoch: int) -> None:
        super().__init__()
        self.data = data
        self.steps_per_epoch = steps_per_epoch
        self.history = np.full((seeds, epochs, len(HISTORY_METRICS)), np.nan)
        self.epochs_trained = np.zeros(seeds, dtype=np.int64)
        self.diverged = np.zeros(seeds, dtype=bool)
        # perf_counter at the end of each epoch, so that timings can leave compilation out.
        self.epoch_ends: list[float] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        model = self.model
        n_train = self.data.n_train
        train_loss = model.loss_sum.numpy().astype(np.float64) / n_train
        train_acc = model.correct.numpy().astype(np.float64) / n_train
        model.loss_sum.assign(np.zeros_like(train_loss, dtype=np.float32))
        model.correct.assign(np.zeros_like(train_acc, dtype=np.float32))

        steps = (epoch + 1) * self.steps_per_epoch
        weights = evaluation_weights(model, steps)
        val_loss, val_acc = batched_evaluate(weights, self.data.x_val, self.data.y_val)

        # Seeds frozen before this epoch keep their history; the others get this epoch's row.
        training = ~self.diverged
        rows = np.stack([train_loss, train_acc, val_loss, val_acc], axis=1)
        self.history[training, epoch] = rows[training]
        self.epochs_trained[training] = epoch + 1

        newly = training & ~np.isfinite(train_loss)
        if newly.any():
            self.diverged |= newly
            model.freezer.freeze(self.diverged)
            model.active.assign((~self.diverged).astype(np.float32))
            logger.debug("epoch %d: seeds %s diverged", epoch + 1, np.flatnonzero(newly))
        if self.diverged.all():
            model.stop_training = True
        self.epoch_ends.append(time.perf_counter())


def evaluation_weights(model: SeedBatchedMLP, steps: int) -> BatchedWeights:
    """The weights to evaluate after ``steps`` updates: ASGD's average once averaging is on."""
    optimizer = model.optimizer
    averaged = isinstance(optimizer, ASGD) and asgd_averaging_active(steps, optimizer.t0)
    return model.batched_weights(averaged=averaged)


def batch_pipeline(
    orders: np.ndarray, batch_size: int, epochs: int
) -> tf.data.Dataset:
    """Index tensors [B, S] of every step of every epoch, in the order they are fed.

    ``orders`` has shape (S, >= epochs, n_train). Epoch ``e`` yields ``orders[:, e].T`` in
    consecutive slices of ``batch_size`` rows (the last one may be smaller), as
    :func:`xorbench.data.batch_bounds`: batching restarts at every epoch.
    """
    per_epoch = np.ascontiguousarray(np.transpose(orders[:, :epochs], (1, 2, 0)), np.int32)
    epochs_ds = tf.data.Dataset.from_tensor_slices(per_epoch)
    batches = epochs_ds.flat_map(
        lambda rows: tf.data.Dataset.from_tensor_slices(rows).batch(batch_size)
    )
    return batches.prefetch(tf.data.AUTOTUNE)


def fit_batched(
    cell: Cell, data: Dataset, initials: Sequence[Weights], orders: np.ndarray
) -> list[TrainOutput]:
    """Train every seed of ``cell`` at once, each from its own weights and batch order.

    Parameters
    ----------
    cell
        The grid point: optimizer, batch size, lr, epochs and hidden sizes.
    data
        Train and validation splits, shared by every seed.
    initials
        Seed ``s``'s starting weights in Keras layout (kernel [in, out]), one entry per seed.
    orders
        Training indices, shape (seeds, >= cell.epochs, n_train).

    Returns
    -------
    list of TrainOutput
        One per seed, in the order of ``initials``; each equal, up to float rounding, to what
        ``xorbench.adapters.keras.fit`` returns for that seed alone.
    """
    seeds = _check_inputs(cell, data, initials, orders)
    started = time.perf_counter()
    steps_per_epoch = len(batch_bounds(data.n_train, cell.batch_size))

    model = SeedBatchedMLP(seeds, cell.hidden, data)
    model.load_weights_per_seed(initials)
    optimizer = keras_optimizer(cell.optimizer_spec, cell.optimizer_impl)
    model.compile(optimizer=optimizer, steps_per_execution=steps_per_epoch, jit_compile=JIT_COMPILE)
    # Built now, after the weights are loaded: ASGD's averages start as a copy of them, and the
    # step needs the slot variables to freeze diverged seeds.
    optimizer.build(model.trainable_variables)
    model.freezer = _Freezer(model.seed_variables(), seeds)
    recorder = _SeedRecorder(data, seeds, cell.epochs, steps_per_epoch)
    batches = batch_pipeline(orders, cell.batch_size, cell.epochs)

    fit_started = time.perf_counter()
    model.fit(
        batches,
        epochs=cell.epochs,
        steps_per_epoch=steps_per_epoch,
        shuffle=False,
        verbose=0,
        callbacks=[recorder],
    )
    fit_s = time.perf_counter() - fit_started
    logger.debug("%s: %d seeds in one model, fit in %.3f s", cell.key, seeds, fit_s)
    # The first epoch includes tracing and XLA compilation; the later ones are steady state.
    extra = {
        "setup_s": fit_started - started,
        "fit_s": fit_s,
        "first_epoch_s": recorder.epoch_ends[0] - fit_started,
        "epochs_run": float(len(recorder.epoch_ends)),
        "seeds": float(seeds),
    }
    return _outputs(model, recorder, steps_per_epoch, extra)


def _outputs(
    model: SeedBatchedMLP, recorder: _SeedRecorder, steps_per_epoch: int, extra: dict[str, float]
) -> list[TrainOutput]:
    """Split the seed axis: one TrainOutput per seed."""
    optimizer = model.optimizer
    is_asgd = isinstance(optimizer, ASGD)
    current = model.batched_weights()
    averages = model.batched_weights(averaged=True) if is_asgd else current

    outputs = []
    for s in range(model.seeds):
        trained = int(recorder.epochs_trained[s])
        steps = trained * steps_per_epoch
        averaging = asgd_averaging_active(steps, optimizer.t0) if is_asgd else None
        source = averages if averaging else current
        outputs.append(
            TrainOutput(
                history=recorder.history[s, :trained].copy(),
                final_weights=[(k[s].copy(), b[s].copy()) for k, b in source],
                diverged=bool(recorder.diverged[s]),
                asgd_averaging=averaging,
                steps=steps,
                extra=dict(extra),
            )
        )
    return outputs


def _check_inputs(
    cell: Cell, data: Dataset, initials: Sequence[Weights], orders: np.ndarray
) -> int:
    """Return the number of seeds, or raise ValueError for inputs this engine cannot run."""
    if cell.framework != FRAMEWORK:
        raise ValueError(f"framework must be {FRAMEWORK!r} here; received {cell.framework!r}")
    seeds = len(initials)
    if seeds < 1:
        raise ValueError("initials must hold the weights of at least one seed; received none")
    expected = (seeds, cell.epochs, data.n_train)
    if orders.ndim != 3 or orders.shape[0] != seeds or orders.shape[1] < cell.epochs or (
        orders.shape[2] != data.n_train
    ):
        raise ValueError(
            f"orders must have shape (seeds, >= epochs, n_train) = {expected}; "
            f"received {orders.shape}"
        )
    # XLA and tf.data would not all raise on an index out of range; some clamp it silently.
    if orders.size and (orders.min() < 0 or orders.max() >= data.n_train):
        raise ValueError(
            f"orders must hold training indices in [0, {data.n_train}); received values from "
            f"{orders.min()} to {orders.max()}"
        )
    sizes = layer_sizes(cell.hidden)
    shapes = [((i, o), (o,)) for i, o in itertools.pairwise(sizes)]
    for s, weights in enumerate(initials):
        received = [(np.shape(k), np.shape(b)) for k, b in weights]
        if received != shapes:
            raise ValueError(
                f"initials[{s}] must have (kernel, bias) shapes {shapes} for "
                f"hidden={cell.hidden}; received {received}"
            )
    return seeds
