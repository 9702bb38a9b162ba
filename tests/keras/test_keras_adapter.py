"""Tests of the Keras adapter and of xorbench's Keras ASGD.

TensorFlow is imported lazily, by the ``ka`` fixture, never at collection: torch and TensorFlow
must not share a process (FRAMEWORK_FACTS.md), so torch's reference trajectories for the ASGD
port come from a subprocess.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from xorbench.data import Dataset, batch_bounds, batch_orders, make_xor
from xorbench.grid import Cell
from xorbench.model import Weights, bce_with_logits, evaluate, forward_logits, glorot_uniform
from xorbench.optimizers import OptimizerSpec, asgd_averaging_active

XOR4_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
XOR4_Y = np.array([0, 1, 1, 0], dtype=np.float32)


@pytest.fixture(autouse=True)
def _clear_keras_session() -> Any:
    """Drop every model and graph a test built, so tests do not see each other's state."""
    yield
    if "keras" not in sys.modules:
        return
    clear_session = sys.modules["keras"].backend.clear_session
    try:
        # The full garbage-collection pass costs ~0.35 s per test and frees nothing we rely on.
        clear_session(free_memory=False)
    except TypeError:  # a Keras without the argument
        clear_session()


def xor4() -> Dataset:
    """The four XOR points, used for both splits."""
    return Dataset(XOR4_X, XOR4_Y, XOR4_X, XOR4_Y)


def identity_orders(n: int, epochs: int) -> np.ndarray:
    return np.tile(np.arange(n), (epochs, 1))


def asymmetric_weights(hidden: tuple[int, ...], seed: int) -> Weights:
    """Random kernels and non-zero biases with no symmetry a transposition could hide behind."""
    rng = np.random.default_rng(seed)
    weights = glorot_uniform(hidden, seed)
    return [(k, rng.uniform(-0.5, 0.5, size=b.shape).astype(np.float32)) for k, b in weights]


# ---------------------------------------------------------------------------------------------
# The model, the weights and the batches


@pytest.mark.parametrize("hidden", [(3, 4), (2, 2)])
def test_lr0_round_trip_and_loss_match_numpy(ka: ModuleType, hidden: tuple[int, ...]) -> None:
    # Square (2, 2) kernels let a transposed load run without a shape error: the losses catch it.
    data = make_xor(3)
    initial = asymmetric_weights(hidden, 11)
    assert not any(np.allclose(k, k.T) for k, _ in initial if k.shape[0] == k.shape[1])
    keras = sys.modules["keras"]
    cell = Cell("keras", "sgd", 32, 0.05, 3, hidden)

    out = ka.train(cell, data, initial, batch_orders(0, 150, 3), keras.optimizers.SGD(0.0))

    for (k0, b0), (k1, b1) in zip(initial, out.final_weights, strict=True):
        np.testing.assert_array_equal(k1, k0)
        np.testing.assert_array_equal(b1, b0)
        assert k1.dtype == np.float32 and b1.dtype == np.float32
    train_loss, train_acc = evaluate(initial, data.x_train, data.y_train)
    val_loss, val_acc = evaluate(initial, data.x_val, data.y_val)
    expected = np.tile([train_loss, train_acc, val_loss, val_acc], (3, 1))
    np.testing.assert_allclose(out.history, expected, rtol=0, atol=2e-6)
    assert out.steps == 3 * 5


def test_batches_follow_orders(ka: ModuleType) -> None:
    # 150 = 21 x 7 + 3: batching must restart at every epoch, the last batch being 3 long.
    data = make_xor(0)
    orders = batch_orders(5, 150, 3)
    batches = list(ka.batch_pipeline(data, orders, 7, 3).as_numpy_iterator())

    expected = [orders[e, a:b] for e in range(3) for a, b in batch_bounds(150, 7)]
    assert len(batches) == len(expected) == 3 * 22
    for (x, y), idx in zip(batches, expected, strict=True):
        np.testing.assert_array_equal(x, data.x_train[idx])
        np.testing.assert_array_equal(y[:, 0], data.y_train[idx])


def test_fit_matches_explicit_batch_loop(ka: ModuleType) -> None:
    # An independent loop, one train_on_batch per slice of orders, with losses from numpy before
    # each update: fit must feed the same batches in the same order, and report their
    # batch-size-weighted mean.
    keras = sys.modules["keras"]
    data, initial = make_xor(1), glorot_uniform((3, 4), 7)
    orders = batch_orders(9, 150, 3)
    cell = Cell("keras", "sgd", 32, 0.5, 3)

    out = ka.fit(cell, data, initial, orders)

    model = ka.build_model((3, 4))
    ka.set_weights(model, initial)
    model.compile(
        optimizer=ka.keras_optimizer(cell.optimizer_spec),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    losses = []
    for epoch in range(3):
        per_sample = []
        for a, b in batch_bounds(150, 32):
            idx = orders[epoch, a:b]
            weights = ka.weights_from(model.weights)
            per_sample.append(bce_with_logits(forward_logits(weights, data.x_train[idx]),
                                              data.y_train[idx]))
            model.train_on_batch(data.x_train[idx], data.y_train[idx, None])
        losses.append(np.mean(np.concatenate(per_sample)))

    np.testing.assert_allclose(out.history[:, 0], losses, rtol=0, atol=1e-5)
    for (k0, b0), (k1, b1) in zip(ka.weights_from(model.weights), out.final_weights, strict=True):
        np.testing.assert_allclose(k1, k0, rtol=0, atol=1e-6)
        np.testing.assert_allclose(b1, b0, rtol=0, atol=1e-6)


def test_xla_and_graph_training_agree(ka: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    # XLA is off by measurement, not by necessity: switching it on must train the same run.
    data, initial, orders = make_xor(0), glorot_uniform((3, 4), 1), batch_orders(1, 150, 2)
    cell = Cell("keras", "asgd", 8, 0.05, 2)

    monkeypatch.setattr(ka, "JIT_COMPILE", False)
    graph = ka.fit(cell, data, initial, orders)
    monkeypatch.setattr(ka, "JIT_COMPILE", True)
    xla = ka.fit(cell, data, initial, orders)

    np.testing.assert_allclose(xla.history, graph.history, rtol=0, atol=1e-5)
    for (k0, b0), (k1, b1) in zip(graph.final_weights, xla.final_weights, strict=True):
        np.testing.assert_allclose(k1, k0, rtol=0, atol=1e-5)
        np.testing.assert_allclose(b1, b0, rtol=0, atol=1e-5)


def test_val_every_leaves_nan_between_validations(ka: ModuleType) -> None:
    data, initial = make_xor(0), glorot_uniform((3, 4), 1)
    cell = Cell("keras", "adam", 50, 0.05, 7)

    out = ka.fit(cell, data, initial, batch_orders(1, 150, 7), val_every=3)

    validated = ~np.isnan(out.history[:, 2])
    assert validated.tolist() == [False, False, True, False, False, True, True]
    assert np.isnan(out.history[:, 3]).tolist() == (~validated).tolist()
    assert np.isfinite(out.history[:, :2]).all()
    assert out.history[-1, 2] == pytest.approx(
        evaluate(out.final_weights, data.x_val, data.y_val)[0], abs=1e-7
    )


def test_divergence_keeps_the_epoch_and_stops(ka: ModuleType) -> None:
    # lr 1e30 sends the weights to ~1e30 after one step, so the second epoch's loss overflows.
    data, initial = make_xor(0), glorot_uniform((3, 4), 1)
    cell = Cell("keras", "sgd", 150, 1e30, 10)

    out = ka.fit(cell, data, initial, batch_orders(1, 150, 10))

    assert out.diverged
    assert 1 < len(out.history) < 10
    assert np.isfinite(out.history[0, 0])
    assert not np.isfinite(out.history[-1, 0])
    assert out.steps == len(out.history)


def test_bad_inputs_are_refused(ka: ModuleType) -> None:
    data, initial = make_xor(0), glorot_uniform((3, 4), 1)
    with pytest.raises(ValueError, match="framework must be 'keras'"):
        ka.fit(Cell("lightning", "sgd", 32, 0.05, 2), data, initial, batch_orders(0, 150, 2))
    with pytest.raises(ValueError, match=r"orders must have shape \(>= 3, 150\)"):
        ka.fit(Cell("keras", "sgd", 32, 0.05, 3), data, initial, batch_orders(0, 150, 2))
    with pytest.raises(ValueError, match="val_every must be an integer >= 1; received 0"):
        ka.fit(Cell("keras", "sgd", 32, 0.05, 2), data, initial, batch_orders(0, 150, 2), 0)


# ---------------------------------------------------------------------------------------------
# Field cases


@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop", "adam"])
def test_f1_dead_hidden_units_stay_dead(ka: ModuleType, optimizer: str) -> None:
    initial = glorot_uniform((3, 4), 4)
    initial[0] = (-np.abs(initial[0][0]), np.full(3, -1.0, dtype=np.float32))
    cell = Cell("keras", optimizer, 4, 0.5, 200)

    out = ka.fit(cell, xor4(), initial, identity_orders(4, 200))

    np.testing.assert_array_equal(out.final_weights[0][0], initial[0][0])
    np.testing.assert_array_equal(out.final_weights[0][1], initial[0][1])
    assert not out.diverged and len(out.history) == 200
    assert (out.history[:, [1, 3]] == 0.5).all()
    assert np.isfinite(out.history).all()
    np.testing.assert_allclose(out.history[:, [0, 2]], math.log(2), rtol=0, atol=1e-3)


def test_f4_saturated_logits_give_finite_loss(ka: ModuleType) -> None:
    # Logit 40 * relu(relu(x1)) - 20: +20 on (1, 0) with target 0, -20 on (0, 1) with target 1.
    x = np.array([[1, 0], [0, 1]], dtype=np.float32)
    y = np.array([0, 1], dtype=np.float32)
    initial = [
        (np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32), np.zeros(3, np.float32)),
        (np.eye(3, 4, dtype=np.float32), np.zeros(4, np.float32)),
        (np.array([[40], [0], [0], [0]], dtype=np.float32), np.array([-20], np.float32)),
    ]
    keras = sys.modules["keras"]
    model = ka.build_model((3, 4))
    ka.set_weights(model, initial)
    ka.compile_model(model, keras.optimizers.SGD(0.0), 2)
    logits = model(x).numpy()[:, 0]
    np.testing.assert_array_equal(logits, [20.0, -20.0])

    per_sample = model.loss.call(y[:, None], model(x)).numpy()

    np.testing.assert_allclose(per_sample, [20.0, 20.0], rtol=0, atol=1e-4)
    out = ka.train(Cell("keras", "sgd", 1, 0.05, 2), Dataset(x, y, x, y), initial,
                   identity_orders(2, 2), keras.optimizers.SGD(0.0))
    assert np.isfinite(out.history).all()
    np.testing.assert_allclose(out.history[:, [0, 2]], 20.0, rtol=0, atol=1e-4)
    assert (out.history[:, [1, 3]] == 0.0).all()


def test_f5_smaller_last_batch_is_weighted_by_its_size(ka: ModuleType) -> None:
    # Batches of 3 and 1, two steps per execution: the epoch loss is the mean over 4 samples.
    keras = sys.modules["keras"]
    initial = asymmetric_weights((3, 4), 2)
    per_sample = bce_with_logits(forward_logits(initial, XOR4_X), XOR4_Y)
    sample_mean = float(np.mean(per_sample))
    batch_mean = float(np.mean([per_sample[:3].mean(), per_sample[3:].mean()]))
    assert abs(sample_mean - batch_mean) > 1e-2

    out = ka.train(Cell("keras", "sgd", 3, 0.05, 3), xor4(), initial, identity_orders(4, 3),
                   keras.optimizers.SGD(0.0))

    np.testing.assert_allclose(out.history[:, 0], sample_mean, rtol=0, atol=1e-6)
    assert out.steps == 6


# ---------------------------------------------------------------------------------------------
# Optimizers


def test_keras_optimizer_takes_every_hyperparameter_from_the_spec(ka: ModuleType) -> None:
    rmsprop = ka.keras_optimizer(OptimizerSpec("rmsprop", 0.05))
    assert (rmsprop.rho, rmsprop.epsilon, rmsprop.momentum) == (0.99, 1e-8, 0.0)
    adam = ka.keras_optimizer(OptimizerSpec("adam", 0.05))
    assert (adam.beta_1, adam.beta_2, adam.epsilon, adam.amsgrad) == (0.9, 0.999, 1e-8, False)
    sgd = ka.keras_optimizer(OptimizerSpec("sgd", 0.25))
    assert float(sgd.learning_rate.numpy()) == 0.25 and sgd.momentum == 0.0
    asgd = ka.keras_optimizer(OptimizerSpec("asgd", 0.05))
    assert isinstance(asgd, ka.ASGD)
    assert (asgd.lambd, asgd.alpha, asgd.t0, asgd.l2) == (1e-4, 0.75, 1e6, 0.0)


def test_asgd_config_round_trips(ka: ModuleType) -> None:
    keras = sys.modules["keras"]
    opt = ka.ASGD(0.05, lambd=0.01, alpha=0.5, t0=3.0, weight_decay=0.1)

    clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))

    assert isinstance(clone, ka.ASGD)
    assert (clone.lambd, clone.alpha, clone.t0, clone.l2) == (0.01, 0.5, 3.0, 0.1)
    assert clone.weight_decay is None  # never Keras's decoupled decay
    assert clone.get_config()["learning_rate"] == pytest.approx(0.05)


def test_asgd_refuses_bad_hyperparameters(ka: ModuleType) -> None:
    with pytest.raises(ValueError, match="lambd, alpha and t0 must be >= 0"):
        ka.ASGD(0.05, t0=-1.0)
    with pytest.raises(NotImplementedError, match="gradient_accumulation_steps"):
        ka.ASGD(0.05, gradient_accumulation_steps=2)


# torch's ASGD on a quadratic, gradient g = a * (p - c) set by hand so both sides compute it with
# the same float32 operations; run in its own process (torch and TensorFlow never share one).
TORCH_REFERENCE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch

    torch.set_num_threads(1)
    cases = json.load(open(sys.argv[1]))
    problem = np.load(sys.argv[2])
    results = {}
    for name, case in cases.items():
        params = [torch.tensor(problem[f"p{i}"], requires_grad=True) for i in range(2)]
        hyper = {k: case[k] for k in ("lr", "lambd", "alpha", "t0", "weight_decay")}
        opt = torch.optim.ASGD(params, **hyper)
        for step in range(case["steps"]):
            for i, p in enumerate(params):
                a, c = torch.from_numpy(problem[f"a{i}"]), torch.from_numpy(problem[f"c{i}"])
                p.grad = a * (p.detach() - c)
            opt.step()
            state = [opt.state[p] for p in params]
            results[f"{name}/p/{step}"] = np.concatenate(
                [p.detach().numpy().ravel() for p in params])
            results[f"{name}/ax/{step}"] = np.concatenate([s["ax"].numpy().ravel() for s in state])
            results[f"{name}/eta_mu/{step}"] = np.array(
                [state[0]["eta"].item(), state[0]["mu"].item()])
    np.savez(sys.argv[3], **results)
    """
)

ASGD_CASES: dict[str, dict[str, Any]] = {
    "default": {"lr": 0.05, "lambd": 1e-4, "alpha": 0.75, "t0": 1e6, "weight_decay": 0.0},
    "t0=3": {"lr": 0.05, "lambd": 1e-4, "alpha": 0.75, "t0": 3.0, "weight_decay": 0.0},
    "t0=0": {"lr": 0.05, "lambd": 1e-4, "alpha": 0.75, "t0": 0.0, "weight_decay": 0.0},
    "strong": {"lr": 0.2, "lambd": 0.05, "alpha": 0.5, "t0": 5.0, "weight_decay": 0.1},
}
ASGD_STEPS = 20


def quadratic_problem() -> dict[str, np.ndarray]:
    """Two parameters, a 2x3 kernel and a bias of 3, with per-coordinate curvature and centre."""
    rng = np.random.default_rng(42)
    problem = {}
    for i, shape in enumerate([(2, 3), (3,)]):
        problem[f"p{i}"] = rng.normal(size=shape).astype(np.float32)
        problem[f"a{i}"] = rng.uniform(0.5, 3.0, size=shape).astype(np.float32)
        problem[f"c{i}"] = rng.normal(size=shape).astype(np.float32)
    return problem


@pytest.fixture(scope="module")
def torch_asgd(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """torch's trajectories for every case of ASGD_CASES, computed in a subprocess."""
    folder = tmp_path_factory.mktemp("torch_asgd")
    cases = {name: {**case, "steps": ASGD_STEPS} for name, case in ASGD_CASES.items()}
    (folder / "cases.json").write_text(json.dumps(cases))
    np.savez(folder / "problem.npz", **quadratic_problem())
    result = subprocess.run(
        [sys.executable, "-c", TORCH_REFERENCE, str(folder / "cases.json"),
         str(folder / "problem.npz"), str(folder / "out.npz")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"torch reference failed:\n{result.stderr}")
    with np.load(folder / "out.npz") as out:
        return dict(out)


def keras_asgd_trajectory(
    ka: ModuleType, optimizer: Any, steps: int, compiled: bool
) -> dict[str, list[np.ndarray]]:
    """Run ``optimizer`` on the quadratic; per step the flat parameters, averages, eta and mu."""
    keras, tf = sys.modules["keras"], sys.modules["tensorflow"]
    problem = quadratic_problem()
    variables = [keras.Variable(problem[f"p{i}"]) for i in range(2)]
    a = [problem[f"a{i}"] for i in range(2)]
    c = [problem[f"c{i}"] for i in range(2)]

    def step() -> None:
        grads = [a[i] * (variables[i].value - c[i]) for i in range(2)]
        optimizer.apply(grads, variables)

    if compiled:
        optimizer.build(variables)
        step = tf.function(step, jit_compile=True)
    out: dict[str, list[np.ndarray]] = {"p": [], "ax": [], "eta_mu": []}
    for _ in range(steps):
        step()
        out["p"].append(np.concatenate([v.numpy().ravel() for v in variables]))
        if isinstance(optimizer, ka.ASGD):
            averages = optimizer.averaged_variables()
            out["ax"].append(np.concatenate([v.numpy().ravel() for v in averages]))
            out["eta_mu"].append(np.array([optimizer.eta.numpy(), optimizer.mu.numpy()]))
    return out


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("case", list(ASGD_CASES))
def test_asgd_matches_torch_step_by_step(
    ka: ModuleType, torch_asgd: dict[str, np.ndarray], case: str, compiled: bool
) -> None:
    h = ASGD_CASES[case]
    optimizer = ka.ASGD(
        h["lr"], lambd=h["lambd"], alpha=h["alpha"], t0=h["t0"], weight_decay=h["weight_decay"]
    )

    ours = keras_asgd_trajectory(ka, optimizer, ASGD_STEPS, compiled)

    for step in range(ASGD_STEPS):
        np.testing.assert_allclose(
            ours["p"][step], torch_asgd[f"{case}/p/{step}"], rtol=0, atol=1e-6,
            err_msg=f"parameters after step {step + 1}",
        )
        np.testing.assert_allclose(
            ours["ax"][step], torch_asgd[f"{case}/ax/{step}"], rtol=0, atol=1e-6,
            err_msg=f"averages after step {step + 1}",
        )
        np.testing.assert_allclose(
            ours["eta_mu"][step], torch_asgd[f"{case}/eta_mu/{step}"], rtol=1e-6, atol=0,
            err_msg=f"eta, mu after step {step + 1}",
        )
    averaging = asgd_averaging_active(ASGD_STEPS, h["t0"])
    assert averaging == (case != "default")
    assert averaging == (not np.array_equal(ours["ax"][-1], ours["p"][-1]))


def test_asgd_t0_zero_averages_iterates_two_to_k(
    ka: ModuleType, torch_asgd: dict[str, np.ndarray]
) -> None:
    # torch's mu for step k is 1 / max(1, k - 1 - t0): with t0 = 0 steps 1 and 2 both copy, so
    # after 10 steps ax is the mean of iterates 2..10, not of 1..10.
    ours = keras_asgd_trajectory(ka, ka.ASGD(0.05, t0=0.0), 10, compiled=False)
    iterates = np.stack(ours["p"])

    np.testing.assert_allclose(ours["ax"][9], iterates[1:10].mean(axis=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        torch_asgd["t0=0/ax/9"], iterates[1:10].mean(axis=0), rtol=0, atol=1e-6
    )
    assert np.abs(iterates[:10].mean(axis=0) - iterates[1:10].mean(axis=0)).max() > 1e-3


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
def test_asgd_without_decay_is_keras_sgd_bit_for_bit(ka: ModuleType, compiled: bool) -> None:
    keras = sys.modules["keras"]
    asgd = keras_asgd_trajectory(ka, ka.ASGD(0.05, lambd=0.0, alpha=0.0), 20, compiled)
    sgd = keras_asgd_trajectory(ka, keras.optimizers.SGD(0.05), 20, compiled)

    np.testing.assert_array_equal(np.stack(asgd["p"]), np.stack(sgd["p"]))


def test_asgd_fit_without_decay_is_sgd_fit(ka: ModuleType) -> None:
    keras = sys.modules["keras"]
    data, initial, orders = make_xor(0), glorot_uniform((3, 4), 1), batch_orders(1, 150, 3)
    cell = Cell("keras", "asgd", 16, 0.1, 3)

    asgd = ka.train(cell, data, initial, orders, ka.ASGD(0.1, lambd=0.0, alpha=0.0))
    sgd = ka.train(cell, data, initial, orders, keras.optimizers.SGD(0.1))

    np.testing.assert_array_equal(asgd.history, sgd.history)
    for (k0, b0), (k1, b1) in zip(asgd.final_weights, sgd.final_weights, strict=True):
        np.testing.assert_array_equal(k0, k1)
        np.testing.assert_array_equal(b0, b1)
    assert asgd.asgd_averaging is False and sgd.asgd_averaging is None


def test_asgd_default_cell_does_not_average(ka: ModuleType) -> None:
    data, initial = make_xor(0), glorot_uniform((3, 4), 1)

    out = ka.fit(Cell("keras", "asgd", 32, 0.05, 2), data, initial, batch_orders(1, 150, 2))

    assert out.asgd_averaging is False and out.steps == 10


def test_asgd_averaging_evaluates_the_average(ka: ModuleType) -> None:
    # t0 = 3 averages from step 5 on: validation and final weights must come from ax.
    data, initial = make_xor(0), glorot_uniform((3, 4), 1)
    optimizer = ka.ASGD(0.1, t0=3.0)

    out = ka.train(Cell("keras", "asgd", 32, 0.1, 3), data, initial, batch_orders(1, 150, 3),
                   optimizer)

    assert out.asgd_averaging is True and out.steps == 15
    averages = ka.weights_from(optimizer.averaged_variables())
    current = ka.weights_from(optimizer._trainable_variables)
    for (k0, b0), (k1, b1) in zip(averages, out.final_weights, strict=True):
        np.testing.assert_array_equal(k0, k1)
        np.testing.assert_array_equal(b0, b1)
    assert not np.array_equal(current[0][0], averages[0][0])
    val_loss, val_acc = evaluate(averages, data.x_val, data.y_val)
    assert out.history[-1, 2] == val_loss and out.history[-1, 3] == val_acc


# ---------------------------------------------------------------------------------------------
# Speed (opt in: -m slow)


def seconds_per_epoch(ka: ModuleType, batch_size: int) -> float:
    """Fit time of 101 epochs minus that of 1, over 100: setup and compilation left out."""
    data, initial = make_xor(0), glorot_uniform((3, 4), 1)

    def fit_s(epochs: int) -> float:
        cell = Cell("keras", "sgd", batch_size, 0.05, epochs)
        out = ka.fit(cell, data, initial, batch_orders(1, 150, epochs))
        assert len(out.history) == epochs
        return float(out.extra["fit_s"])

    fit_s(1)
    one = min(fit_s(1) for _ in range(3))
    many = min(fit_s(101) for _ in range(3))
    return (many - one) / 100


@pytest.mark.slow
def test_speed_batch_1_per_step(ka: ModuleType) -> None:
    per_step = seconds_per_epoch(ka, 1) / 150
    assert per_step <= 1.3e-3, f"{per_step * 1e3:.3f} ms per step"


@pytest.mark.slow
def test_speed_full_batch_per_epoch(ka: ModuleType) -> None:
    per_epoch = seconds_per_epoch(ka, 150)
    assert per_epoch <= 21e-3, f"{per_epoch * 1e3:.3f} ms per epoch"
