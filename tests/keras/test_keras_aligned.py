"""The Keras ports of torch's RMSprop and Adam, and the live settings the parity check reads.

torch's own steps come from a subprocess (torch and TensorFlow never share a process); the
oracle is torch applied to the same gradient sequence, step by step.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest

from xorbench import optimizers
from xorbench.optimizers import OptimizerSpec

STEPS = 30


def gradients() -> np.ndarray:
    """Gradients spanning six decades, so epsilon's place matters."""
    rng = np.random.default_rng(7)
    return rng.normal(size=(STEPS, 4)) * np.logspace(-6, 0, 4)


@pytest.fixture(scope="module")
def torch_steps() -> dict[str, np.ndarray]:
    """torch's iterates for the gradients above, from zero weights, computed in a subprocess.

    Keyed "rmsprop-float64" and so on.
    """
    code = textwrap.dedent("""
        import json, sys
        import numpy as np, torch
        from xorbench.adapters.lightning import torch_optimizer
        from xorbench.optimizers import OptimizerSpec
        g = np.asarray(json.load(sys.stdin))
        result = {}
        for name in ("rmsprop", "adam"):
            for dtype in ("float32", "float64"):
                p = torch.nn.Parameter(torch.zeros(4, dtype=getattr(torch, dtype)))
                opt = torch_optimizer([p], OptimizerSpec(name, 0.05))
                out = []
                for row in g:
                    p.grad = torch.tensor(row, dtype=p.dtype)
                    opt.step()
                    out.append(p.detach().double().numpy().tolist())
                result[f"{name}-{dtype}"] = out
        print(json.dumps(result))
    """)
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(gradients().tolist()),
                          capture_output=True, text=True, check=True)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return {key: np.asarray(value) for key, value in found.items()}


def keras_steps(ka: Any, name: str, dtype: str, impl: str) -> np.ndarray:
    import keras

    out = []
    with ka.floatx(dtype):
        opt = ka.keras_optimizer(OptimizerSpec(name, 0.05), impl)
        var = keras.Variable(np.zeros(4), dtype=dtype)
        for row in gradients():
            opt.apply([keras.ops.convert_to_tensor(row.astype(dtype))], [var])
            out.append(np.asarray(var.numpy(), dtype=np.float64))
    return np.asarray(out)


@pytest.mark.parametrize("name", ["rmsprop", "adam"])
def test_aligned_steps_are_torchs_and_native_ones_are_not(
    ka: Any, torch_steps: dict[str, np.ndarray], name: str
) -> None:
    want64 = torch_steps[f"{name}-float64"]
    want32 = torch_steps[f"{name}-float32"]

    np.testing.assert_allclose(keras_steps(ka, name, "float64", "aligned"), want64,
                               rtol=0, atol=1e-14)
    # float32: within one rounding of the largest weight, step after step.
    np.testing.assert_allclose(keras_steps(ka, name, "float32", "aligned"), want32,
                               rtol=0, atol=4 * np.finfo(np.float32).eps)
    # Keras's own formula moves the small-gradient weight differently (epsilon's place).
    native = keras_steps(ka, name, "float64", "native")
    assert np.abs(native - want64).max() > 1e-4


def test_settings_are_read_from_the_live_object_not_typed(
    ka: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = ka.optimizer_settings(OptimizerSpec("rmsprop", 0.05))
    table = dict(optimizers.HYPERPARAMS)
    table["rmsprop"] = MappingProxyType({**optimizers.HYPERPARAMS["rmsprop"], "eps": 3e-6})
    monkeypatch.setattr(optimizers, "HYPERPARAMS", MappingProxyType(table))

    after = ka.optimizer_settings(OptimizerSpec("rmsprop", 0.05), "aligned", "float64")

    assert before["settings"]["epsilon"] == 1e-8
    assert after["settings"]["epsilon"] == 3e-6
    assert after["class"] == "xorbench.adapters.keras_aligned.TorchRMSprop"
    assert before["library_defaults"]["epsilon"] == 1e-7  # Keras's own default, read back
    # Keras keeps lr in a variable of its floatx: float32 rounds 0.05.
    assert before["settings"]["learning_rate"] == float(np.float32(0.05))
    assert after["settings"]["learning_rate"] == 0.05
