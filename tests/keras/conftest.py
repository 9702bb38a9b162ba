"""The Keras modules under test, each imported on first use (and with it TensorFlow).

torch and TensorFlow must not share a process, so a Keras test that finds torch loaded is
skipped: run tests/keras in a pytest process of its own, as tox does.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import pytest


def _keras_module(name: str) -> ModuleType:
    if "torch" in sys.modules:
        pytest.skip("torch is loaded in this process; run the Keras tests in their own process")
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def ka() -> ModuleType:
    """The Keras adapter."""
    return _keras_module("xorbench.adapters.keras")


@pytest.fixture(scope="module")
def kb() -> ModuleType:
    """The seed-batched Keras engine."""
    return _keras_module("xorbench.adapters.keras_batched")


@pytest.fixture(scope="module")
def bk() -> ModuleType:
    """The Keras benchmark module."""
    return _keras_module("xorbench.adapters.bench_keras")
