"""The seed-batched Keras engine against the per-run Keras engine, seed by seed.

The oracle is :func:`xorbench.adapters.keras.fit`, one model per seed: every seed of a batched
fit must reproduce that seed's history, final weights, step count and status, whichever seeds
share its batch and whether or not some of them diverge.

TensorFlow is imported lazily, by the ``kb`` fixture, never at collection: torch and TensorFlow
must not share a process (FRAMEWORK_FACTS.md), so these tests skip in a process where torch is
already loaded. Run them on their own: ``pytest tests/keras``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from types import MappingProxyType, ModuleType
from typing import Any

import numpy as np
import pytest

from xorbench import optimizers
from xorbench.adapters.base import TrainOutput
from xorbench.data import Dataset, batch_bounds, batch_orders, make_xor, steps_per_epoch
from xorbench.grid import Cell
from xorbench.model import Weights, evaluate, glorot_uniform
from xorbench.seeds import data_seed, derive_seeds

log = logging.getLogger(__name__)

TOL = 1e-5
# Same seeds in a batch of another size: TensorFlow's kernels run other shapes and may round
# differently (~1e-7 here), where a permutation of the same seeds gives the same bits.
ACROSS_S = 1e-6


@pytest.fixture(scope="module")
def per_run(kb: ModuleType) -> ModuleType:
    """The per-run Keras engine, the oracle."""
    from xorbench.adapters import keras

    return keras


@pytest.fixture(autouse=True)
def _clear_keras_session() -> Any:
    """Drop every model and graph a test built, so tests do not see each other's state."""
    yield
    if "keras" in sys.modules:
        sys.modules["keras"].backend.clear_session()


@pytest.fixture(scope="module")
def data() -> Dataset:
    return make_xor(data_seed(0))


def seed_inputs(cell: Cell, n_seeds: int) -> tuple[list[Weights], np.ndarray]:
    """Initial weights and batch orders (seeds, epochs, n_train) of seed indices 0..n_seeds-1."""
    runs = derive_seeds(0, n_seeds)
    initials = [glorot_uniform(cell.hidden, r.init_seed) for r in runs]
    orders = np.stack([batch_orders(r.order_seed, 150, cell.epochs) for r in runs])
    return initials, orders


def oracle(
    per_run: ModuleType,
    cell: Cell,
    data: Dataset,
    initials: Sequence[Weights],
    orders: np.ndarray,
) -> list[TrainOutput]:
    """Each seed trained alone by the per-run engine."""
    return [per_run.fit(cell, data, w, o) for w, o in zip(initials, orders, strict=True)]


def assert_same_run(
    got: TrainOutput, want: TrainOutput, atol: float = TOL, rtol: float = 0.0
) -> None:
    """History, final weights, status and step count agree; NaN and inf match themselves."""
    assert got.history.shape == want.history.shape
    assert (got.diverged, got.steps, got.asgd_averaging) == (
        want.diverged,
        want.steps,
        want.asgd_averaging,
    )
    np.testing.assert_allclose(got.history, want.history, rtol=rtol, atol=atol)
    for (k_got, b_got), (k_want, b_want) in zip(
        got.final_weights, want.final_weights, strict=True
    ):
        assert k_got.dtype == np.float32 and k_got.shape == k_want.shape
        assert b_got.dtype == np.float32 and b_got.shape == b_want.shape
        np.testing.assert_allclose(k_got, k_want, rtol=rtol, atol=atol)
        np.testing.assert_allclose(b_got, b_want, rtol=rtol, atol=atol)


def assert_identical(got: TrainOutput, want: TrainOutput) -> None:
    """Bit for bit the same run."""
    np.testing.assert_array_equal(got.history, want.history)
    for (k_got, b_got), (k_want, b_want) in zip(
        got.final_weights, want.final_weights, strict=True
    ):
        np.testing.assert_array_equal(k_got, k_want)
        np.testing.assert_array_equal(b_got, b_want)
    assert (got.diverged, got.steps, got.asgd_averaging) == (
        want.diverged,
        want.steps,
        want.asgd_averaging,
    )


# ---------------------------------------------------------------------------------------------
# Batches and inputs


def test_pipeline_feeds_each_seed_its_own_order(kb: ModuleType) -> None:
    # 150 = 21 x 7 + 3: batching restarts at every epoch and the last batch is 3 long.
    orders = np.stack([batch_orders(seed, 150, 3) for seed in (4, 5)])

    batches = list(kb.batch_pipeline(orders, 7, 3).as_numpy_iterator())

    bounds = batch_bounds(150, 7)
    assert len(batches) == 3 * len(bounds) == 3 * 22
    expected = [orders[:, e, a:b].T for e in range(3) for a, b in bounds]
    for got, want in zip(batches, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_inputs_that_break_the_contract_are_refused(kb: ModuleType, data: Dataset) -> None:
    cell = Cell("keras", "sgd", 32, 0.05, 3)
    initials, orders = seed_inputs(cell, 2)

    with pytest.raises(ValueError, match="framework must be 'keras' here; received 'lightning'"):
        kb.fit_batched(Cell("lightning", "sgd", 32, 0.05, 3), data, initials, orders)
    with pytest.raises(ValueError, match=r"orders must have shape .* = \(2, 3, 150\); received "
                                         r"\(1, 3, 150\)"):
        kb.fit_batched(cell, data, initials, orders[:1])
    with pytest.raises(ValueError, match=r"orders must have shape .*; received \(2, 2, 150\)"):
        kb.fit_batched(cell, data, initials, orders[:, :2])
    with pytest.raises(ValueError, match=r"orders must hold training indices in \[0, 150\); "
                                         r"received values from 0 to 150"):
        kb.fit_batched(cell, data, initials, np.where(orders == 149, 150, orders))
    with pytest.raises(ValueError, match="initials must hold the weights of at least one seed"):
        kb.fit_batched(cell, data, [], orders[:0])
    wide = glorot_uniform((5, 4), 0)
    with pytest.raises(ValueError, match=r"initials\[1\] must have \(kernel, bias\) shapes"):
        kb.fit_batched(cell, data, [initials[0], wide], orders)


# ---------------------------------------------------------------------------------------------
# Parity with the per-run engine


def check_parity(
    kb: ModuleType,
    per_run: ModuleType,
    data: Dataset,
    cell: Cell,
    n_seeds: int,
) -> None:
    """``n_seeds`` seeds batched against as many per-run fits, to 1e-5."""
    initials, orders = seed_inputs(cell, n_seeds)

    got = kb.fit_batched(cell, data, initials, orders)
    want = oracle(per_run, cell, data, initials, orders)

    assert len(got) == n_seeds
    for g, w in zip(got, want, strict=True):
        assert g.history.shape == (cell.epochs, 4)
        assert not g.diverged
        assert g.steps == cell.epochs * steps_per_epoch(150, cell.batch_size)
        assert_same_run(g, w)


@pytest.mark.parametrize("optimizer", optimizers.OPTIMIZERS)
@pytest.mark.parametrize(("batch_size", "epochs"), [(32, 10), (1, 3)])
def test_five_seeds_follow_their_per_run_twins(
    kb: ModuleType,
    per_run: ModuleType,
    data: Dataset,
    optimizer: str,
    batch_size: int,
    epochs: int,
) -> None:
    # Batch 32 ends every epoch with a smaller batch (4 x 32 + 22); 3 epochs of batch 1 are 450
    # updates per seed. 3-4 s per case on the reference machine.
    check_parity(kb, per_run, data, Cell("keras", optimizer, batch_size, 0.05, epochs), 5)


def test_asgd_evaluates_each_seeds_average_once_averaging_starts(
    kb: ModuleType, per_run: ModuleType, data: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    # t0 = 5 starts averaging at step 8, in the third epoch. Both engines read t0 from the same
    # table, so the per-run engine stays the oracle; validation must use the averages.
    table = dict(optimizers.HYPERPARAMS)
    table["asgd"] = MappingProxyType({**table["asgd"], "t0": 5.0})
    monkeypatch.setattr(optimizers, "HYPERPARAMS", MappingProxyType(table))
    cell = Cell("keras", "asgd", 50, 0.05, 4)
    initials, orders = seed_inputs(cell, 2)

    got = kb.fit_batched(cell, data, initials, orders)
    want = oracle(per_run, cell, data, initials, orders)

    for g, w in zip(got, want, strict=True):
        assert g.asgd_averaging is True
        assert_same_run(g, w)
        val = evaluate(g.final_weights, data.x_val, data.y_val)
        np.testing.assert_allclose(g.history[-1, 2:], val, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Independence of the seeds


def test_a_seed_does_not_depend_on_its_batch_neighbours(kb: ModuleType, data: Dataset) -> None:
    cell = Cell("keras", "adam", 32, 0.05, 3)
    initials, orders = seed_inputs(cell, 4)
    permutation = [2, 0, 3, 1]

    together = kb.fit_batched(cell, data, initials, orders)
    shuffled = kb.fit_batched(cell, data, [initials[i] for i in permutation], orders[permutation])
    alone = kb.fit_batched(cell, data, initials[3:], orders[3:])

    for position, seed in enumerate(permutation):
        assert_identical(shuffled[position], together[seed])
    assert_same_run(alone[0], together[3], atol=ACROSS_S)


def test_a_seed_that_diverges_later_is_frozen_and_isolated(
    kb: ModuleType, per_run: ModuleType, data: Dataset
) -> None:
    # An output kernel scaled by 1e21 gives a finite loss in epoch 1 (~1e19..1e20), an update
    # that overflows the loss in epoch 2, and weights that are still finite after it: were the
    # seed not frozen, plain SGD would go on moving them. The per-run engine stops after epoch
    # 2, so its final weights are the ones the frozen seed must keep.
    cell = Cell("keras", "sgd", 150, 0.05, 5)
    initials, orders = seed_inputs(cell, 3)
    kernel, bias = initials[1][-1]
    initials[1] = [*initials[1][:-1], (kernel * np.float32(1e21), bias)]

    got = kb.fit_batched(cell, data, initials, orders)
    want = oracle(per_run, cell, data, initials, orders)
    without = kb.fit_batched(cell, data, initials[::2], orders[::2])

    assert got[1].diverged and got[1].history.shape == (2, 4) and got[1].steps == 2
    assert np.isfinite(got[1].history[0, :2]).all() and not np.isfinite(got[1].history[1, 0])
    assert all(np.isfinite(k).all() and np.isfinite(b).all() for k, b in got[1].final_weights)
    for g, w in zip(got, want, strict=True):
        # Seed 1's epoch-1 loss is ~4e19: compared relatively, to float32 rounding.
        assert_same_run(g, w, rtol=1e-6)
    assert_same_run(got[0], without[0], atol=ACROSS_S)
    assert_same_run(got[2], without[1], atol=ACROSS_S)


def test_a_diverged_seeds_optimizer_state_is_frozen_too(
    kb: ModuleType, per_run: ModuleType, data: Dataset
) -> None:
    # An output bias of -inf makes the loss NaN from the first batch while every gradient but
    # the bias's stays finite, so Adam's moments and the kernels of the seed would keep moving.
    cell = Cell("keras", "adam", 50, 0.05, 4)
    initials, orders = seed_inputs(cell, 3)
    kernel, _ = initials[0][-1]
    initials[0] = [*initials[0][:-1], (kernel, np.array([-np.inf], dtype=np.float32))]

    got = kb.fit_batched(cell, data, initials, orders)
    without = kb.fit_batched(cell, data, initials[1:], orders[1:])

    assert got[0].diverged and got[0].history.shape == (1, 4) and got[0].steps == 3
    assert not np.array_equal(got[0].final_weights[-1][0], kernel)
    assert_same_run(got[0], per_run.fit(cell, data, initials[0], orders[0]))
    for g, w in zip(got[1:], without, strict=True):
        assert not g.diverged and g.history.shape == (4, 4)
        assert_same_run(g, w, atol=ACROSS_S)


def test_a_nan_seed_does_not_disturb_the_others(kb: ModuleType, data: Dataset) -> None:
    cell = Cell("keras", "rmsprop", 50, 0.05, 4)
    initials, orders = seed_inputs(cell, 3)
    kernel, _ = initials[2][0]
    initials[2] = [(kernel, np.array([np.nan, 0, 0], dtype=np.float32)), *initials[2][1:]]

    got = kb.fit_batched(cell, data, initials, orders)
    without = kb.fit_batched(cell, data, initials[:2], orders[:2])

    assert got[2].diverged and got[2].history.shape == (1, 4) and got[2].steps == 3
    for g, w in zip(got[:2], without, strict=True):
        assert_same_run(g, w, atol=ACROSS_S)


def test_training_stops_when_every_seed_diverged(kb: ModuleType, data: Dataset) -> None:
    cell = Cell("keras", "sgd", 50, 0.05, 5)
    initials, orders = seed_inputs(cell, 2)
    initials = [[(k, np.full_like(b, np.nan)) for k, b in w] for w in initials]

    got = kb.fit_batched(cell, data, initials, orders)

    for g in got:
        assert g.diverged and g.history.shape == (1, 4) and g.steps == 3
        assert g.extra["epochs_run"] == 1


def test_xla_trains_and_freezes_the_same_runs(
    kb: ModuleType, data: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    # XLA is off by default (compilation costs more than it saves); switched on, the step, its
    # freezing branch included, must train the same runs.
    # The seed diverges through a -inf output bias, not a NaN weight: the ReLU gradient of an
    # inactive unit under a NaN upstream gradient is 0 in XLA and NaN in TensorFlow (which
    # multiplies by the mask), so a NaN seed's own weights differ between the two.
    cell = Cell("keras", "adam", 32, 0.05, 3)
    initials, orders = seed_inputs(cell, 3)
    kernel, _ = initials[0][-1]
    initials[0] = [*initials[0][:-1], (kernel, np.array([-np.inf], dtype=np.float32))]

    graph = kb.fit_batched(cell, data, initials, orders)
    monkeypatch.setattr(kb, "JIT_COMPILE", True)
    xla = kb.fit_batched(cell, data, initials, orders)

    assert xla[0].diverged and xla[0].history.shape == (1, 4)
    for g, x in zip(graph, xla, strict=True):
        assert_same_run(x, g)


# ---------------------------------------------------------------------------------------------
# Speed


def seconds_per_epoch(kb: ModuleType, data: Dataset, batch: int, seeds: int) -> tuple[float, float]:
    """Steady-state seconds per epoch of 50 epochs, two ways, each the best of 3.

    Returns ``(difference, in_fit)``: the wall time of a 51-epoch fit minus that of a 1-epoch
    fit, over 50 (setup, tracing and compilation cancel out, but their jitter does not), and the
    time from the end of the first epoch to the end of the 51st inside one fit, over 50.
    """

    def fit(epochs: int) -> tuple[float, TrainOutput]:
        cell = Cell("keras", "adam", batch, 0.05, epochs)
        initials, orders = seed_inputs(cell, seeds)
        sys.modules["keras"].backend.clear_session()
        started = time.perf_counter()
        out = kb.fit_batched(cell, data, initials, orders)[0]
        return time.perf_counter() - started, out

    one = min(fit(1)[0] for _ in range(3))
    many = [fit(51) for _ in range(3)]
    difference = (min(wall for wall, _ in many) - one) / 50
    in_fit = min(o.extra["fit_s"] - o.extra["first_epoch_s"] for _, o in many) / 50
    return difference, in_fit


@pytest.mark.slow
@pytest.mark.parametrize("batch", [32, 1])
def test_a_hundred_seeds_cost_at_most_twice_one(kb: ModuleType, data: Dataset, batch: int) -> None:
    steps = steps_per_epoch(150, batch)
    timings = {seeds: seconds_per_epoch(kb, data, batch, seeds) for seeds in (1, 10, 100)}

    # Shown with: pytest -m slow -k hundred -o log_cli=true --log-cli-level=INFO
    for seeds, (difference, in_fit) in timings.items():
        log.info(
            "keras batched, batch %d, %d seeds, per epoch (per step): 51-1 epochs %.3f ms "
            "(%.4f ms), in fit %.3f ms (%.4f ms)",
            batch, seeds, difference * 1e3, difference / steps * 1e3,
            in_fit * 1e3, in_fit / steps * 1e3,
        )
    # The in-fit figure is asserted: it has no setup jitter, which other processes on a small
    # machine can make larger than 50 epochs of batch 32.
    assert timings[100][1] <= 2 * timings[1][1], timings


@pytest.mark.parametrize("optimizer", ["rmsprop", "adam"])
def test_aligned_optimizers_train_the_same_seeds_batched(
    kb: ModuleType, per_run: ModuleType, data: Dataset, optimizer: str
) -> None:
    # optimizer_impl reaches the batched engine too: torch's formulas, per seed.
    cell = Cell("keras", optimizer, 32, 0.05, 5, optimizer_impl="aligned")
    check_parity(kb, per_run, data, cell, 3)
