"""The contract every framework adapter fulfils, in numpy only.

An adapter module (``lightning``, ``keras``) exposes ``FRAMEWORK`` and ``fit``::

    def fit(cell: Cell, data: Dataset, initial: Weights, orders: np.ndarray,
            val_every: int = 1) -> TrainOutput

``initial`` are the run's starting weights in Keras layout (``xorbench.model``); ``orders`` has
shape (epochs, n_train) and holds the training indices of each epoch in the order they are fed.
The adapter trains ``cell.epochs`` epochs, feeding batch ``j`` of epoch ``e`` as
``orders[e, j*B:(j+1)*B]``, and returns one row per trained epoch. The untrained epoch 0 is
computed by the caller from ``initial`` in numpy, the same for every framework.

The seed-batched engine (modules ``lightning_batched``, ``keras_batched``) trains all seeds of a
cell as one model whose weights carry a leading seed axis::

    def fit_batched(cell: Cell, data: Dataset, initials: Sequence[Weights],
                    orders: np.ndarray) -> list[TrainOutput]

``initials[s]`` are seed ``s``'s starting weights and ``orders`` has shape
(seeds, epochs, n_train). Every optimizer in the grid updates each weight from that weight's own
gradient and state, and the training loss is the sum over seeds of each seed's batch mean, so each
seed follows exactly the run the per-run engine would train. A seed whose loss stops being finite
keeps that epoch's row, is frozen from then on, and does not disturb the others.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Literal

import numpy as np

from xorbench.model import Weights

Status = Literal["ok", "diverged", "failed"]

# Columns of TrainOutput.history, in order.
HISTORY_METRICS: tuple[str, ...] = ("train_loss", "train_acc", "val_loss", "val_acc")

FRAMEWORKS: tuple[str, ...] = ("lightning", "keras")

# How Keras builds RMSprop and Adam: its own classes ("native") or ports of torch's formulas
# ("aligned", xorbench.adapters.keras_aligned). torch's optimizers are the same in both.
OPTIMIZER_IMPLS: tuple[str, ...] = ("native", "aligned")

# Float types a parity trace can train in; grid runs train in float32.
DTYPES: tuple[str, ...] = ("float32", "float64")


@dataclass
class TrainOutput:
    """What one training run returns.

    Attributes
    ----------
    history
        float64 array of shape (epochs_trained, 4): train_loss, train_acc, val_loss, val_acc for
        epochs 1..epochs_trained. train_* are means over the epoch's samples of the per-batch
        values computed before each update (weighted by batch size); val_* are computed on the
        validation set after the epoch's last update.
    final_weights
        The weights after training, Keras layout, float32.
    diverged
        True when a training loss was not finite; training stopped after that epoch.
    asgd_averaging
        For ASGD, whether the averaged iterate ever differed from the weights (t0 reached);
        None for other optimizers.
    steps
        Number of optimizer updates made.
    """

    history: np.ndarray
    final_weights: Weights
    diverged: bool = False
    asgd_averaging: bool | None = None
    steps: int = 0
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Trace:
    """One run's trajectory, epoch by epoch, for the parity check (``xorbench.parity``).

    Attributes
    ----------
    history
        float64 array (epochs_trained, 4), as :attr:`TrainOutput.history`.
    weights
        float64 array (epochs_trained + 1, n_params): row 0 holds the weights as loaded into the
        framework, row ``e`` the iterate after epoch ``e``; each row is
        :func:`xorbench.model.flatten` of Keras-layout weights, in the run's float type.
    asgd_averaging
        As :attr:`TrainOutput.asgd_averaging`.
    steps
        Number of optimizer updates made.
    """

    history: np.ndarray
    weights: np.ndarray
    asgd_averaging: bool | None
    steps: int


def check_orders(orders: np.ndarray, expected: tuple[int, ...], n_train: int) -> None:
    """Raise ValueError unless ``orders`` has shape ``expected`` and holds training indices.

    ``expected`` is (epochs, n_train) for one run or (seeds, epochs, n_train) for a batched cell.
    """
    if orders.shape != expected:
        names = "(seeds, epochs, n_train)" if len(expected) == 3 else "(epochs, n_train)"
        raise ValueError(f"orders must have shape {names} = {expected}; received {orders.shape}")
    if not np.issubdtype(orders.dtype, np.integer):
        raise ValueError(f"orders must hold integer indices; received dtype {orders.dtype}")
    if orders.size and (orders.min() < 0 or orders.max() >= n_train):
        raise ValueError(
            f"orders must hold training indices in [0, {n_train}); received values from "
            f"{orders.min()} to {orders.max()}"
        )


ENGINES: tuple[str, ...] = ("batched", "per-run")


def load_adapter(framework: str, engine: str = "per-run") -> ModuleType:
    """Import the adapter of ``framework`` for ``engine`` (and with it the framework itself)."""
    if framework not in FRAMEWORKS:
        raise ValueError(
            f"framework must be one of {', '.join(FRAMEWORKS)}; received {framework!r}"
        )
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; received {engine!r}")
    suffix = "_batched" if engine == "batched" else ""
    return importlib.import_module(f"xorbench.adapters.{framework}{suffix}")
