"""The worker side of ``xorbench parity``: one process per framework, reused for every cell.

The parent (:mod:`xorbench.parity`) imports neither torch nor TensorFlow: it submits requests
to a spawned process per framework, whose initializer imports that framework's adapter once.
This module itself imports no framework at import time, so the parent can name its functions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from xorbench.adapters.base import Trace, load_adapter
from xorbench.cell_process import exit_with_parent
from xorbench.data import Dataset
from xorbench.grid import Cell
from xorbench.model import Weights
from xorbench.optimizers import OptimizerSpec


@dataclass(frozen=True)
class TraceRequest:
    """One run to trace: the cell (its framework picks the adapter), data, start and order."""

    cell: Cell
    data: Dataset
    initial: Weights
    orders: np.ndarray
    dtype: str


def init(framework: str, parent: int) -> None:
    """Pin the process to one thread and import the framework's adapter once.

    The worker ends itself when ``parent`` (the ``xorbench parity`` process) is gone, so that a
    killed parity check leaves no worker training on.
    """
    exit_with_parent(parent)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                "TF_NUM_INTEROP_THREADS"):
        os.environ[var] = "1"
    adapter = load_adapter(framework)
    if framework == "keras":
        # Every parity run builds a fresh model whose training function TensorFlow traces once;
        # after a few runs TF warns "triggered tf.function retracing" about what is intended.
        # Only that note is dropped, in this worker: other warnings and errors still show.
        adapter.quiet_retracing_notes()


def run_trace(request: TraceRequest) -> Trace:
    """Train the request's run in its framework and return its epoch-by-epoch trace."""
    adapter = load_adapter(request.cell.framework)
    trace: Trace = adapter.trace(
        request.cell, request.data, request.initial, request.orders, request.dtype
    )
    return trace


def read_settings(framework: str, spec: OptimizerSpec, impl: str, dtype: str) -> dict[str, Any]:
    """The framework's live optimizer object for ``spec``, read back (see the adapters)."""
    settings: dict[str, Any] = load_adapter(framework).optimizer_settings(spec, impl, dtype)
    return settings
