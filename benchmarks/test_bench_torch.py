"""Speed of the plain PyTorch loop (the reference) and of Lightning, per-run and seed-batched.

Run in a process of its own, never with ``test_bench_keras.py`` (torch and TensorFlow must not
share a process): ``tox -e bench`` or
``pytest -m benchmark benchmarks/test_bench_torch.py --benchmark-json=bench-torch.json``.
See ``conftest.py`` for what is timed and :mod:`xorbench.bench` for the figures.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

pytestmark = pytest.mark.benchmark

FRAMEWORKS = ("torch", "lightning")


@pytest.fixture(scope="module")
def prepare() -> Any:
    """:func:`xorbench.adapters.bench_torch.prepare`, importing torch on first use."""
    if "tensorflow" in sys.modules:
        pytest.skip("TensorFlow is loaded in this process; run the torch suite on its own")
    from xorbench.adapters.bench_torch import prepare

    return prepare


def test_train(speed: Any, prepare: Any) -> None:
    """Steady-state epochs of a fresh, warmed-up run per round."""
    speed.time(prepare)


def test_setup(speed: Any, prepare: Any) -> None:
    """Building a run and training its warm-up epoch, Trainer start-up included."""
    speed.time(prepare)
