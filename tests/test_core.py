"""Data, seeds, model and optimizer tables: the framework-free core, against plain numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xorbench import data, model, optimizers, seeds


def test_xor_data_follows_the_rule_and_split() -> None:
    d = data.make_xor(123)

    assert d.x_train.shape == (150, 2) and d.x_val.shape == (50, 2)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.float32
    x = np.vstack([d.x_train, d.x_val])
    assert x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(np.hstack([d.y_train, d.y_val]), (x[:, 0] * x[:, 1] >= 0))


def test_batch_orders_are_permutations_and_seeded() -> None:
    orders = data.batch_orders(7, 150, 5)

    assert orders.shape == (5, 150)
    for epoch in orders:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(150))
    np.testing.assert_array_equal(orders, data.batch_orders(7, 150, 5))
    assert not np.array_equal(orders[0], orders[1])


def test_batch_bounds_keep_a_smaller_last_batch() -> None:
    bounds = data.batch_bounds(150, 32)

    assert [stop - start for start, stop in bounds] == [32, 32, 32, 32, 22]
    assert data.steps_per_epoch(150, 32) == 5
    with pytest.raises(ValueError, match=r"batch_size must be between 1 and .* received"):
        data.batch_bounds(150, 151)


def test_seed_index_means_the_same_seeds_whatever_the_count() -> None:
    five = seeds.derive_seeds(0, 5)
    hundred = seeds.derive_seeds(0, 100)

    assert five == hundred[:5]
    assert len({s.init_seed for s in hundred}) == 100
    assert all(s.init_seed != s.order_seed for s in hundred)
    assert seeds.derive_seeds(1, 5) != five


def test_glorot_uniform_limits_and_zero_biases() -> None:
    weights = model.glorot_uniform((3, 4), init_seed=11)

    assert [k.shape for k, _ in weights] == [(2, 3), (3, 4), (4, 1)]
    for kernel, bias in weights:
        fan_in, fan_out = kernel.shape
        assert np.abs(kernel).max() <= math.sqrt(6 / (fan_in + fan_out))
        assert kernel.dtype == np.float32
        np.testing.assert_array_equal(bias, 0)


def test_bce_from_logits_is_finite_when_saturated() -> None:
    # Field case F4: logits +20 (target 0) and -20 (target 1) cost 20 each, never inf.
    losses = model.bce_with_logits(np.array([20.0, -20.0], np.float32), np.array([0.0, 1.0]))

    np.testing.assert_allclose(losses, [20.0, 20.0], atol=1e-4)


def test_bce_matches_the_probability_formula_where_that_is_safe() -> None:
    z = np.linspace(-5, 5, 11)
    y = (np.arange(11) % 2).astype(float)
    p = 1 / (1 + np.exp(-z))

    expected = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(model.bce_with_logits(z, y), expected, rtol=1e-12)


def test_forward_pass_by_hand() -> None:
    weights = [
        (np.array([[1.0, -1.0], [2.0, 0.5]]), np.array([0.0, 1.0])),
        (np.array([[1.0], [-2.0]]), np.array([0.5])),
    ]
    x = np.array([[1.0, 1.0], [-1.0, 0.0]])

    # hidden: relu([3, 0.5]) = [3, 0.5]; relu([-1, 2]) = [0, 2]
    np.testing.assert_allclose(model.forward_logits(weights, x), [3 - 1 + 0.5, -4 + 0.5])


def test_flatten_round_trips_and_torch_layout_transposes() -> None:
    weights = model.glorot_uniform((3, 4), init_seed=5)

    back = model.unflatten(model.flatten(weights), (3, 4))
    for (k1, b1), (k2, b2) in zip(weights, back, strict=True):
        np.testing.assert_array_equal(k1, k2)
        np.testing.assert_array_equal(b1, b2)

    torch_pairs = model.to_torch_layout(weights)
    assert torch_pairs[0][0].shape == (3, 2)
    np.testing.assert_array_equal(torch_pairs[0][0], weights[0][0].T)
    with pytest.raises(ValueError, match="has 30 parameters; received 29"):
        model.unflatten(np.zeros(29), (3, 4))


def test_every_optimizer_has_every_hyperparameter_in_both_frameworks() -> None:
    torch_names = {
        "sgd": {"lr", "momentum", "dampening", "nesterov", "weight_decay"},
        "asgd": {"lr", "lambd", "alpha", "t0", "weight_decay"},
        "rmsprop": {"lr", "alpha", "eps", "momentum", "centered", "weight_decay"},
        "adam": {"lr", "betas", "eps", "amsgrad", "weight_decay"},
    }
    for name in optimizers.OPTIMIZERS:
        spec = optimizers.OptimizerSpec(name, 0.05)
        assert set(optimizers.torch_kwargs(spec)) == torch_names[name]
        keras = optimizers.keras_kwargs(spec)
        assert keras["learning_rate"] == 0.05
        floats = [v for v in keras.values() if not isinstance(v, bool)]
        assert all(type(v) is float for v in floats), keras


def test_optimizer_spec_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match=r"optimizer must be one of sgd, asgd, rmsprop, adam; "
                       r"received 'adagrad'"):
        optimizers.OptimizerSpec("adagrad", 0.1)
    for lr in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="lr must be a finite number > 0"):
            optimizers.OptimizerSpec("sgd", lr)


def test_asgd_averaging_starts_after_t0() -> None:
    assert not optimizers.asgd_averaging_active(75_000, t0=1e6)
    assert not optimizers.asgd_averaging_active(5, t0=3)
    assert optimizers.asgd_averaging_active(6, t0=3)
