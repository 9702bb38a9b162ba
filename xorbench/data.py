"""XOR data and batch orders, in numpy.

The data are 200 points uniform in [-1, 1]^2 (float32), labelled 1 where x1 * x2 >= 0; the first
150 train and the last 50 validate. A batch order is one permutation of the training indices per
epoch, drawn from the run's ``order_seed``; batches are consecutive slices of it and the last
batch may be smaller (150 = 4 x 32 + 22).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_POINTS = 200
N_TRAIN = 150


@dataclass(frozen=True)
class Dataset:
    """Train and validation splits; x is float32 with shape (n, 2), y is float32 with shape (n,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray

    @property
    def n_train(self) -> int:
        return len(self.x_train)


def xor_labels(x: np.ndarray) -> np.ndarray:
    """The XOR rule on [-1, 1]^2: 1.0 where both coordinates share a sign, else 0.0."""
    return (x[:, 0] * x[:, 1] >= 0).astype(np.float32)


def make_xor(seed: int, n_points: int = N_POINTS, n_train: int = N_TRAIN) -> Dataset:
    """Draw the XOR points from ``seed`` and split them into train (first) and validation."""
    if not 0 < n_train < n_points:
        raise ValueError(f"n_train must be in (0, n_points={n_points}); received n_train={n_train}")
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(n_points, 2)).astype(np.float32)
    y = xor_labels(x)
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def batch_orders(order_seed: int, n_train: int, epochs: int) -> np.ndarray:
    """One permutation of ``range(n_train)`` per epoch, shape (epochs, n_train), int64."""
    rng = np.random.default_rng(order_seed)
    return np.stack([rng.permutation(n_train) for _ in range(epochs)])


def batch_bounds(n_train: int, batch_size: int) -> list[tuple[int, int]]:
    """The (start, stop) slices of one epoch's order: consecutive, the last one possibly smaller."""
    if not 1 <= batch_size <= n_train:
        raise ValueError(
            f"batch_size must be between 1 and the training set size {n_train}; "
            f"received batch_size={batch_size}"
        )
    return [(start, min(start + batch_size, n_train)) for start in range(0, n_train, batch_size)]


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """How many updates one epoch makes: ceil(n_train / batch_size)."""
    return -(-n_train // batch_size)
