"""Presets, TOML files and flags -> one validated experiment: its cells and its seeds.

A cell is one point of the grid (framework x optimizer x batch size x lr x hidden x epochs); each
cell is trained once per seed. Everything is checked before the first run: a bad value raises
:class:`ConfigError`, whose message names the option, what is allowed and what was received.
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from xorbench.adapters.base import ENGINES, FRAMEWORKS, OPTIMIZER_IMPLS
from xorbench.data import N_TRAIN
from xorbench.model import DEFAULT_HIDDEN
from xorbench.optimizers import OPTIMIZERS, OptimizerSpec
from xorbench.seeds import SEED_DESIGNS


class ConfigError(ValueError):
    """A configuration value that is not allowed; the message is one line for the user."""


@dataclass(frozen=True)
class Cell:
    """One point of the grid, trained once per seed."""

    framework: str
    optimizer: str
    batch_size: int
    lr: float
    epochs: int
    hidden: tuple[int, ...] = DEFAULT_HIDDEN
    # "native" or "aligned": which Keras classes implement rmsprop and adam (adapters/base.py).
    optimizer_impl: str = "native"

    @property
    def optimizer_spec(self) -> OptimizerSpec:
        return OptimizerSpec(self.optimizer, self.lr)

    @property
    def key(self) -> str:
        """A readable identifier, unique within an experiment, safe as a file name."""
        hidden = "x".join(str(h) for h in self.hidden)
        return (
            f"{self.framework}-{self.optimizer}-b{self.batch_size}-lr{self.lr:g}"
            f"-h{hidden}-e{self.epochs}"
            + ("" if self.optimizer_impl == "native" else f"-{self.optimizer_impl}")
        )


# Axis names accepted in presets, TOML files and flags, with their defaults.
AXES: tuple[str, ...] = ("framework", "optimizer", "batch_size", "lr", "hidden", "epochs")


@dataclass(frozen=True)
class Experiment:
    """A whole run: the cells, how many seeds each, and everything else that shapes the numbers.

    With ``seed_design`` "factorial", ``seeds`` is k: each cell runs k init seeds x k order
    seeds, k squared runs (see :mod:`xorbench.seeds`).
    """

    name: str
    cells: tuple[Cell, ...]
    seeds: int
    base_seed: int = 0
    target: float = 0.9
    data_per_run: bool = False
    engine: str = "batched"
    n_train: int = N_TRAIN
    optimizer_impl: str = "native"
    seed_design: str = "independent"

    @property
    def runs_per_cell(self) -> int:
        return self.seeds**2 if self.seed_design == "factorial" else self.seeds

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description, used in the manifest and to recognise the same config.

        ``optimizer_impl`` is written only when it is not "native", so that results directories
        written before the setting existed still resume; any other value is in the manifest, and
        a rerun with a different value is refused.
        """
        out = asdict(self)
        out["cells"] = [asdict(c) | {"hidden": list(c.hidden)} for c in self.cells]
        if self.optimizer_impl == "native":
            del out["optimizer_impl"]
            for cell in out["cells"]:
                del cell["optimizer_impl"]
        return out


@dataclass(frozen=True)
class Axes:
    """The grid before expansion: a list of values per axis, plus the scalar settings."""

    framework: tuple[str, ...] = FRAMEWORKS
    optimizer: tuple[str, ...] = OPTIMIZERS
    batch_size: tuple[int, ...] = (1, 8, 32, N_TRAIN)
    lr: tuple[float, ...] = (0.05,)
    hidden: tuple[tuple[int, ...], ...] = (DEFAULT_HIDDEN,)
    epochs: tuple[int, ...] = (500,)
    seeds: int = 5
    base_seed: int = 0
    target: float = 0.9
    data_per_run: bool = False
    engine: str = "batched"
    optimizer_impl: str = "native"
    seed_design: str = "independent"
    # Explicit (optimizer, batch_size) pairs; when set they replace the optimizer x batch product.
    pairs: tuple[tuple[str, int], ...] | None = field(default=None)


PRESETS: dict[str, Axes] = {
    # The six configurations of the teaching notebook: GD, SGD, MiniSGD, ASGD, RMSprop, Adam.
    "notebook": Axes(
        pairs=(
            ("sgd", N_TRAIN),
            ("sgd", 1),
            ("sgd", 32),
            ("asgd", 32),
            ("rmsprop", 32),
            ("adam", 32),
        ),
        lr=(0.05,),
        epochs=(500,),
        seeds=5,
    ),
    # 100 seeds: enough for the seed-variance statistics (they need 30 per cell at least).
    "grid": Axes(seeds=100),
    # A few cells and epochs that finish in seconds, to check an installation.
    "smoke": Axes(
        optimizer=("sgd", "adam"),
        batch_size=(32, N_TRAIN),
        lr=(0.05,),
        epochs=(20,),
        seeds=3,
    ),
}


def expand(name: str, axes: Axes) -> Experiment:
    """The experiment of ``axes``: every combination of its axes, in a stable order."""
    validate(axes)
    if axes.pairs is not None:
        opt_batch: Sequence[tuple[str, int]] = axes.pairs
    else:
        opt_batch = list(itertools.product(axes.optimizer, axes.batch_size))
    cells = tuple(
        Cell(fw, opt, int(batch), float(lr), int(epochs), tuple(hidden), axes.optimizer_impl)
        for fw, (opt, batch), lr, hidden, epochs in itertools.product(
            axes.framework, opt_batch, axes.lr, axes.hidden, axes.epochs
        )
    )
    seen: set[str] = set()
    for cell in cells:
        if cell.key in seen:
            raise ConfigError(
                f"the grid has cell {cell.key} twice: lr values must differ in their first "
                "6 significant digits, which name the cell")
        seen.add(cell.key)
    return Experiment(
        name=name,
        cells=cells,
        seeds=axes.seeds,
        base_seed=axes.base_seed,
        target=axes.target,
        data_per_run=axes.data_per_run,
        engine=axes.engine,
        optimizer_impl=axes.optimizer_impl,
        seed_design=axes.seed_design,
    )


def _allowed(option: str, allowed: Sequence[Any], values: Sequence[Any]) -> None:
    for value in values:
        if value not in allowed:
            raise ConfigError(
                f"{option} must be one of {', '.join(map(str, allowed))}; received {value!r}"
            )


# Upper bounds that keep a typo from asking for days of training or more memory than a
# machine has (the seed-batched engine holds seeds x width x width weights per layer and
# optimizer state beside them). They are far above what this network needs to learn XOR.
MAX_WIDTH = 1024
MAX_LAYERS = 8
MAX_EPOCHS = 100_000
MAX_SEEDS = 10_000
MAX_FACTORIAL_SEEDS = 100
# `xorbench parity` trains every side of every cell once per seed, in two worker processes.
MAX_PARITY_SEEDS = 100


def check_distinct(option: str, values: Sequence[Any],
                   spelled: Sequence[str] | None = None) -> None:
    """Refuse a list that names a value twice: it would train (and count) the same cell twice.

    ``spelled`` holds each value as the user wrote it (a flag's items), so that "0.1,0.10" can
    be named as the same value written twice; by default each value's repr.
    """
    shown = list(spelled) if spelled is not None else [repr(v) for v in values]
    seen: list[Any] = []  # a list, not a set: a TOML value may be unhashable
    for value, text in zip(values, shown, strict=True):
        if value in seen:
            first = shown[seen.index(value)]
            again = "" if first == text else f" (again as {text})"
            raise ConfigError(f"{option} lists {first} more than once{again}; "
                              "list each value once")
        seen.append(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# Known shortcoming: validate() names a setting by its TOML key (batch_size) whether the value
# came from a file or a flag (--batch-size); only list syntax errors name the flag. This note
# goes when Axes remembers where each value came from.
def validate(axes: Axes) -> None:
    """Raise :class:`ConfigError` for the first value that is not allowed."""
    _allowed("framework", FRAMEWORKS, axes.framework)
    _allowed("optimizer", OPTIMIZERS, axes.optimizer)
    _allowed("engine", ENGINES, [axes.engine])
    _allowed("optimizer_impl", OPTIMIZER_IMPLS, [axes.optimizer_impl])
    _allowed("seed_design", SEED_DESIGNS, [axes.seed_design])
    batch_sizes = list(axes.batch_size) + [b for _, b in axes.pairs or ()]
    _allowed("optimizer", OPTIMIZERS, [o for o, _ in axes.pairs or ()])
    for option, values in [
        ("framework", axes.framework),
        ("optimizer", axes.optimizer),
        ("batch_size", axes.batch_size),
        ("lr", axes.lr),
        ("hidden", axes.hidden),
        ("epochs", axes.epochs),
    ]:
        if not values:
            raise ConfigError(f"{option} needs at least one value; received none")
        check_distinct(option, values)
    for batch in batch_sizes:
        if not _is_int(batch) or not 1 <= batch <= N_TRAIN:
            raise ConfigError(
                f"batch_size must be an integer from 1 to {N_TRAIN} (the training set); "
                f"received {batch!r}"
            )
    for lr in axes.lr:
        if not _is_number(lr) or not math.isfinite(lr) or lr <= 0:
            raise ConfigError(f"lr must be a finite number > 0; received {lr!r}")
    for hidden in axes.hidden:
        if (not hidden or len(hidden) > MAX_LAYERS
                or any(not _is_int(h) or not 1 <= h <= MAX_WIDTH for h in hidden)):
            raise ConfigError(
                f"hidden must be 1 to {MAX_LAYERS} layer widths from 1 to {MAX_WIDTH}, such as "
                f"3x4; received {hidden!r}"
            )
    for epochs in axes.epochs:
        if not _is_int(epochs) or not 1 <= epochs <= MAX_EPOCHS:
            raise ConfigError(
                f"epochs must be an integer from 1 to {MAX_EPOCHS:,}; received {epochs!r}")
    if not _is_int(axes.seeds) or not 1 <= axes.seeds <= MAX_SEEDS:
        raise ConfigError(
            f"seeds must be an integer from 1 to {MAX_SEEDS:,}; received {axes.seeds!r}")
    if axes.seed_design == "factorial" and not 2 <= axes.seeds <= MAX_FACTORIAL_SEEDS:
        raise ConfigError(
            f"seeds must be from 2 to {MAX_FACTORIAL_SEEDS} with seed_design factorial (k init "
            f"x k order seeds: one of each has no variance to split, and k x k runs per cell "
            f"grow fast); received {axes.seeds!r}")
    if not _is_int(axes.base_seed) or axes.base_seed < 0:
        raise ConfigError(f"base_seed must be an integer >= 0; received {axes.base_seed!r}")
    if not isinstance(axes.data_per_run, bool):
        raise ConfigError(f"data_per_run must be true or false; received {axes.data_per_run!r}")
    if axes.data_per_run and axes.engine == "batched":
        # The batched engine stacks seeds over one shared dataset.
        raise ConfigError("data_per_run needs engine per-run; received engine 'batched'")
    target = axes.target
    if not _is_number(target) or not 0 < target <= 1:
        raise ConfigError(f"target must be a number in (0, 1]; received {target!r}")


# ---------------------------------------------------------------------------------------------
# Parsing flags and TOML files


def parse_list(option: str, text: str, kind: type) -> tuple[Any, ...]:
    """Split a comma-separated flag value and convert each item, or raise ConfigError.

    A value listed twice is refused (also as "0.1,0.10"): it would train or compare the
    same thing twice and give duplicate rows.
    """
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        raise ConfigError(f"{option} takes a comma-separated list; received {text!r}")
    values = _convert(option, text, items, kind)
    check_distinct(option, values, items)
    return values


def _convert(option: str, text: str, items: list[str], kind: type) -> tuple[Any, ...]:
    """The items of a flag value as ``kind``, or ConfigError naming what the flag takes."""
    try:
        if kind is tuple:  # hidden sizes: "3x4,8"
            return tuple(tuple(int(w) for w in item.lower().split("x")) for item in items)
        if kind is float:
            return tuple(float(item) for item in items)
        if kind is int:
            return tuple(int(item) for item in items)
    except ValueError:
        what = {tuple: "layer widths such as 3x4", float: "numbers", int: "integers"}[kind]
        raise ConfigError(f"{option} takes {what}; received {text!r}") from None
    return tuple(items)


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, list | tuple) else (value,)


TOML_KEYS: dict[str, str] = {
    "preset": "the preset to start from",
    "name": "the experiment's name",
    "framework": "list of frameworks",
    "optimizer": "list of optimizers",
    "batch_size": "list of batch sizes",
    "lr": "list of learning rates",
    "hidden": "list of hidden layer widths, such as [[3, 4]]",
    "epochs": "list of epoch counts",
    "seeds": "number of seeds",
    "base_seed": "the base seed",
    "target": "the validation accuracy that counts as reached",
    "data_per_run": "draw the data per run",
    "engine": "training engine",
    "optimizer_impl": "Keras rmsprop/adam: native (Keras's formulas) or aligned (torch's)",
    "seed_design": "independent, or factorial (seeds x seeds runs per cell)",
}


def load_toml(path: Path) -> dict[str, Any]:
    """Read a config file; unknown keys and malformed files raise ConfigError."""
    try:
        with path.open("rb") as fh:
            config = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:  # a directory, no permission
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(config) - set(TOML_KEYS))
    if unknown:
        raise ConfigError(
            f"config file {path} has unknown key {unknown[0]!r}; "
            f"allowed keys are {', '.join(TOML_KEYS)}"
        )
    return config


def apply_overrides(axes: Axes, overrides: Mapping[str, Any]) -> Axes:
    """Replace the axes named in ``overrides`` (None values are ignored).

    Overriding ``optimizer`` or ``batch_size`` turns an explicit (optimizer, batch) pair list back
    into a full product, keeping the preset's values on the axis not overridden.
    """
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in TOML_KEYS:
            raise ConfigError(f"unknown setting {key!r}; allowed are {', '.join(TOML_KEYS)}")
        if value is None or key in ("preset", "name"):
            continue
        if key == "hidden":
            items = value if isinstance(value, list | tuple) else [value]
            if items and not any(isinstance(item, list | tuple) for item in items):
                items = [items]  # [3, 4]: one architecture
            # [[3, 4], 8]: two architectures, the second with one layer; validate() checks widths.
            changes[key] = tuple(tuple(h) if isinstance(h, list | tuple) else (h,) for h in items)
        elif key in AXES:
            changes[key] = _as_tuple(value)
        else:
            changes[key] = value
    if changes.get("data_per_run") and "engine" not in changes:
        # The batched engine stacks seeds over one dataset; data per run needs runs one by one.
        changes["engine"] = "per-run"
    if axes.pairs is not None and {"optimizer", "batch_size"} & set(changes):
        optimizers = tuple(dict.fromkeys(o for o, _ in axes.pairs))
        batches = tuple(dict.fromkeys(b for _, b in axes.pairs))
        changes.setdefault("optimizer", optimizers)
        changes.setdefault("batch_size", batches)
        changes["pairs"] = None
    elif axes.pairs is not None:
        changes["pairs"] = axes.pairs
    return replace(axes, **changes)


def build_experiment(
    preset: str | None = None,
    config: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Experiment:
    """Preset, then TOML file, then flags: each later source overrides the earlier ones."""
    file_values = load_toml(config) if config is not None else {}
    preset = preset or file_values.get("preset") or "grid"
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ConfigError(f"preset must be one of {', '.join(PRESETS)}; received {preset!r}")
    axes = apply_overrides(PRESETS[preset], file_values)
    axes = apply_overrides(axes, overrides or {})
    name = (overrides or {}).get("name")
    if name is None:
        name = file_values.get("name", preset)
    check_name(name)
    return expand(name, axes)


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_name(name: object) -> None:
    """An experiment's name becomes a directory name (results/NAME, reports/NAME)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            "name must be 1 to 100 letters, digits, '.', '_' or '-', starting with a letter "
            f"or digit (it names the results and report directories); received {name!r}")
