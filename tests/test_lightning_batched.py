"""The seed-batched Lightning engine against the per-run engine, seed by seed.

The oracle is :func:`xorbench.adapters.lightning.fit`, one run per seed: the batched engine must
reproduce each seed's history, final weights and step count, including when other seeds of the
same batch diverge and whichever other seeds share the batch.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from types import MappingProxyType

import numpy as np
import pytest
import torch

from xorbench import optimizers
from xorbench.adapters import lightning as per_run
from xorbench.adapters import lightning_batched as batched
from xorbench.adapters.base import TrainOutput
from xorbench.data import Dataset, batch_bounds, batch_orders, make_xor, steps_per_epoch
from xorbench.grid import Cell
from xorbench.model import Weights, glorot_uniform
from xorbench.seeds import data_seed, derive_seeds

log = logging.getLogger(__name__)

TOL = 1e-5
FLOAT32_MAX = float(np.finfo(np.float32).max)


@pytest.fixture(scope="module")
def data() -> Dataset:
    return make_xor(data_seed(0))


def seed_inputs(cell: Cell, n_seeds: int) -> tuple[list[Weights], np.ndarray]:
    """Initial weights and batch orders (seeds, epochs, n_train) of seed indices 0..n_seeds-1."""
    seeds = derive_seeds(0, n_seeds)
    initials = [glorot_uniform(cell.hidden, s.init_seed) for s in seeds]
    orders = np.stack([batch_orders(s.order_seed, 150, cell.epochs) for s in seeds])
    return initials, orders


def per_run_outputs(
    cell: Cell, data: Dataset, initials: Sequence[Weights], orders: np.ndarray
) -> list[TrainOutput]:
    """The oracle: each seed trained alone by the per-run engine."""
    return [per_run.fit(cell, data, w, o) for w, o in zip(initials, orders, strict=True)]


def assert_same_run(got: TrainOutput, want: TrainOutput, atol: float = TOL) -> None:
    """History, final weights, status and step count agree (NaN and inf match themselves)."""
    assert got.history.shape == want.history.shape
    assert got.diverged == want.diverged
    assert got.steps == want.steps
    assert got.asgd_averaging == want.asgd_averaging
    np.testing.assert_allclose(got.history, want.history, rtol=0, atol=atol)
    for (k_got, b_got), (k_want, b_want) in zip(got.final_weights, want.final_weights, strict=True):
        assert k_got.dtype == np.float32 and k_got.shape == k_want.shape
        assert b_got.dtype == np.float32 and b_got.shape == b_want.shape
        np.testing.assert_allclose(k_got, k_want, rtol=0, atol=atol)
        np.testing.assert_allclose(b_got, b_want, rtol=0, atol=atol)


def assert_identical(got: TrainOutput, want: TrainOutput) -> None:
    """Bit-for-bit the same run."""
    np.testing.assert_array_equal(got.history, want.history)
    for (k_got, b_got), (k_want, b_want) in zip(got.final_weights, want.final_weights, strict=True):
        np.testing.assert_array_equal(k_got, k_want)
        np.testing.assert_array_equal(b_got, b_want)
    assert (got.diverged, got.steps) == (want.diverged, want.steps)


# ---------------------------------------------------------------------------------------------
# Batches


def test_each_seed_gets_its_own_batches_in_order(data: Dataset) -> None:
    cell = Cell("lightning", "sgd", 32, 0.05, 3)
    _, orders = seed_inputs(cell, 3)
    loader = batched._train_loader(data, orders, cell.batch_size)

    for epoch in (2, 0, 1):  # the epoch alone decides, not how often the loader was iterated
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        batches = list(loader)
        assert [len(y[0]) for _, y in batches] == [32, 32, 32, 32, 22]
        for (x, y), (start, stop) in zip(batches, batch_bounds(150, 32), strict=True):
            for s in range(3):
                index = orders[s, epoch, start:stop]
                np.testing.assert_array_equal(x[s].numpy(), data.x_train[index])
                np.testing.assert_array_equal(y[s].numpy(), data.y_train[index])


# ---------------------------------------------------------------------------------------------
# Parity with the per-run engine


@pytest.mark.parametrize("optimizer", optimizers.OPTIMIZERS)
@pytest.mark.parametrize(("batch_size", "epochs"), [(1, 2), (32, 10), (150, 10)])
def test_each_seed_follows_its_per_run_twin(
    data: Dataset, optimizer: str, batch_size: int, epochs: int
) -> None:
    cell = Cell("lightning", optimizer, batch_size, 0.05, epochs)
    initials, orders = seed_inputs(cell, 5)

    got = batched.fit_batched(cell, data, initials, orders)
    want = per_run_outputs(cell, data, initials, orders)

    assert len(got) == 5
    for g, w in zip(got, want, strict=True):
        assert g.history.shape == (epochs, 4)
        assert g.steps == epochs * steps_per_epoch(150, batch_size)
        assert_same_run(g, w)


def test_asgd_averaging_reports_and_validates_the_average(
    data: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With t0 = 5, averaging starts at step 8, inside the first epoch; both engines read t0 from
    # the same table, so the per-run engine is still the oracle.
    table = dict(optimizers.HYPERPARAMS)
    table["asgd"] = MappingProxyType({**table["asgd"], "t0": 5.0})
    monkeypatch.setattr(optimizers, "HYPERPARAMS", MappingProxyType(table))
    cell = Cell("lightning", "asgd", 32, 0.05, 4)
    initials, orders = seed_inputs(cell, 3)

    got = batched.fit_batched(cell, data, initials, orders)
    want = per_run_outputs(cell, data, initials, orders)

    for g, w in zip(got, want, strict=True):
        assert g.asgd_averaging is True
        assert_same_run(g, w)


# ---------------------------------------------------------------------------------------------
# Divergence


def overflow_bias(y_train: np.ndarray, orders: np.ndarray, batch_size: int) -> tuple[float, int]:
    """An output bias -X under which the seed with ``orders`` first diverges after epoch 1.

    With logits ~ -X every positive sample costs X and every negative one 0, so a batch's float32
    loss sum overflows exactly when it holds >= k positives, X = max / (k - 0.5). k is one more
    than the most positives of any batch in the first two epochs. Returns (X, the 0-based epoch
    of the first overflow). The gradients stay finite, so the seed's weights keep moving.
    """
    positives = np.array(
        [[y_train[row[a:b]].sum() for a, b in batch_bounds(len(row), batch_size)] for row in orders]
    ).max(axis=1)
    k = positives[:2].max() + 1
    later = np.flatnonzero(positives >= k)
    if not later.size:
        raise ValueError("this order never overflows; choose another seed or more epochs")
    return FLOAT32_MAX / (k - 0.5), int(later[0])


def test_a_seed_that_diverges_later_is_frozen_and_isolated(data: Dataset) -> None:
    # Adam keeps moving a seed from its momentum unless the freeze holds, and its gradients
    # here are finite: a broken freeze shows in that seed's final weights.
    cell = Cell("lightning", "adam", 32, 0.05, 8)
    initials, orders = seed_inputs(cell, 4)
    bias, epoch = overflow_bias(data.y_train, orders[2], cell.batch_size)
    kernel, _ = initials[2][-1]
    initials[2][-1] = (kernel, np.full(1, -bias, dtype=np.float32))

    got = batched.fit_batched(cell, data, initials, orders)
    want = per_run_outputs(cell, data, initials, orders)

    assert epoch >= 1, "the test wants a divergence after the first epoch"
    assert [g.diverged for g in got] == [False, False, True, False]
    assert len(got[2].history) == epoch + 1
    assert got[2].steps == (epoch + 1) * steps_per_epoch(150, cell.batch_size)
    assert np.isinf(got[2].history[-1, 0]) and np.isfinite(got[2].history[:-1, 0]).all()
    assert all(np.isfinite(k).all() for k, _ in got[2].final_weights)
    for g, w in zip(got, want, strict=True):
        assert_same_run(g, w)


def test_a_nan_seed_does_not_disturb_the_others(data: Dataset) -> None:
    # A huge weight scale turns the seed's weights to NaN in its first epoch.
    cell = Cell("lightning", "sgd", 32, 0.5, 5)
    initials, orders = seed_inputs(cell, 4)
    initials[1] = [(kernel * 1e20, bias) for kernel, bias in initials[1]]

    got = batched.fit_batched(cell, data, initials, orders)
    want = per_run_outputs(cell, data, initials, orders)

    assert [g.diverged for g in got] == [False, True, False, False]
    assert len(got[1].history) == 1 and not np.isfinite(got[1].history[0, 0])
    for g, w in zip(got, want, strict=True):
        assert_same_run(g, w)

    # The healthy seeds are bit-for-bit what they are without the NaN seed in the batch.
    keep = [0, 2, 3]
    alone = batched.fit_batched(cell, data, [initials[s] for s in keep], orders[keep])
    for s, a in zip(keep, alone, strict=True):
        assert_identical(got[s], a)


def test_training_stops_when_every_seed_diverged(data: Dataset) -> None:
    cell = Cell("lightning", "sgd", 32, 0.05, 50)
    initials, orders = seed_inputs(cell, 2)
    initials = [[(kernel * 1e20, bias) for kernel, bias in w] for w in initials]

    got = batched.fit_batched(cell, data, initials, orders)

    assert [(g.diverged, len(g.history), g.steps) for g in got] == [(True, 1, 5), (True, 1, 5)]


# ---------------------------------------------------------------------------------------------
# Independence from batch neighbours and from global state


@pytest.mark.parametrize(("batch_size", "epochs"), [(1, 2), (8, 3), (32, 5), (150, 5)])
def test_a_seed_does_not_depend_on_its_batch_neighbours(
    data: Dataset, batch_size: int, epochs: int
) -> None:
    # Seed 3 alone, among few, first among many, and past the first 32 rows; the batch lengths
    # 8, 22 (32's last batch) and 150 are those whose SIMD tails used to move a seed by an ulp.
    cell = Cell("lightning", "adam", batch_size, 0.05, epochs)
    initials, orders = seed_inputs(cell, 40)
    picks = [[3], [5, 3], [3, *range(4, 40)], [*range(39, 3, -1), 3]]

    runs = [batched.fit_batched(cell, data, [initials[s] for s in p], orders[p]) for p in picks]

    reference = runs[0][0]
    for pick, outputs in zip(picks[1:], runs[1:], strict=True):
        assert_identical(outputs[pick.index(3)], reference)


def test_results_ignore_the_global_generator_and_leave_it_alone(data: Dataset) -> None:
    cell = Cell("lightning", "sgd", 32, 0.05, 2)
    initials, orders = seed_inputs(cell, 2)

    torch.manual_seed(1)
    first = batched.fit_batched(cell, data, initials, orders)
    torch.manual_seed(2)
    state = torch.get_rng_state()
    second = batched.fit_batched(cell, data, initials, orders)

    assert torch.equal(torch.get_rng_state(), state)
    for a, b in zip(first, second, strict=True):
        assert_identical(a, b)


def test_inputs_that_break_the_contract_are_refused(data: Dataset) -> None:
    cell = Cell("lightning", "sgd", 32, 0.05, 2)
    initials, orders = seed_inputs(cell, 2)
    transposed = [initials[0], [(k.T, b) for k, b in initials[1]]]
    cases = [
        (
            (cell, data, initials, orders[:, 0]),
            "orders must have shape (seeds, epochs, n_train) = (2, 2, 150); received (2, 150)",
        ),
        (
            (Cell("keras", "sgd", 32, 0.05, 2), data, initials, orders),
            "cell.framework must be 'lightning' for this adapter; received 'keras'",
        ),
        (
            (cell, data, transposed, orders),
            "initials[1] layer 0 needs a kernel of shape (2, 3) and a bias of shape (3,); "
            "received kernel (3, 2) and bias (3,)",
        ),
        (
            (cell, data, initials, orders + 1),
            "orders must hold training indices in [0, 150); received values from 1 to 150",
        ),
    ]

    for args, message in cases:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            batched.fit_batched(*args)


# ---------------------------------------------------------------------------------------------
# Cost


def seconds_per_epoch(
    data: Dataset, optimizer: str, batch_size: int, seed_counts: Sequence[int], rounds: int = 3
) -> dict[int, float]:
    """Wall seconds of one epoch per seed count: (51-epoch fit - 1-epoch fit) / 50.

    Trainer set-up cancels out in the difference. The seed counts take turns, round after
    round, and each fit counts by its fastest round, so a busy moment on a shared machine
    does not land on one seed count only.
    """

    def wall(n_seeds: int, epochs: int) -> float:
        cell = Cell("lightning", optimizer, batch_size, 0.05, epochs)
        initials, orders = seed_inputs(cell, n_seeds)
        start = time.perf_counter()
        batched.fit_batched(cell, data, initials, orders)
        return time.perf_counter() - start

    wall(1, 2)  # warm-up: first Trainer, first kernels
    one: dict[int, list[float]] = {n: [] for n in seed_counts}
    many: dict[int, list[float]] = {n: [] for n in seed_counts}
    for _ in range(rounds):
        for n in seed_counts:
            one[n].append(wall(n, 1))
            many[n].append(wall(n, 51))
    return {n: (min(many[n]) - min(one[n])) / 50 for n in seed_counts}


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [32, 1])
def test_a_hundred_seeds_cost_about_as_much_as_one(data: Dataset, batch_size: int) -> None:
    steps = steps_per_epoch(150, batch_size)
    per_epoch = seconds_per_epoch(data, "adam", batch_size, (1, 10, 100))

    for n, seconds in per_epoch.items():
        log.info(
            "adam batch %d, %3d seeds: %.3f ms/epoch, %.3f ms/step",
            batch_size,
            n,
            seconds * 1e3,
            seconds / steps * 1e3,
        )
    # The target is ~2x; the bound leaves room for a busy machine.
    assert per_epoch[100] <= 3 * per_epoch[1]
