"""The one place where seeds are derived.

Every run gets two seeds from the experiment's base seed and the run's seed index:
``init_seed`` draws the initial weights and ``order_seed`` the batch order. They depend only on
the base seed and the index, never on the cell, so seed index ``i`` means the same initial
weights and the same batch order in every cell and in both frameworks (paired comparisons).

Two seed designs:

- ``independent``: run ``i`` takes init stream ``i`` and order stream ``i``; n seeds, n runs.
- ``factorial``: every init stream ``a`` with every order stream ``b`` (a, b < k); k x k runs,
  run ``a * k + b``. Crossing the two lets the variance of an outcome be split into the part due
  to the initial weights and the part due to the batch order. Its diagonal (a == b) is exactly
  the independent design's first k runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RunSeeds:
    """The seeds of one run: its index in the experiment and the two seeds drawn from it.

    ``init_index`` and ``order_index`` name the streams ``init_seed`` and ``order_seed`` come
    from; both equal ``seed`` in the independent design.
    """

    seed: int
    init_seed: int
    order_seed: int
    init_index: int
    order_index: int


def derive_seeds(base_seed: int, n_seeds: int) -> list[RunSeeds]:
    """Derive ``n_seeds`` independent (init, order) seed pairs from ``base_seed``.

    Uses ``numpy.random.SeedSequence.spawn``, so seed index ``i`` is the same whatever
    ``n_seeds`` is: a run with 5 seeds shares its first 5 runs with a run with 100.
    """
    children = np.random.SeedSequence(base_seed).spawn(n_seeds)
    out = []
    for index, child in enumerate(children):
        init_seed, order_seed = (int(s) for s in child.generate_state(2, dtype=np.uint32))
        out.append(RunSeeds(index, init_seed, order_seed, init_index=index, order_index=index))
    return out


SEED_DESIGNS: tuple[str, ...] = ("independent", "factorial")


def design_seeds(base_seed: int, n_seeds: int, design: str = "independent") -> list[RunSeeds]:
    """The runs of one cell: ``n_seeds`` of them, or ``n_seeds`` squared when factorial."""
    if design not in SEED_DESIGNS:
        raise ValueError(f"design must be one of {', '.join(SEED_DESIGNS)}; received {design!r}")
    streams = derive_seeds(base_seed, n_seeds)
    if design == "independent":
        return streams
    return [
        RunSeeds(a * n_seeds + b, streams[a].init_seed, streams[b].order_seed,
                 init_index=a, order_index=b)
        for a in range(n_seeds)
        for b in range(n_seeds)
    ]


def data_seed(base_seed: int, seed_index: int | None = None) -> int:
    """The seed of the XOR points: one per experiment, or one per run when data varies by run."""
    key = [base_seed, 0xDA7A] if seed_index is None else [base_seed, 0xDA7A, seed_index]
    return int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint32)[0])
