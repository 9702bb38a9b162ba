"""What the speed suites time, and how: profiles, cases, inputs and the pedantic timing loop.

Two suites, one per framework family, each run in its own process (torch and TensorFlow must
not share one): ``test_bench_torch.py`` (the plain loop and Lightning) and
``test_bench_keras.py``. ``tox -e bench`` runs both in full and writes ``bench-torch.json`` and
``bench-keras.json``; ``tox -e bench-short`` runs a few cases once each, so the suites never rot.

Every case is timed in pytest-benchmark's pedantic mode: each round builds a fresh model and
optimizer in ``setup`` (outside the clock) and trains its warm-up epoch there, then the clock
covers the timed epochs only (:class:`xorbench.bench.BenchCase`). ``--bench-profile`` picks the
profile: ``full`` (default) or ``short``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import resource
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from xorbench.bench import BenchCase, derived_figures
from xorbench.data import Dataset, batch_orders, make_xor
from xorbench.environment import versions
from xorbench.model import Weights, glorot_uniform
from xorbench.optimizers import OPTIMIZERS
from xorbench.seeds import data_seed, derive_seeds

BASE_SEED = 0
BATCH_SIZES: tuple[int, ...] = (1, 32, 150)


@dataclass(frozen=True)
class Profile:
    """How much of the grid to time, and how many rounds.

    Attributes
    ----------
    per_run, batched
        (optimizer, batch size) pairs timed with each engine.
    seeds
        Seeds per call of the batched engine.
    epochs
        Timed epochs per call, by batch size. The same for every framework, so each trains the
        same steps; a call lasts about 0.03 to 0.5 s on the reference machine.
    rounds, batched_rounds, setup_rounds
        Timed rounds per case; each round is a fresh model.
    warmup_rounds
        Untimed rounds before them (process-wide first-time costs).
    """

    per_run: tuple[tuple[str, int], ...]
    batched: tuple[tuple[str, int], ...]
    seeds: tuple[int, ...]
    epochs: dict[int, int]
    rounds: int
    batched_rounds: int
    setup_rounds: int
    warmup_rounds: int


_EVERY_PAIR = tuple(itertools.product(OPTIMIZERS, BATCH_SIZES))
_SOME_PAIRS = (*((name, 32) for name in OPTIMIZERS), ("sgd", 1), ("sgd", 150))

PROFILES: dict[str, Profile] = {
    # 6 to 8 minutes on the 2-core reference machine, half of it Keras, which traces a fresh
    # training function every round.
    "full": Profile(
        per_run=_EVERY_PAIR,
        batched=_EVERY_PAIR,
        seeds=(1, 10, 100),
        epochs={1: 2, 32: 20, 150: 60},
        rounds=9,
        batched_rounds=5,
        setup_rounds=5,
        warmup_rounds=1,
    ),
    # Every framework, engine, optimizer and batch size once, one round each: under a minute
    # per suite.
    "short": Profile(
        per_run=_SOME_PAIRS,
        batched=(("sgd", 32), ("adam", 1), ("rmsprop", 150)),
        seeds=(1, 10),
        epochs={1: 1, 32: 2, 150: 3},
        rounds=1,
        batched_rounds=1,
        setup_rounds=1,
        warmup_rounds=0,
    ),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-profile",
        choices=sorted(PROFILES),
        default="full",
        help="xorbench speed suites: how much to time (default: full)",
    )


def _profile(config: pytest.Config) -> Profile:
    return PROFILES[str(config.getoption("--bench-profile"))]


def cases(profile: Profile, frameworks: Sequence[str]) -> list[BenchCase]:
    """Every case of ``profile`` for ``frameworks``: training per engine, then setup."""
    out = []
    for framework in frameworks:
        for optimizer, batch in profile.per_run:
            out.append(BenchCase("train", framework, "per-run", optimizer, batch,
                                 epochs=profile.epochs[batch]))
        for (optimizer, batch), seeds in itertools.product(profile.batched, profile.seeds):
            out.append(BenchCase("train", framework, "batched", optimizer, batch, seeds=seeds,
                                 epochs=profile.epochs[batch]))
        out.append(BenchCase("setup", framework, "per-run", "sgd", 32, epochs=0))
        out += [BenchCase("setup", framework, "batched", "sgd", 32, seeds=seeds, epochs=0)
                for seeds in profile.seeds]
    return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``case_id`` with the cases of the test's kind and its module's frameworks."""
    if "case_id" not in metafunc.fixturenames:
        return
    kind = metafunc.function.__name__.removeprefix("test_")
    frameworks = metafunc.module.FRAMEWORKS
    ids = [c.id for c in cases(_profile(metafunc.config), frameworks) if c.kind == kind]
    metafunc.parametrize("case_id", ids)


@pytest.fixture
def case(case_id: str, request: pytest.FixtureRequest) -> BenchCase:
    """The case named by ``case_id`` for the requesting test's kind."""
    kind = request.function.__name__.removeprefix("test_")
    found = [c for c in cases(_profile(request.config), request.module.FRAMEWORKS)
             if c.id == case_id and c.kind == kind]
    return found[0]


# ---------------------------------------------------------------------------------------------
# Inputs: the runner's data, seeds, weights and orders, made once per shape


@functools.cache
def _data() -> Dataset:
    return make_xor(data_seed(BASE_SEED))


@functools.cache
def _inputs(seeds: int, epochs: int, hidden: tuple[int, ...]) -> tuple[list[Weights], np.ndarray]:
    """Initial weights and batch orders of seeds 0..seeds-1, as the runner derives them."""
    runs = derive_seeds(BASE_SEED, seeds)
    initials = [glorot_uniform(hidden, run.init_seed) for run in runs]
    n_train = _data().n_train
    orders = np.stack([batch_orders(run.order_seed, n_train, epochs) for run in runs])
    return initials, orders


@functools.cache
def _versions() -> dict[str, str | None]:
    return versions()


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (``ru_maxrss``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kibibytes, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


# ---------------------------------------------------------------------------------------------
# Timing

Prepare = Callable[..., Any]


class SpeedCase:
    """Times one :class:`BenchCase` with a pytest-benchmark fixture and records its figures."""

    def __init__(self, benchmark: Any, case: BenchCase, profile: Profile) -> None:
        self.benchmark = benchmark
        self.case = case
        self.profile = profile

    def _new_run(self, prepare: Prepare) -> Any:
        case = self.case
        initials, orders = _inputs(case.seeds, case.cell.epochs, case.hidden)
        run = prepare(case.cell, _data(), initials, orders, case.engine,
                      warmup=case.warmup_epochs)
        # An engine setting that changes what is timed (Keras's XLA switch) goes on record.
        if hasattr(run, "jit_compile"):
            self.benchmark.extra_info["jit_compile"] = bool(run.jit_compile)
        return run

    def _rounds(self) -> int:
        if self.case.kind == "setup":
            return self.profile.setup_rounds
        return self.profile.batched_rounds if self.case.engine == "batched" else self.profile.rounds

    def time(self, prepare: Prepare) -> None:
        """Time the case (``train`` or ``setup``), then write its ``extra_info``."""
        self.benchmark.group = self.case.group
        self.benchmark.extra_info.update(self.case.extra_info())
        self.benchmark.extra_info["warmup_rounds"] = self.profile.warmup_rounds
        if self.case.kind == "train":
            self._time_training(prepare)
        else:
            self._time_setup(prepare)
        self._record()

    @property
    def _disabled(self) -> bool:
        # With --benchmark-disable, pedantic runs setup and target once and never the teardown,
        # which ends the run's thread and restores global state: the target must do it then.
        return bool(getattr(self.benchmark, "disabled", False))

    def _time_training(self, prepare: Prepare) -> None:
        def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
            # A fresh model and optimizer every round, built and warmed up off the clock.
            run = self._new_run(prepare)
            run.start()
            return (run,), {}

        self.benchmark.pedantic(
            _resume_and_finish if self._disabled else _resume, setup=setup, teardown=_finish,
            rounds=self._rounds(), warmup_rounds=self.profile.warmup_rounds,
        )

    def _time_setup(self, prepare: Prepare) -> None:
        def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
            return ([],), {}

        def finish(made: list[Any]) -> None:
            # The run's one timed epoch is trained here, off the clock, to end it cleanly.
            if made:
                run = made.pop()
                run.resume()
                run.finish()

        def build_and_start(made: list[Any]) -> None:
            made.append(self._new_run(prepare))
            made[0].start()
            if self._disabled:
                finish(made)

        self.benchmark.pedantic(
            build_and_start, setup=setup, teardown=finish,
            rounds=self._rounds(), warmup_rounds=self.profile.warmup_rounds,
        )

    def _record(self) -> None:
        extra = self.benchmark.extra_info
        extra["versions"] = _versions()
        # The process's peak so far, not this case's own: native frameworks allocate outside
        # Python's view, so only the operating system's figure is honest, and it never falls.
        extra["peak_rss_mib"] = peak_rss_mib()
        stats = getattr(self.benchmark, "stats", None)
        if stats is None:  # --benchmark-disable: the case ran once, untimed
            return
        figures = derived_figures(self.case, stats.stats.median, stats.stats.q1, stats.stats.q3)
        extra.update(figures)


def _resume(run: Any) -> None:
    try:
        run.resume()
    except BaseException:
        # pytest-benchmark skips the teardown of a failed call: end the run's thread here.
        with contextlib.suppress(Exception):
            run.finish()
        raise


def _resume_and_finish(run: Any) -> None:
    try:
        run.resume()
    finally:
        run.finish()


def _finish(run: Any) -> None:
    run.finish()


@pytest.fixture
def speed(benchmark: Any, case: BenchCase, request: pytest.FixtureRequest) -> SpeedCase:
    """The timing helper for this test's case."""
    return SpeedCase(benchmark, case, _profile(request.config))
