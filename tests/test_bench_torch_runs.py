"""The torch side of the speed benchmarks: the plain loop and the prepared Lightning runs.

The plain loop is the reference every ratio divides by, so it must train exactly what the
Lightning engines train; a prepared run must train exactly what ``fit`` trains, with the
warm-up epochs before the clock and the others after it; and Lightning is timed with its extras
off (field case F6).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelSummary, ProgressBar

from xorbench.adapters import bench_torch, lightning_batched, torch_loop
from xorbench.adapters import lightning as lightning_adapter
from xorbench.adapters.base import TrainOutput
from xorbench.data import Dataset, batch_orders, make_xor
from xorbench.grid import Cell
from xorbench.model import Weights, glorot_uniform
from xorbench.optimizers import OPTIMIZERS

EPOCHS = 3


@pytest.fixture(scope="module")
def data() -> Dataset:
    return make_xor(0)


def inputs(seeds: int, epochs: int = EPOCHS) -> tuple[list[Weights], np.ndarray]:
    initials = [glorot_uniform((3, 4), 100 + s) for s in range(seeds)]
    orders = np.stack([batch_orders(200 + s, 150, epochs) for s in range(seeds)])
    return initials, orders


def assert_same_run(got: TrainOutput, expected: TrainOutput) -> None:
    np.testing.assert_array_equal(got.history, expected.history)
    for (k, b), (k_ref, b_ref) in zip(got.final_weights, expected.final_weights, strict=True):
        np.testing.assert_array_equal(k, k_ref)
        np.testing.assert_array_equal(b, b_ref)
    assert got.steps == expected.steps


# ---------------------------------------------------------------------------------------------
# The plain loop trains what Lightning trains, bit for bit


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("batch", [7, 150])
def test_plain_loop_equals_lightning_fit(data: Dataset, optimizer: str, batch: int) -> None:
    (initial,), (orders,) = inputs(1)

    loop = torch_loop.fit(Cell("torch", optimizer, batch, 0.05, EPOCHS), data, initial, orders)
    ref = lightning_adapter.fit(Cell("lightning", optimizer, batch, 0.05, EPOCHS), data, initial,
                                orders)

    assert_same_run(loop, ref)
    assert loop.asgd_averaging == ref.asgd_averaging


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_plain_seed_loop_equals_lightning_fit_batched(data: Dataset, optimizer: str) -> None:
    initials, orders = inputs(5)

    loop = torch_loop.TorchSeedLoop(Cell("torch", optimizer, 32, 0.05, EPOCHS), data, initials,
                                    orders)
    loop.train(EPOCHS)
    ref = lightning_batched.fit_batched(Cell("lightning", optimizer, 32, 0.05, EPOCHS), data,
                                        initials, orders)

    for got, expected in zip(loop.outputs(), ref, strict=True):
        assert_same_run(got, expected)
        assert not got.diverged


def test_plain_loop_trains_epoch_by_epoch(data: Dataset) -> None:
    (initial,), (orders,) = inputs(1)
    loop = torch_loop.TorchLoop(Cell("torch", "sgd", 32, 0.05, EPOCHS), data, initial, orders)

    loop.train(1)
    assert (len(loop.rows), loop.steps) == (1, 5)
    loop.train(10)  # never past cell.epochs
    assert (len(loop.rows), loop.steps) == (EPOCHS, 15)


def test_plain_loop_refuses_orders_of_the_wrong_shape(data: Dataset) -> None:
    (initial,), (orders,) = inputs(1)

    with pytest.raises(ValueError, match=r"orders must have shape \(epochs, n_train\) = "
                                         r"\(3, 150\); received \(2, 150\)"):
        torch_loop.TorchLoop(Cell("torch", "sgd", 32, 0.05, EPOCHS), data, initial, orders[:2])


# ---------------------------------------------------------------------------------------------
# Prepared runs: warm-up before the clock, the same training as fit


@pytest.mark.parametrize("framework", bench_torch.FRAMEWORKS)
def test_prepared_per_run_trains_warmup_then_timed_epochs_like_fit(
    data: Dataset, framework: str
) -> None:
    initials, orders = inputs(1)
    cell = Cell(framework, "adam", 32, 0.05, EPOCHS)
    run = bench_torch.prepare(cell, data, initials, orders, "per-run", warmup=1)
    rows = run.loop.rows if isinstance(run, bench_torch.LoopRun) else run.module.rows

    run.start()
    assert len(rows) == 1
    run.resume()
    assert len(rows) == EPOCHS
    run.finish()

    ref = lightning_adapter.fit(Cell("lightning", "adam", 32, 0.05, EPOCHS), data, initials[0],
                                orders[0])
    np.testing.assert_array_equal(np.array(rows), ref.history)


def test_prepared_lightning_batched_trains_like_fit_batched(data: Dataset) -> None:
    initials, orders = inputs(3)
    cell = Cell("lightning", "rmsprop", 150, 0.05, EPOCHS)
    run = bench_torch.prepare(cell, data, initials, orders, "batched")
    assert isinstance(run, bench_torch.LightningRun)

    run.start()
    run.resume()
    run.finish()

    ref = lightning_batched.fit_batched(cell, data, initials, orders)
    for got, expected in zip(run.module.outputs(), ref, strict=True):
        assert_same_run(got, expected)


@pytest.mark.parametrize("engine", ["per-run", "batched"])
def test_lightning_is_timed_with_its_extras_off(data: Dataset, engine: str) -> None:
    """F6: no progress bar, checkpointing, model summary or logger in the timed Trainer."""
    seeds = 1 if engine == "per-run" else 2
    initials, orders = inputs(seeds)
    run = bench_torch.prepare(Cell("lightning", "sgd", 32, 0.05, EPOCHS), data, initials,
                              orders, engine)
    assert isinstance(run, bench_torch.LightningRun)
    trainer = run.trainer

    run.start()
    try:
        callbacks = trainer.callbacks  # type: ignore[attr-defined]
        assert trainer.progress_bar_callback is None
        assert trainer.checkpoint_callback is None
        assert trainer.logger is None
        assert trainer.num_sanity_val_steps == 0
        assert not any(isinstance(c, ModelSummary | ProgressBar) for c in callbacks)
        assert [type(c).__name__ for c in callbacks] == ["_Gate"]
    finally:
        run.resume()
        run.finish()


def test_prepared_lightning_restores_determinism_flags(data: Dataset) -> None:
    initials, orders = inputs(1)
    before = torch.are_deterministic_algorithms_enabled()
    run = bench_torch.prepare(Cell("lightning", "sgd", 150, 0.05, EPOCHS), data, initials,
                              orders, "per-run")

    run.start()
    # As inside lightning.fit, whose Trainer is deterministic: the timed epochs run that way.
    assert torch.are_deterministic_algorithms_enabled()
    run.resume()
    run.finish()

    assert torch.are_deterministic_algorithms_enabled() == before


@pytest.mark.parametrize(
    ("framework", "engine", "warmup", "seeds", "message"),
    [
        ("keras", "per-run", 1, 1, "framework must be one of torch, lightning; received 'keras'"),
        ("torch", "vmap", 1, 1, "engine must be one of per-run, batched; received 'vmap'"),
        ("torch", "per-run", 3, 1, r"warmup must be in \[1, cell.epochs = 3\)"),
        ("lightning", "per-run", 1, 2, "the per-run engine trains one seed; received 2"),
    ],
)
def test_prepare_refuses_what_it_cannot_time(
    data: Dataset, framework: str, engine: str, warmup: int, seeds: int, message: str
) -> None:
    initials, orders = inputs(seeds)

    with pytest.raises(ValueError, match=message):
        bench_torch.prepare(Cell(framework, "sgd", 32, 0.05, EPOCHS), data, initials, orders,
                            engine, warmup=warmup)
