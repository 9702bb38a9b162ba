"""Speed benchmarks: what each timed case is, and their JSON -> tidy tables -> Markdown.

The suites in ``benchmarks/`` time training with pytest-benchmark and write JSON files
(``--benchmark-json``); torch and TensorFlow never share a process, so there is one file per
suite (``bench-torch.json``, ``bench-keras.json``). This module reads any number of them as one
table (:func:`load_benchmarks`: that is the merge step), derives per-step, per-epoch and
seed-steps-per-second figures, the ratios of Lightning and Keras to the plain torch loop, and
writes the report's "Speed" section (:func:`speed_markdown`). It imports numpy and pandas only.

Each benchmark is one :class:`BenchCase`, written to the JSON's ``extra_info`` by
:meth:`BenchCase.extra_info` and read back from there:

- ``train``: one call trains ``epochs`` epochs of a run built and warmed up outside the call
  (``warmup_epochs`` epochs, which hold the Trainer's start-up and Keras's tracing); each epoch
  is its ``steps_per_epoch`` updates plus validation. Per step = time / (epochs * steps per
  epoch); seed-steps per second = seeds * steps / time.
- ``setup``: one call builds a fresh run (model, optimizer, Trainer or ``compile``, input
  pipeline) and trains its warm-up epochs, start-up and tracing included.

Times are pytest-benchmark's statistics over rounds, each round a fresh model and optimizer:
the median and its quartiles Q1 and Q3 as pytest-benchmark computes them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from xorbench.data import N_TRAIN, steps_per_epoch
from xorbench.grid import Cell
from xorbench.model import DEFAULT_HIDDEN
from xorbench.optimizers import OPTIMIZERS

logger = logging.getLogger(__name__)

# The plain PyTorch loop (xorbench.adapters.torch_loop) is the reference of every ratio.
REFERENCE = "torch"
SPEED_FRAMEWORKS: tuple[str, ...] = (REFERENCE, "lightning", "keras")
ENGINES: tuple[str, ...] = ("per-run", "batched")
KINDS: tuple[str, ...] = ("train", "setup")
# The file names the report picks up by itself from a results directory.
BENCH_GLOB = "bench*.json"
# The case keys: one benchmark per combination in a set of files.
CASE_KEYS: list[str] = ["kind", "engine", "optimizer", "batch_size", "seeds", "framework"]
_LABELS: dict[str, str] = {
    REFERENCE: "torch (plain loop)",
    "lightning": "Lightning",
    "keras": "Keras",
}


class BenchFileError(ValueError):
    """A benchmark JSON file that cannot be read; the message names the file."""


@dataclass(frozen=True)
class BenchCase:
    """One timed benchmark: what is trained, how many epochs, and which call is timed.

    Attributes
    ----------
    kind
        ``"train"`` (the timed epochs of a warmed-up run) or ``"setup"`` (build and warm-up).
    framework
        ``"torch"`` (the plain loop), ``"lightning"`` or ``"keras"``.
    engine
        ``"per-run"`` (one seed per model) or ``"batched"`` (all seeds in one model).
    optimizer, batch_size, lr, hidden
        The cell trained.
    seeds
        Seeds trained by one call: 1 for the per-run engine.
    epochs
        Epochs in the timed call of a ``train`` case; 0 for ``setup``.
    warmup_epochs
        Epochs trained before the timed call (``train``) or inside it (``setup``).
    """

    kind: str
    framework: str
    engine: str
    optimizer: str
    batch_size: int
    seeds: int = 1
    epochs: int = 1
    warmup_epochs: int = 1
    lr: float = 0.05
    hidden: tuple[int, ...] = DEFAULT_HIDDEN

    def __post_init__(self) -> None:
        for name, value, allowed in [
            ("kind", self.kind, KINDS),
            ("framework", self.framework, SPEED_FRAMEWORKS),
            ("engine", self.engine, ENGINES),
            ("optimizer", self.optimizer, OPTIMIZERS),
        ]:
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; received {value!r}")
        if self.engine == "per-run" and self.seeds != 1:
            raise ValueError(f"the per-run engine trains 1 seed per call; received {self.seeds}")

    @property
    def steps_per_epoch(self) -> int:
        """Updates per epoch: ceil(150 / batch size)."""
        return steps_per_epoch(N_TRAIN, self.batch_size)

    @property
    def steps(self) -> int:
        """Updates in the timed call of a ``train`` case."""
        return self.epochs * self.steps_per_epoch

    @property
    def cell(self) -> Cell:
        """The cell a run of this case trains: warm-up and timed epochs (at least one) in all."""
        total = self.warmup_epochs + max(self.epochs, 1)
        return Cell(self.framework, self.optimizer, self.batch_size, self.lr, total, self.hidden)

    @property
    def id(self) -> str:
        """A short unique name such as ``lightning-batched-adam-b32-s10``."""
        seeds = f"-s{self.seeds}" if self.engine == "batched" else ""
        return f"{self.framework}-{self.engine}-{self.optimizer}-b{self.batch_size}{seeds}"

    @property
    def group(self) -> str:
        """The pytest-benchmark group: kind, engine and batch size."""
        if self.kind == "setup":
            return f"setup {self.engine}"
        return f"train {self.engine}, batch {batch_text(self.batch_size)}"

    def extra_info(self) -> dict[str, Any]:
        """The case as JSON-ready ``extra_info``."""
        return {
            "kind": self.kind,
            "framework": self.framework,
            "engine": self.engine,
            "optimizer": self.optimizer,
            "batch_size": self.batch_size,
            "seeds": self.seeds,
            "epochs": self.epochs,
            "warmup_epochs": self.warmup_epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "steps": self.steps,
            "lr": self.lr,
            "hidden": "x".join(map(str, self.hidden)),
        }


def batch_text(batch_size: int) -> str:
    """The batch size as shown to readers: the whole training set is "full (150)"."""
    return f"full ({N_TRAIN})" if int(batch_size) == N_TRAIN else str(int(batch_size))


def derived_figures(case: BenchCase, median_s: float, q1_s: float, q3_s: float) -> dict[str, float]:
    """Per-step and per-epoch milliseconds and seed-steps per second of a ``train`` case.

    A time's Q1 gives the highest rate and its Q3 the lowest, so ``seed_steps_per_s_low``
    comes from Q3. A ``setup`` case has no steps: an empty dict.
    """
    if case.kind != "train" or case.steps == 0:
        return {}
    out: dict[str, float] = {}
    for name, seconds in (("median", median_s), ("q1", q1_s), ("q3", q3_s)):
        out[f"ms_per_step_{name}"] = 1e3 * seconds / case.steps
        out[f"ms_per_epoch_{name}"] = 1e3 * seconds / case.epochs
    work = case.seeds * case.steps
    out["seed_steps_per_s_median"] = work / median_s
    out["seed_steps_per_s_low"] = work / q3_s
    out["seed_steps_per_s_high"] = work / q1_s
    return out


# ---------------------------------------------------------------------------------------------
# Reading pytest-benchmark JSON


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchFileError(f"benchmark file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BenchFileError(f"benchmark file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise BenchFileError(
            f"benchmark file {path} has no 'benchmarks' list: is it pytest-benchmark's "
            "--benchmark-json output?"
        )
    return data


def _row(bench: Mapping[str, Any], source: Mapping[str, Any]) -> dict[str, Any] | None:
    """One tidy row of a benchmark, or None for a benchmark that is not an xorbench case."""
    extra = bench.get("extra_info") or {}
    stats = bench.get("stats") or {}
    try:
        case = BenchCase(
            kind=extra["kind"],
            framework=extra["framework"],
            engine=extra["engine"],
            optimizer=extra["optimizer"],
            batch_size=int(extra["batch_size"]),
            seeds=int(extra["seeds"]),
            epochs=int(extra["epochs"]),
            warmup_epochs=int(extra.get("warmup_epochs", 1)),
        )
        median, q1, q3 = (float(stats[key]) for key in ("median", "q1", "q3"))
    except (KeyError, TypeError, ValueError) as exc:
        logger.warning("%s: skipping %s, not an xorbench speed case (%s)",
                       source["source"], bench.get("fullname", "?"), exc)
        return None
    return {
        **source,
        "fullname": bench.get("fullname", ""),
        **{key: getattr(case, key) for key in CASE_KEYS},
        "epochs": case.epochs,
        "warmup_epochs": case.warmup_epochs,
        "steps_per_epoch": case.steps_per_epoch,
        "steps": case.steps,
        "rounds": int(stats.get("rounds", 0)),
        "warmup_rounds": int(extra.get("warmup_rounds", 0)),
        "median_s": median,
        "q1_s": q1,
        "q3_s": q3,
        "iqr_s": q3 - q1,
        "min_s": float(stats.get("min", math.nan)),
        "max_s": float(stats.get("max", math.nan)),
        "peak_rss_mib": float(extra.get("peak_rss_mib", math.nan)),
        "jit_compile": extra.get("jit_compile"),
        **derived_figures(case, median, q1, q3),
    }


def _source(path: Path, data: Mapping[str, Any]) -> dict[str, Any]:
    """What a file says about where and when its benchmarks ran."""
    machine = data.get("machine_info") or {}
    cpu = machine.get("cpu") or {}
    commit = data.get("commit_info") or {}
    versions: dict[str, Any] = next(
        (b["extra_info"]["versions"] for b in data["benchmarks"]
         if isinstance(b.get("extra_info", {}).get("versions"), dict)),
        {},
    )
    return {
        "source": Path(path).name,
        "datetime": data.get("datetime", ""),
        "cpu": cpu.get("brand_raw") or machine.get("processor") or "unknown",
        "cpu_count": cpu.get("count"),
        "python": machine.get("python_version", ""),
        "commit": str(commit.get("id", ""))[:12] + ("-dirty" if commit.get("dirty") else ""),
        "versions": json.dumps(versions, sort_keys=True),
    }


def load_benchmarks(paths: Sequence[Path]) -> pd.DataFrame:
    """Read pytest-benchmark JSON files into one table, one row per benchmark.

    Parameters
    ----------
    paths
        ``--benchmark-json`` files, typically one per suite (torch, keras).

    Returns
    -------
    DataFrame
        One row per xorbench case: where it ran (``source`` file, ``datetime``, ``cpu``,
        ``commit``, library ``versions`` as JSON), the case keys, ``epochs``,
        ``steps_per_epoch``, ``steps``, ``rounds``, the call's ``median_s``, ``q1_s``,
        ``q3_s``, ``iqr_s``, ``min_s``, ``max_s`` in seconds, ``peak_rss_mib`` (the process's
        peak resident memory when the case finished), and for ``train`` cases the figures of
        :func:`derived_figures`. Benchmarks without xorbench's ``extra_info`` are skipped.

    Raises
    ------
    BenchFileError
        When a file is missing or not pytest-benchmark JSON, or when two files hold the same
        case (say, an old and a new run of one suite).
    """
    rows = []
    for path in paths:
        data = _read_json(Path(path))
        source = _source(Path(path), data)
        rows += [row for b in data["benchmarks"] if (row := _row(b, source)) is not None]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame

    repeated = frame[frame.duplicated(CASE_KEYS, keep=False)]
    if not repeated.empty:
        first = repeated.iloc[0]
        files = ", ".join(sorted(set(repeated["source"])))
        raise BenchFileError(
            f"the same benchmark case is in more than one file ({files}), e.g. "
            f"{first['kind']} {first['framework']} {first['engine']} {first['optimizer']} "
            f"batch {first['batch_size']}: pass one run of each suite"
        )
    return _ordered(frame)


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in reading order: kind, engine, optimizer, batch, seeds, torch then Lightning, Keras."""
    rank = {
        "kind": KINDS, "engine": ENGINES, "optimizer": OPTIMIZERS, "framework": SPEED_FRAMEWORKS,
    }
    ranked = frame.assign(**{
        f"_{key}": frame[key].map({name: i for i, name in enumerate(order)})
        for key, order in rank.items()
    })
    keys = ["_kind", "_engine", "_optimizer", "batch_size", "seeds", "_framework"]
    ordered = ranked.sort_values(keys, kind="stable").drop(columns=[f"_{k}" for k in rank])
    return ordered.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Ratios to the plain torch loop


def overhead_ratios(frame: pd.DataFrame) -> pd.DataFrame:
    """Time per step of each framework over the plain torch loop's, case by case.

    Parameters
    ----------
    frame
        :func:`load_benchmarks` output.

    Returns
    -------
    DataFrame
        One row per ``train`` case of Lightning or Keras whose plain-torch counterpart (same
        engine, optimizer, batch size and seeds) was measured: the case keys, ``ratio`` (median
        over median), and the range ``ratio_low`` = Q1 / torch's Q3 to ``ratio_high`` = Q3 /
        torch's Q1. A ratio of 2 means twice the plain loop's time per step.
    """
    columns = [*CASE_KEYS, "ratio", "ratio_low", "ratio_high"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    train = frame[frame["kind"] == "train"]
    keys = ["engine", "optimizer", "batch_size", "seeds"]
    per_step = ["ms_per_step_median", "ms_per_step_q1", "ms_per_step_q3"]
    reference = train[train["framework"] == REFERENCE][[*keys, *per_step]]
    merged = train[train["framework"] != REFERENCE].merge(reference, on=keys, suffixes=("", "_ref"))

    # Per step, so that the ratio holds even where the two timed calls trained different epochs.
    out = merged[CASE_KEYS].copy()
    out["ratio"] = merged["ms_per_step_median"] / merged["ms_per_step_median_ref"]
    out["ratio_low"] = merged["ms_per_step_q1"] / merged["ms_per_step_q3_ref"]
    out["ratio_high"] = merged["ms_per_step_q3"] / merged["ms_per_step_q1_ref"]
    return out.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Tables as shown in the report


def _number(value: float) -> str:
    """Three significant digits, trailing zeros kept: 0.598, 1.00, 89.7, 151."""
    if not math.isfinite(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:#.3g}".rstrip(".")


def _interval(median: float, low: float, high: float) -> str:
    if not math.isfinite(median):
        return "n/a"
    return f"{_number(median)} [{_number(low)}, {_number(high)}]"


def _rate(median: float, low: float, high: float) -> str:
    if not math.isfinite(median):
        return "n/a"
    return f"{median:,.0f} [{low:,.0f}, {high:,.0f}]"


def speed_table(frame: pd.DataFrame, engine: str) -> pd.DataFrame:
    """The ``train`` cases of ``engine`` as text: torch's row first, then Lightning and Keras.

    Every (optimizer, batch size, seeds) present gets a row per framework, "not measured" where
    a file is missing, so Lightning and Keras always stand beside the plain loop (F6).
    """
    train = frame[(frame["kind"] == "train") & (frame["engine"] == engine)]
    if train.empty:
        return pd.DataFrame()
    train = train.merge(overhead_ratios(train), on=CASE_KEYS, how="left")
    rows = []
    for _, group in train.groupby(["optimizer", "batch_size", "seeds"], sort=False):
        first = group.iloc[0]
        by_framework = {str(row["framework"]): row for _, row in group.iterrows()}
        for framework in SPEED_FRAMEWORKS:
            head = {
                "optimizer": first["optimizer"],
                "batch": batch_text(first["batch_size"]),
                "seeds": str(first["seeds"]),
                "framework": _LABELS[framework],
            }
            row = by_framework.get(framework)
            rows.append({**head, **(_NOT_MEASURED if row is None else _speed_cells(row))})
    table = pd.DataFrame(rows)
    if engine == "per-run":
        table = table.drop(columns=["seeds", _RATE])
    return table


_STEP, _EPOCH = "ms / step, median [Q1, Q3]", "ms / epoch, median [Q1, Q3]"
_RATE, _RATIO = "seed-steps/s, median [low, high]", "x torch, median [low, high]"
_NOT_MEASURED = {_STEP: "not measured", _EPOCH: "", _RATE: "", _RATIO: ""}


def _speed_cells(row: pd.Series) -> dict[str, str]:
    """The timing columns of one measured row of a speed table."""
    if row["framework"] == REFERENCE:
        ratio = "1 (reference)"
    elif math.isfinite(row["ratio"]):
        ratio = f"{row['ratio']:.2f} [{row['ratio_low']:.2f}, {row['ratio_high']:.2f}]"
    else:
        ratio = "n/a (torch not measured)"
    return {
        _STEP: _interval(row["ms_per_step_median"], row["ms_per_step_q1"], row["ms_per_step_q3"]),
        _EPOCH: _interval(
            row["ms_per_epoch_median"], row["ms_per_epoch_q1"], row["ms_per_epoch_q3"]
        ),
        _RATE: _rate(row["seed_steps_per_s_median"], row["seed_steps_per_s_low"],
                     row["seed_steps_per_s_high"]),
        _RATIO: ratio,
    }


def setup_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The ``setup`` cases as text: build plus warm-up epochs, in milliseconds."""
    setup = frame[frame["kind"] == "setup"]
    return pd.DataFrame({
        "engine": setup["engine"],
        "framework": setup["framework"].map(_LABELS),
        "optimizer": setup["optimizer"],
        "batch": setup["batch_size"].map(batch_text),
        "seeds": setup["seeds"].astype(str),
        "warm-up epochs": setup["warmup_epochs"].astype(str),
        "ms, median [Q1, Q3]": [
            _interval(1e3 * m, 1e3 * lo, 1e3 * hi)
            for m, lo, hi in zip(setup["median_s"], setup["q1_s"], setup["q3_s"], strict=True)
        ],
    })


def memory_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Peak resident memory of each benchmark process (one JSON file per process)."""
    rows = []
    for source, group in frame.groupby("source", sort=True):
        frameworks = [_LABELS[f] for f in SPEED_FRAMEWORKS if f in set(group["framework"])]
        peak = group["peak_rss_mib"].max()
        rows.append({
            "file (one process)": str(source),
            "frameworks": ", ".join(frameworks),
            "benchmarks": str(len(group)),
            "peak RSS, MiB": f"{peak:.0f}" if math.isfinite(peak) else "not recorded",
        })
    return pd.DataFrame(rows)


def _markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "None measured."
    return str(table.to_markdown(index=False, disable_numparse=True))


def _where(frame: pd.DataFrame) -> str:
    """Machine, date, commit and versions of the runs, one line each."""
    lines = []
    for _, row in frame.drop_duplicates("source").iterrows():
        versions = json.loads(row["versions"]) or {}
        shown = ", ".join(
            f"{name} {versions[name]}"
            for name in ("python", "torch", "lightning", "keras", "tensorflow-cpu", "tensorflow")
            if versions.get(name)
        )
        cores = f", {row['cpu_count']} cores" if row["cpu_count"] else ""
        lines.append(f"  - `{row['source']}`: {row['datetime']}, {row['cpu']}{cores}, "
                     f"commit {row['commit'] or 'unknown'}; {shown or 'versions not recorded'}")
    return "\n".join(lines)


def _jit_note(frame: pd.DataFrame) -> str:
    """Which Keras engines compiled with XLA, from the recorded ``jit_compile``."""
    keras_rows = frame[(frame["framework"] == "keras") & frame["jit_compile"].notna()]
    if keras_rows.empty:
        return ""
    parts = []
    for engine in ENGINES:
        flags = set(keras_rows.loc[keras_rows["engine"] == engine, "jit_compile"])
        if flags:
            state = "on" if flags == {True} else "off" if flags == {False} else "mixed"
            parts.append(f"{engine} {state}")
    return f" Keras XLA (`jit_compile`): {', '.join(parts)}."


def _count_text(counts: pd.Series, noun: str) -> str:
    """'5 timed rounds', '1 timed round' or '5 to 9 timed rounds'."""
    low, high = int(counts.min()), int(counts.max())
    plural = "" if high == 1 else "s"
    span = f"{low}" if low == high else f"{low} to {high}"
    return f"{span} {noun}{plural}"


def speed_markdown(frame: pd.DataFrame) -> str:
    """The report's "Speed" section for benchmarks read by :func:`load_benchmarks`."""
    if frame.empty:
        return "## Speed\n\nThe benchmark files hold no xorbench speed case."
    round_text = _count_text(frame["rounds"], "timed round")
    warmup_text = _count_text(frame["warmup_rounds"], "untimed warm-up round")
    sections = [
        "## Speed",
        f"""Time of training in each framework, from the pytest-benchmark suites in `benchmarks/`.

- **How.** pytest-benchmark's pedantic mode,
  {round_text} per case after {warmup_text}.
  Every round builds a fresh model and optimizer and trains one warm-up epoch before the clock
  starts, so Lightning's Trainer start-up and Keras's tracing (and XLA compilation) stay out
  of the timed call (they are timed on their own, under *Setup*). The clock covers a fixed
  number of epochs, each with its validation. One thread per framework.
- **Figures.** Per step = call time / (epochs x steps per epoch); per epoch = call time /
  epochs. Brackets hold the quartiles Q1 and Q3 over rounds.
- **x torch.** The framework's median time per step over the plain PyTorch loop's (the same
  network, optimizer and batch order, without Lightning): 2 means twice the plain loop's time.
  Its range runs from Q1 / Q3(torch) to Q3 / Q1(torch).
- **Measured** (one process per file):

{_where(frame)}""",
        "### Per-run engine: one seed per model\n\n" + _markdown(speed_table(frame, "per-run")),
        "### Seed-batched engine: all seeds in one model\n\n"
        "Seed-steps/s = seeds x steps / call time; *low* and *high* come from the call's Q3 and "
        "Q1. The torch and Lightning batched engines pad the seed axis to a multiple of 32 rows "
        "(trained and not reported); Keras does not pad.\n\n"
        + _markdown(speed_table(frame, "batched")),
        "### Setup, timed on its own\n\nOne call builds a fresh run (model, optimizer, Trainer or "
        "`compile`, data pipeline) and trains its warm-up epochs: Lightning's Trainer start-up, "
        "Keras's tracing (and XLA compilation where `jit_compile` is on) and the first epoch."
        f"{_jit_note(frame)}\n\n"
        + _markdown(setup_table(frame)),
        "### Peak memory\n\nThe peak resident set size of each benchmark process "
        "(`getrusage` `ru_maxrss`): the whole process's peak, over all of its benchmarks, not "
        "a figure per benchmark.\n\n" + _markdown(memory_table(frame)),
    ]
    return "\n\n".join(sections)


def find_bench_files(results_dir: Path) -> list[Path]:
    """The benchmark JSON files a results directory holds (``bench*.json``), sorted."""
    return sorted(Path(results_dir).glob(BENCH_GLOB))

