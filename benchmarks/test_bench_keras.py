"""Speed of Keras 3 (TensorFlow backend), per-run and seed-batched.

Run in a process of its own, never with ``test_bench_torch.py`` (torch and TensorFlow must not
share a process): ``tox -e bench`` or
``pytest -m benchmark benchmarks/test_bench_keras.py --benchmark-json=bench-keras.json``.
See ``conftest.py`` for what is timed and :mod:`xorbench.bench` for the figures.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

pytestmark = pytest.mark.benchmark

FRAMEWORKS = ("keras",)


@pytest.fixture(scope="module")
def prepare() -> Any:
    """:func:`xorbench.adapters.bench_keras.prepare`, starting TensorFlow on first use."""
    if "torch" in sys.modules:
        pytest.skip("torch is loaded in this process; run the Keras suite on its own")
    from xorbench.adapters import bench_keras
    from xorbench.adapters.keras import quiet_retracing_notes

    quiet_retracing_notes()
    return bench_keras.prepare


def test_train(speed: Any, prepare: Any) -> None:
    """Steady-state epochs of a fresh, warmed-up run per round (tracing is in the warm-up)."""
    speed.time(prepare)


def test_setup(speed: Any, prepare: Any) -> None:
    """Building and compiling a run and training its warm-up epoch, tracing included."""
    speed.time(prepare)
