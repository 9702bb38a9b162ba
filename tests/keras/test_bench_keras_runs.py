"""The Keras side of the speed benchmarks: prepared runs train exactly what ``fit`` trains.

TensorFlow is imported lazily, by the ``bk`` fixture, never at collection: torch and TensorFlow
must not share a process, so these tests skip when torch is already loaded. Run them alone:
``pytest tests/keras``.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from xorbench.data import Dataset, batch_orders, make_xor
from xorbench.grid import Cell
from xorbench.model import Weights, glorot_uniform

EPOCHS = 3


@pytest.fixture(autouse=True)
def _clear_keras_session() -> Any:
    """Drop every model and graph a test built."""
    yield
    if "keras" in sys.modules:
        sys.modules["keras"].backend.clear_session(free_memory=False)


@pytest.fixture(scope="module")
def data() -> Dataset:
    return make_xor(0)


def inputs(seeds: int) -> tuple[list[Weights], np.ndarray]:
    initials = [glorot_uniform((3, 4), 100 + s) for s in range(seeds)]
    orders = np.stack([batch_orders(200 + s, 150, EPOCHS) for s in range(seeds)])
    return initials, orders


@pytest.mark.parametrize("optimizer", ["sgd", "asgd"])
def test_prepared_per_run_trains_warmup_then_timed_epochs_like_fit(
    bk: ModuleType, data: Dataset, optimizer: str
) -> None:
    from xorbench.adapters import keras as keras_adapter

    initials, orders = inputs(1)
    cell = Cell("keras", optimizer, 32, 0.05, EPOCHS)
    run = bk.prepare(cell, data, initials, orders, "per-run", warmup=1)

    run.start()
    assert len(run.recorder.rows) == 1
    run.resume()
    assert len(run.recorder.rows) == EPOCHS
    run.finish()

    ref = keras_adapter.fit(cell, data, initials[0], orders[0])
    np.testing.assert_array_equal(np.array(run.recorder.rows), ref.history)


def test_prepared_batched_trains_like_fit_batched(bk: ModuleType, data: Dataset) -> None:
    from xorbench.adapters import keras_batched

    initials, orders = inputs(3)
    cell = Cell("keras", "adam", 150, 0.05, EPOCHS)
    run = bk.prepare(cell, data, initials, orders, "batched")

    run.start()
    run.resume()
    history = run.recorder.history.copy()
    run.finish()

    ref = keras_batched.fit_batched(cell, data, initials, orders)
    for seed, expected in enumerate(ref):
        np.testing.assert_array_equal(history[seed], expected.history)


def test_prepare_refuses_another_framework(bk: ModuleType, data: Dataset) -> None:
    initials, orders = inputs(1)

    with pytest.raises(ValueError, match="framework must be 'keras' here; received 'torch'"):
        bk.prepare(Cell("torch", "sgd", 32, 0.05, EPOCHS), data, initials, orders, "per-run")
