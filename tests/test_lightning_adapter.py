"""The Lightning adapter against numpy oracles, a plain torch loop and the field cases."""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch.trainer.connectors import data_connector

from xorbench import optimizers
from xorbench.adapters import lightning as adapter
from xorbench.adapters.base import TrainOutput
from xorbench.data import Dataset, batch_bounds, batch_orders, make_xor, steps_per_epoch
from xorbench.grid import Cell
from xorbench.model import (
    Weights,
    bce_with_logits,
    evaluate,
    forward_logits,
    from_torch_layout,
    glorot_uniform,
)
from xorbench.seeds import derive_seeds

FOUR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
FOUR_Y = np.array([0, 1, 1, 0], dtype=np.float32)


@pytest.fixture
def four_points() -> Dataset:
    """The four XOR corners, used for both training and validation."""
    return Dataset(FOUR_X, FOUR_Y, FOUR_X, FOUR_Y)


@pytest.fixture(scope="module")
def xor() -> Dataset:
    return make_xor(0)


@pytest.fixture
def zero_lr(monkeypatch: pytest.MonkeyPatch) -> None:
    """Train with learning rate 0, which OptimizerSpec rightly refuses, by zeroing it after."""
    build = adapter.torch_optimizer

    def zeroed(params: Any, spec: optimizers.OptimizerSpec) -> torch.optim.Optimizer:
        optimizer = build(params, spec)
        for group in optimizer.param_groups:
            group["lr"] = 0.0
        return optimizer

    monkeypatch.setattr(adapter, "torch_optimizer", zeroed)


def with_hyperparams(monkeypatch: pytest.MonkeyPatch, name: str, **values: Any) -> None:
    """Override some of one optimizer's hyperparameters for this test only."""
    table = {key: dict(params) for key, params in optimizers.HYPERPARAMS.items()}
    table[name].update(values)
    proxy = MappingProxyType({key: MappingProxyType(params) for key, params in table.items()})
    monkeypatch.setattr(optimizers, "HYPERPARAMS", proxy)


def fit(
    data: Dataset,
    weights: Weights,
    optimizer: str = "sgd",
    batch_size: int = 32,
    lr: float = 0.05,
    epochs: int = 3,
    order_seed: int = 5,
    val_every: int = 1,
) -> tuple[TrainOutput, np.ndarray]:
    """Run the adapter on one cell; return its output and the orders it was given."""
    cell = Cell("lightning", optimizer, batch_size, lr, epochs)
    orders = batch_orders(order_seed, data.n_train, epochs)
    return adapter.fit(cell, data, weights, orders, val_every=val_every), orders


@dataclass
class Reference:
    """What the plain torch loop saw: per-epoch losses and the weights it ended with."""

    train_loss: list[float]
    val_loss: list[float]
    reported: Weights  # ASGD's average ``ax`` for asgd, else the weights
    last_iterate: Weights


def reference_fit(data: Dataset, weights: Weights, cell: Cell, orders: np.ndarray) -> Reference:
    """Train ``cell`` in a plain torch loop, without Lightning, as an independent oracle."""
    net = adapter.build_network(cell.hidden)
    with torch.no_grad():
        linears = [m for m in net if isinstance(m, torch.nn.Linear)]
        for layer, (kernel, bias) in zip(linears, weights, strict=True):
            layer.weight.copy_(torch.from_numpy(kernel.T.copy()))
            layer.bias.copy_(torch.from_numpy(bias))
    optimizer = adapter.torch_optimizer(net.parameters(), cell.optimizer_spec)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    out = Reference([], [], weights, weights)
    for epoch in range(cell.epochs):
        total = 0.0
        for start, stop in batch_bounds(data.n_train, cell.batch_size):
            index = torch.from_numpy(orders[epoch, start:stop])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                net(x[index]).squeeze(-1), y[index]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * (stop - start)
        out.train_loss.append(total / data.n_train)
        params = list(net.parameters())
        out.last_iterate = keras_layout(params)
        # torch's ASGD keeps ax an exact copy of the weights until averaging starts.
        if isinstance(optimizer, torch.optim.ASGD):
            params = [optimizer.state[p]["ax"] for p in params]
        out.reported = keras_layout(params)
        out.val_loss.append(evaluate(out.reported, data.x_val, data.y_val)[0])
    return out


def keras_layout(params: list[torch.Tensor]) -> Weights:
    """Weights given as torch weight, bias, weight, ... in Keras layout, as numpy copies."""
    pairs = [
        (w.detach().numpy().copy(), b.detach().numpy().copy())
        for w, b in zip(params[0::2], params[1::2], strict=True)
    ]
    return from_torch_layout(pairs)


def assert_same_weights(actual: Weights, expected: Weights) -> None:
    """Bit-for-bit equality of two weight lists."""
    assert len(actual) == len(expected)
    for (k, b), (k_ref, b_ref) in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(k, k_ref)
        np.testing.assert_array_equal(b, b_ref)


# ---------------------------------------------------------------------------------------------
# The contract


def test_output_shapes_types_and_step_count(xor: Dataset) -> None:
    weights = glorot_uniform((3, 4), 1)

    out, _ = fit(xor, weights, batch_size=32, epochs=3)

    assert out.history.shape == (3, 4) and out.history.dtype == np.float64
    assert not np.isnan(out.history).any()
    assert out.steps == 3 * steps_per_epoch(150, 32)
    assert not out.diverged and out.asgd_averaging is None
    assert [(k.shape, b.shape) for k, b in out.final_weights] == [
        ((k.shape, b.shape)) for k, b in weights
    ]
    assert all(k.dtype == np.float32 and b.dtype == np.float32 for k, b in out.final_weights)
    assert np.isfinite(out.history).all() and out.history[-1, 0] < out.history[0, 0]


@pytest.mark.parametrize("optimizer", ["sgd", "asgd", "rmsprop", "adam"])
def test_matches_a_plain_torch_loop(xor: Dataset, optimizer: str) -> None:
    weights = glorot_uniform((3, 4), 2)
    lr = 0.01 if optimizer in ("rmsprop", "adam") else 0.1

    out, orders = fit(xor, weights, optimizer, batch_size=16, lr=lr, epochs=3)
    ref = reference_fit(xor, weights, Cell("lightning", optimizer, 16, lr, 3), orders)

    # Same operations on the same numbers: equal, not merely close.
    np.testing.assert_array_equal(out.history[:, 0], ref.train_loss)
    np.testing.assert_allclose(out.history[:, 2], ref.val_loss, rtol=1e-6)
    assert_same_weights(out.final_weights, ref.reported)


def test_each_epoch_is_fed_its_own_order(xor: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, np.ndarray]] = []
    step = adapter.XorModule.training_step

    def recording(self: adapter.XorModule, batch: Any, batch_idx: int) -> torch.Tensor:
        seen.append((self.current_epoch, batch[0].numpy().copy()))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(adapter.XorModule, "training_step", recording)

    # val_every=2 so validation runs on some epochs only: the order must not care.
    out, orders = fit(xor, glorot_uniform((3, 4), 1), batch_size=32, epochs=4, val_every=2)

    bounds = batch_bounds(150, 32)
    assert len(seen) == 4 * len(bounds) == out.steps
    for i, (epoch, x) in enumerate(seen):
        assert epoch == i // len(bounds)
        start, stop = bounds[i % len(bounds)]
        np.testing.assert_array_equal(x, xor.x_train[orders[epoch, start:stop]])


def test_sampler_order_depends_on_the_epoch_only() -> None:
    orders = batch_orders(3, 10, 2)
    sampler = adapter.EpochOrderSampler(orders, batch_size=4)

    first = [b.tolist() for b in sampler]
    assert first == [b.tolist() for b in sampler]  # iterating again repeats the epoch
    assert [len(b) for b in first] == [4, 4, 2] and len(sampler) == 3
    assert list(itertools.chain(*first)) == orders[0].tolist()
    sampler.set_epoch(1)
    assert torch.cat(list(sampler)).tolist() == orders[1].tolist()
    with pytest.raises(ValueError, match=r"epoch must be in \[0, 2\).*received epoch=2"):
        sampler.set_epoch(2)


def test_learning_rate_zero_reports_the_initial_weights(xor: Dataset, zero_lr: None) -> None:
    weights = glorot_uniform((3, 4), 4)

    out, _ = fit(xor, weights, batch_size=32, epochs=3)

    train_loss, train_acc = evaluate(weights, xor.x_train, xor.y_train)
    val_loss, val_acc = evaluate(weights, xor.x_val, xor.y_val)
    np.testing.assert_allclose(out.history[:, 0], train_loss, rtol=1e-6)
    np.testing.assert_allclose(out.history[:, 2], val_loss, rtol=1e-6)
    np.testing.assert_array_equal(out.history[:, 1], train_acc)
    np.testing.assert_array_equal(out.history[:, 3], val_acc)
    assert_same_weights(out.final_weights, weights)


def test_weights_round_trip_and_are_not_transposed_wrongly() -> None:
    rng = np.random.default_rng(0)
    weights = [
        (rng.normal(size=(2, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)),
        (rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)),
        (rng.normal(size=(4, 1)).astype(np.float32), rng.normal(size=1).astype(np.float32)),
    ]
    module = adapter.XorModule((3, 4), optimizers.OptimizerSpec("sgd", 0.1))

    module.set_weights(weights)

    assert_same_weights(module.get_weights(), weights)
    # A reshape instead of a transpose survives a round trip; it does not survive these.
    np.testing.assert_array_equal(module.net[0].weight.detach().numpy(), weights[0][0].T)
    x = rng.uniform(-1, 1, size=(20, 2)).astype(np.float32)
    with torch.no_grad():
        logits = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, forward_logits(weights, x), rtol=1e-5, atol=1e-6)


def test_wrong_weight_shapes_are_refused() -> None:
    module = adapter.XorModule((3, 4), optimizers.OptimizerSpec("sgd", 0.1))
    weights = glorot_uniform((4, 3), 0)

    with pytest.raises(ValueError, match=r"needs a kernel of shape \(2, 3\).*received kernel"):
        module.set_weights(weights)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"orders": np.zeros((2, 150), dtype=np.int64)},
            r"orders must have shape \(epochs, n_train\) = \(3, 150\); received \(2, 150\)",
        ),
        ({"orders": np.full((3, 150), 150)}, r"training indices in \[0, 150\); received"),
        ({"orders": np.zeros((3, 150))}, "orders must hold integer indices; received dtype"),
        ({"val_every": 0}, "val_every must be an integer >= 1; received 0"),
        ({"cell": Cell("keras", "sgd", 32, 0.1, 3)}, "cell.framework must be 'lightning'"),
    ],
)
def test_bad_inputs_raise_value_error(xor: Dataset, change: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "cell": Cell("lightning", "sgd", 32, 0.1, 3),
        "data": xor,
        "initial": glorot_uniform((3, 4), 0),
        "orders": batch_orders(0, 150, 3),
    }

    with pytest.raises(ValueError, match=message):
        adapter.fit(**(args | change))


def test_fit_is_silent_and_writes_nothing(
    xor: Dataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    recwarn: pytest.WarningsRecorder,
) -> None:
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    # Lightning's "does not have many workers" warning needs 3 or more cores; pretend to have 9.
    monkeypatch.setattr(data_connector, "suggested_max_num_workers", lambda devices: 8)

    fit(xor, glorot_uniform((3, 4), 0), epochs=2)

    assert capfd.readouterr() == ("", "")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("lightning")] == []
    assert [str(w.message) for w in recwarn] == []
    assert list(tmp_path.iterdir()) == []
    # The filters are gone again: Lightning's other notes still reach whoever listens.
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert not any(isinstance(f, adapter._DropNoise) for f in logger.filters)


@pytest.mark.parametrize("name", optimizers.OPTIMIZERS)
def test_torch_optimizer_gets_every_hyperparameter(name: str) -> None:
    spec = optimizers.OptimizerSpec(name, 0.123)
    param = torch.nn.Parameter(torch.zeros(2))

    optimizer = adapter.torch_optimizer([param], spec)

    assert type(optimizer).__name__.lower() == name
    assert optimizer.defaults | optimizers.torch_kwargs(spec) == optimizer.defaults


def test_fit_leaves_torch_global_state_alone(xor: Dataset) -> None:
    rng_state = torch.get_rng_state()
    deterministic = torch.are_deterministic_algorithms_enabled()

    fit(xor, glorot_uniform((3, 4), 0), epochs=2)

    assert torch.equal(torch.get_rng_state(), rng_state)
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_a_non_finite_loss_keeps_the_epoch_and_stops(xor: Dataset) -> None:
    out, _ = fit(xor, glorot_uniform((3, 4), 0), batch_size=150, lr=1e30, epochs=10)

    assert out.diverged
    assert 1 < len(out.history) < 10
    assert out.steps == len(out.history)
    assert np.isfinite(out.history[:-1, 0]).all() and not np.isfinite(out.history[-1, 0])


# ---------------------------------------------------------------------------------------------
# Field cases


@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop", "adam"])
def test_f1_dead_hidden_units_stay_dead(four_points: Dataset, optimizer: str) -> None:
    weights = glorot_uniform((3, 4), 3)
    kernel = -np.abs(weights[0][0])
    weights[0] = (kernel, np.full(3, -1.0, dtype=np.float32))
    cell = Cell("lightning", optimizer, 4, 0.5, 200)
    orders = batch_orders(0, 4, 200)

    out = adapter.fit(cell, four_points, weights, orders)

    np.testing.assert_array_equal(out.final_weights[0][0], kernel)
    np.testing.assert_array_equal(out.final_weights[0][1], -1.0)
    assert len(out.history) == 200 and not out.diverged
    assert (out.history[:, [1, 3]] == 0.5).all()
    assert np.isfinite(out.history).all()
    assert out.history[-1, 0] == pytest.approx(math.log(2), abs=0.01)


def test_f5_a_smaller_last_batch_counts_per_sample(four_points: Dataset, zero_lr: None) -> None:
    weights = glorot_uniform((3, 4), 7)
    cell = Cell("lightning", "sgd", 3, 0.1, 1)
    orders = np.array([[2, 0, 3, 1]])

    out = adapter.fit(cell, four_points, weights, orders)

    per_sample = bce_with_logits(forward_logits(weights, FOUR_X), FOUR_Y)
    mean_of_batch_means = (per_sample[[2, 0, 3]].mean() + per_sample[1]) / 2
    assert abs(per_sample.mean() - mean_of_batch_means) > 1e-3
    assert out.history[0, 0] == pytest.approx(per_sample.mean(), rel=1e-6)
    assert out.history[0, 0] != pytest.approx(mean_of_batch_means, rel=1e-4)


def test_f7_validating_less_often_changes_nothing_in_training(xor: Dataset) -> None:
    run = derive_seeds(0, 1)[0]
    weights = glorot_uniform((3, 4), run.init_seed)
    cell = Cell("lightning", "sgd", 2, 0.05, 20)
    orders = batch_orders(run.order_seed, xor.n_train, 20)

    every = adapter.fit(cell, xor, weights, orders, val_every=1)
    fifth = adapter.fit(cell, xor, weights, orders, val_every=5)

    np.testing.assert_array_equal(every.history[:, :2], fifth.history[:, :2])
    assert_same_weights(every.final_weights, fifth.final_weights)
    validated = np.arange(20) % 5 == 4
    np.testing.assert_array_equal(every.history[validated, 2:], fifth.history[validated, 2:])
    assert np.isnan(fifth.history[~validated, 2:]).all()
    assert not np.isnan(every.history).any()


def test_f4_the_loss_is_taken_from_logits() -> None:
    logits = torch.tensor([20.0, -20.0])
    targets = torch.tensor([0.0, 1.0])

    each = [float(adapter.XorModule.loss(logits[i : i + 1], targets[i : i + 1])) for i in range(2)]

    assert each == pytest.approx([20.0, 20.0], abs=1e-4)
    assert float(adapter.XorModule.loss(logits, targets)) == pytest.approx(20.0, abs=1e-4)


# ---------------------------------------------------------------------------------------------
# ASGD (field case F3)


def test_asgd_without_decay_or_averaging_is_sgd(
    xor: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_hyperparams(monkeypatch, "asgd", lambd=0.0, alpha=0.0)
    weights = glorot_uniform((3, 4), 5)

    asgd, _ = fit(xor, weights, "asgd", batch_size=8, lr=0.1, epochs=3)
    sgd, _ = fit(xor, weights, "sgd", batch_size=8, lr=0.1, epochs=3)

    assert asgd.asgd_averaging is False
    np.testing.assert_array_equal(asgd.history, sgd.history)
    assert_same_weights(asgd.final_weights, sgd.final_weights)


def test_asgd_with_a_small_t0_reports_the_average(
    xor: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Averaging starts at step t0 + 3 = 13, in the second of four epochs of 10 steps.
    with_hyperparams(monkeypatch, "asgd", t0=10.0)
    weights = glorot_uniform((3, 4), 6)
    cell = Cell("lightning", "asgd", 16, 0.2, 4)

    out, orders = fit(xor, weights, "asgd", batch_size=16, lr=0.2, epochs=4)
    ref = reference_fit(xor, weights, cell, orders)

    assert out.asgd_averaging is True
    # Training follows the iterates, untouched by evaluating the average in between.
    np.testing.assert_array_equal(out.history[:, 0], ref.train_loss)
    np.testing.assert_allclose(out.history[:, 2], ref.val_loss, rtol=1e-6)
    assert_same_weights(out.final_weights, ref.reported)
    # The average really differs from the last iterate, so the checks above can tell them apart.
    assert not np.array_equal(ref.reported[0][0], ref.last_iterate[0][0])
    last_val = evaluate(ref.last_iterate, xor.x_val, xor.y_val)[0]
    assert out.history[-1, 2] != pytest.approx(last_val, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Speed


def fit_seconds(batch_size: int, epochs: int, xor: Dataset) -> float:
    """Wall time of Trainer.fit alone (module, loaders and Trainer built outside the clock)."""
    seconds: list[float] = []
    original: Callable[..., Any] = adapter.lightning.Trainer.fit

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(adapter.lightning.Trainer, "fit", timed)
        fit(xor, glorot_uniform((3, 4), 0), batch_size=batch_size, epochs=epochs)
    return seconds[0]


def per_epoch_ms(batch_size: int, xor: Dataset, rounds: int = 3) -> float:
    """Milliseconds per epoch: (best 101-epoch fit - best 1-epoch fit) / 100."""
    one = min(fit_seconds(batch_size, 1, xor) for _ in range(rounds))
    many = min(fit_seconds(batch_size, 101, xor) for _ in range(rounds))
    return (many - one) / 100 * 1e3


@pytest.mark.slow
def test_speed_targets(xor: Dataset) -> None:
    fit_seconds(32, 2, xor)  # warm-up: imports, first Trainer

    per_step_b1 = per_epoch_ms(1, xor, rounds=2) / 150
    per_epoch_full = per_epoch_ms(150, xor)

    assert per_step_b1 <= 1.2, f"batch 1: {per_step_b1:.3f} ms per step"
    assert per_epoch_full <= 5.5, f"batch 150: {per_epoch_full:.3f} ms per epoch"
