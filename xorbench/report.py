"""A results directory -> a Markdown report with tables and figures.

::

    OUT/report.md              summary per cell, failures, figures with captions, setup
    OUT/figures/val_loss.png   median and interquartile band over seeds, against epoch
    OUT/figures/val_acc.png
    OUT/figures/final_accuracy.png    every seed's final validation accuracy, with the median
    OUT/figures/decision_regions.png  one representative seed per framework x optimizer

Every number is computed here with pandas from the tables, deterministically: no bootstrap, no
random jitter, so the same results give byte-identical files (field case F9). Curves are drawn
against the epoch, never the global step (F11). Runs that never reach the target, diverge or fail
stay in every count and figure (F1, F2). Nothing here imports a framework: decision regions come
from stored weights through the numpy forward pass of :mod:`xorbench.model`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pyarrow import ArrowException

from xorbench import results, stats, stats_plots
from xorbench.adapters.base import FRAMEWORKS
from xorbench.bench import find_bench_files, load_benchmarks, speed_markdown
from xorbench.data import N_TRAIN, make_xor
from xorbench.grid import Cell
from xorbench.optimizers import OPTIMIZERS
from xorbench.parity import (
    ParityTables,
    made_with_markdown,
    parity_markdown,
    read_parity,
    seed_count,
    seeds_text,
)
from xorbench.regions import WeightsClassifier, plot_regions
from xorbench.results import CELL_KEYS, ResultsDirError

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.typing import LineStyleType

logger = logging.getLogger(__name__)

REPORT = "report.md"
FIGURES = "figures"
DPI = 100
QUARTILES: tuple[float, float, float] = (0.25, 0.5, 0.75)
# matplotlib writes its own version into every PNG ("Software"); without it the bytes depend only
# on the drawing, so two reports of the same results are identical files.
PNG_METADATA: dict[str, str | None] = {"Software": None}
# Font sizes for panels of about 3 x 2.4 inches, over matplotlib's default style and seaborn's
# "whitegrid": a user's matplotlibrc cannot change the figures.
RC: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
}
PANEL_SIZE = (3.2, 2.4)  # inches per facet
REGION_SIZE = 3.0  # inches per decision-region panel
# mlxtend evaluates predict on a grid with one point per pixel of the whole figure (at the
# figure's own dpi) in each panel; a lower figure dpi keeps about this many points per panel
# axis, however many panels there are. The PNG is still written at DPI.
REGION_POINTS = 300
ACCURACY_COLUMNS = 2  # panels per row of the final-accuracy figure
MAX_SPREAD_STEP = 0.06  # x units between two seeds with equal accuracy in the strip figure
RUN_NEEDS: tuple[str, ...] = (
    "run_id", *CELL_KEYS, "seed", "data_seed", "status", "error", "final_val_acc",
    "epochs_to_target", "epochs_trained", "wall_s",
)
HISTORY_NEEDS: tuple[str, ...] = ("run_id", *CELL_KEYS, "seed", "epoch", "val_loss", "val_acc")
METRIC_LABELS: dict[str, str] = {"val_loss": "validation loss", "val_acc": "validation accuracy"}
FIGURE_NAMES: frozenset[str] = frozenset(
    {"val_loss.png", "val_acc.png", "final_accuracy.png", "decision_regions.png"}
)


# ---------------------------------------------------------------------------------------------
# Reading the results directory


@dataclass(frozen=True)
class Results:
    """The tables of one results directory; history and weights are None when absent.

    ``missing_cells`` lists the experiment's cells without results when the run has not
    finished (it was interrupted, or is still running); the tables hold the finished cells.
    """

    manifest: dict[str, Any]
    runs: pd.DataFrame
    history: pd.DataFrame | None
    weights: pd.DataFrame | None
    missing_cells: tuple[str, ...] = ()

    @property
    def experiment(self) -> dict[str, Any]:
        """The experiment's config as recorded in the manifest (empty if missing)."""
        experiment: dict[str, Any] = self.manifest.get("experiment") or {}
        return experiment

    @property
    def target(self) -> float:
        """The validation accuracy that counts as reaching the target."""
        if "target" in self.experiment:
            return float(self.experiment["target"])
        if "target" in self.runs.columns and self.runs["target"].notna().any():
            return float(self.runs["target"].dropna().iloc[0])
        return 0.9

    @property
    def n_train(self) -> int:
        """The size of the training set: the batch size of full-batch gradient descent."""
        return int(self.experiment.get("n_train", N_TRAIN))


def _check_columns(frame: pd.DataFrame, needed: Sequence[str], name: str) -> None:
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise ValueError(
            f"{name} lacks column(s) {', '.join(missing)}; "
            f"it has {', '.join(map(str, frame.columns))}"
        )


def _read_optional(path: Path, what: str) -> pd.DataFrame | None:
    if not path.is_file():
        logger.warning("%s not found; the report leaves out %s", path, what)
        return None
    return pd.read_parquet(path)


def load_results(results_dir: Path) -> Results:
    """Read a results directory written by the runner, finished or not.

    A directory whose run has not finished (no end time in its manifest) is read from its
    finished cells' parts, and the cells still missing are named; nothing in it is changed.

    Raises
    ------
    ResultsDirError
        When ``results_dir`` has no manifest, or no cell has finished yet.
    ValueError
        When a table lacks a column the report needs.
    """
    if not results.is_results_dir(results_dir):
        raise ResultsDirError(
            f"{results_dir} is not an xorbench results directory: it has no {results.MANIFEST}"
        )
    manifest = results.read_manifest(results_dir)
    if manifest.get("finished") is None or not (results_dir / results.RUNS).is_file():
        return _load_partial(results_dir, manifest)
    try:
        runs = results.read_runs(results_dir)
        history = _read_optional(results_dir / results.HISTORY, "the curves")
        weights = _read_optional(results_dir / results.WEIGHTS, "the decision regions")
    except (OSError, ArrowException) as exc:  # truncated or overwritten by something else
        raise ResultsDirError(
            f"a table in {results_dir} cannot be read ({exc}); `xorbench run` with the same "
            "config rebuilds the tables from the finished cells") from None
    _check_columns(runs, RUN_NEEDS, results.RUNS)
    if runs.empty:
        raise ValueError(f"{results_dir / results.RUNS} has no rows: there is nothing to report")
    if history is not None:
        _check_columns(history, HISTORY_NEEDS, results.HISTORY)
    return Results(manifest, runs, history, weights)


def _load_partial(results_dir: Path, manifest: dict[str, Any]) -> Results:
    """The finished cells of a run that has not finished, in grid order, and the missing ones."""
    planned = [Cell(**{**cell, "hidden": tuple(cell["hidden"])}).key
               for cell in (manifest.get("experiment") or {}).get("cells", [])]
    readable = results.readable_cells(results_dir)
    finished = [key for key in planned if key in readable]
    if not finished:
        raise ResultsDirError(
            f"{results_dir} has no finished cell yet ({len(planned)} planned): nothing to "
            "report; run `xorbench run` with the same config to train them"
        )
    runs, history, weights = results.read_parts(results_dir, finished)
    _check_columns(runs, RUN_NEEDS, results.RUNS)
    _check_columns(history, HISTORY_NEEDS, results.HISTORY)
    missing = tuple(key for key in planned if key not in readable)
    logger.warning("%s is not finished: reporting %d of %d cells", results_dir, len(finished),
                   len(planned))
    return Results(manifest, runs, history, weights, missing_cells=missing)


# ---------------------------------------------------------------------------------------------
# Ordering and labels


def _rank(values: pd.Series, known: Sequence[str]) -> pd.Series:
    """Position of each value in ``known``; unknown values after, in alphabetical order."""
    extra = sorted(set(values) - set(known))
    order = {name: i for i, name in enumerate([*known, *extra])}
    return values.map(order)


def in_cell_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by optimizer, batch size, lr, hidden, epochs, framework (then seed).

    Cells that differ only by framework end up next to each other, for comparison.
    """
    keys = ["_optimizer", "batch_size", "lr", "hidden", "epochs", "_framework"]
    keys += ["seed"] if "seed" in frame.columns else []
    ranked = frame.assign(
        _optimizer=_rank(frame["optimizer"], OPTIMIZERS),
        _framework=_rank(frame["framework"], FRAMEWORKS),
    )
    ordered = ranked.sort_values(keys, kind="stable")
    return ordered.drop(columns=["_optimizer", "_framework"]).reset_index(drop=True)


def _ordered(values: pd.Series, known: Sequence[str]) -> list[str]:
    present = set(values)
    return [*[v for v in known if v in present], *sorted(present - set(known))]


def batch_label(batch_size: int, n_train: int = N_TRAIN) -> str:
    """The batch size as shown to readers: full-batch GD is "full (150)"."""
    return f"full ({n_train})" if int(batch_size) == n_train else str(int(batch_size))


def _variant_keys(frame: pd.DataFrame) -> list[str]:
    """The cell keys besides framework, optimizer and batch size that take several values."""
    return [key for key in ("lr", "hidden", "epochs") if frame[key].nunique() > 1]


def _variant_label(row: pd.Series, keys: Sequence[str]) -> str:
    names = {"lr": "lr {:g}", "hidden": "hidden {}", "epochs": "{} epochs"}
    return ", ".join(names[key].format(row[key]) for key in keys)


def _seed_count_text(runs: pd.DataFrame, unit: str = "seed") -> str:
    """'10 seeds', or '5 to 10 seeds per cell' when cells have different numbers of seeds."""
    counts = runs.groupby(CELL_KEYS, sort=False).size()
    low, high = int(counts.min()), int(counts.max())
    return f"{high} {unit}s" if low == high else f"{low} to {high} {unit}s per cell"


def _unit(res: Results) -> str:
    """What one point of a cell's spread is: a seed, or in a factorial design a run.

    A factorial cell's k x k runs share init and order seeds; calling them k x k seeds would
    overstate how many independent draws they are.
    """
    return "run" if res.experiment.get("seed_design") == "factorial" else "seed"


# ---------------------------------------------------------------------------------------------
# Summary table


def median_epochs_to_target(epochs: pd.Series) -> float:
    """The first epoch by which at least half of the runs had reached the target, or inf.

    A run that never reached the target (an empty ``epochs_to_target``: stuck, diverged or
    failed) counts as reaching it later than every run that did, so no run is dropped. The
    result is the median of that ordering (for an even number of runs the lower middle value);
    it is ``inf`` ("not reached") when fewer than half of the runs reached the target.

    Parameters
    ----------
    epochs
        Epochs to target of the seeds of one cell, nullable; shape (seeds,).
    """
    needed = math.ceil(len(epochs) / 2)
    reached = np.sort(epochs.dropna().to_numpy(dtype=float))
    if needed == 0 or len(reached) < needed:
        return math.inf
    return float(reached[needed - 1])


def _finite(values: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce").astype(float)
    return numbers[np.isfinite(numbers)]


def _summarise_cell(cell: pd.DataFrame) -> dict[str, Any]:
    """Counts, quartiles and medians of one cell's runs; see :func:`cell_summary`."""
    acc = _finite(cell["final_val_acc"])
    q1, median, q3 = (acc.quantile(q) if len(acc) else math.nan for q in QUARTILES)
    wall = _finite(cell["wall_s"])
    return {
        "seeds": len(cell),
        "reached": int(cell["epochs_to_target"].notna().sum()),
        "acc_q1": q1,
        "acc_median": median,
        "acc_q3": q3,
        "epochs_median": median_epochs_to_target(cell["epochs_to_target"]),
        "wall_median": wall.median() if len(wall) else math.nan,
        "diverged": int((cell["status"] == "diverged").sum()),
        "failed": int((cell["status"] == "failed").sum()),
    }


def cell_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per cell, in cell order, with numbers (not text).

    Returns
    -------
    DataFrame
        The cell keys, then ``seeds``, ``reached`` (runs with an epoch to target),
        ``acc_q1``/``acc_median``/``acc_q3`` (final validation accuracy over the runs that have
        one, linear interpolation), ``epochs_median`` (:func:`median_epochs_to_target`),
        ``wall_median`` (seconds per run), ``diverged`` and ``failed`` (run counts).
    """
    ordered = in_cell_order(runs)
    rows = [
        {**dict(zip(CELL_KEYS, keys, strict=True)), **_summarise_cell(cell)}
        for keys, cell in ordered.groupby(CELL_KEYS, sort=False)
    ]
    return pd.DataFrame(rows)


def _accuracy_text(row: pd.Series) -> str:
    if not math.isfinite(row["acc_median"]):
        return "n/a"
    return f"{row['acc_median']:.2f} [{row['acc_q1']:.2f}, {row['acc_q3']:.2f}]"


def summary_table(runs: pd.DataFrame, *, n_train: int = N_TRAIN) -> pd.DataFrame:
    """The summary per cell as shown in the report: one row per cell, all columns text."""
    summary = cell_summary(runs)
    epochs = summary["epochs_median"]
    return pd.DataFrame(
        {
            "framework": summary["framework"],
            "optimizer": summary["optimizer"],
            "batch": [batch_label(b, n_train) for b in summary["batch_size"]],
            "lr": [f"{lr:g}" for lr in summary["lr"]],
            "hidden": summary["hidden"],
            "epochs": summary["epochs"].astype(int).astype(str),
            "seeds": summary["seeds"].astype(str),
            "reached target": [
                f"{r}/{n}" for r, n in zip(summary["reached"], summary["seeds"], strict=True)
            ],
            "final val acc, median [Q1, Q3]": summary.apply(_accuracy_text, axis=1),
            "median epochs to target": [
                f"{e:.0f}" if math.isfinite(e) else "not reached" for e in epochs
            ],
            "median wall s / run": [
                f"{w:.2f}" if math.isfinite(w) else "n/a" for w in summary["wall_median"]
            ],
            "diverged": summary["diverged"].astype(str),
            "failed": summary["failed"].astype(str),
        }
    )


def _one_line(text: Any, limit: int = 240) -> str:
    """A message fit for a Markdown table cell: one line, pipes escaped, at most ``limit``."""
    line = " ".join(str(text).split())
    if len(line) > limit:
        line = line[: limit - 1] + "…"
    return line.replace("|", "\\|")


def _run_keys_table(runs: pd.DataFrame, n_train: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "framework": runs["framework"],
            "optimizer": runs["optimizer"],
            "batch": [batch_label(b, n_train) for b in runs["batch_size"]],
            "lr": [f"{lr:g}" for lr in runs["lr"]],
            "hidden": runs["hidden"],
            "seed": runs["seed"].astype(int).astype(str),
        }
    )


def failed_table(runs: pd.DataFrame, *, n_train: int = N_TRAIN) -> pd.DataFrame:
    """The failed runs, in cell order, with their error message."""
    failed = in_cell_order(runs[runs["status"] == "failed"])
    table = _run_keys_table(failed, n_train)
    table["error"] = [_one_line(e) if isinstance(e, str) and e else "(no message)"
                      for e in failed["error"]]
    return table


def diverged_table(runs: pd.DataFrame, *, n_train: int = N_TRAIN) -> pd.DataFrame:
    """The diverged runs, in cell order, with the epoch they stopped at."""
    diverged = in_cell_order(runs[runs["status"] == "diverged"])
    table = _run_keys_table(diverged, n_train)
    table["stopped at epoch"] = diverged["epochs_trained"].astype(str)
    table["final val acc"] = [
        f"{a:.2f}" if math.isfinite(a) else "n/a"
        for a in pd.to_numeric(diverged["final_val_acc"]).astype(float)
    ]
    return table


# ---------------------------------------------------------------------------------------------
# Figures: common setup


@contextlib.contextmanager
def figure_context() -> Iterator[None]:
    """Draw with the Agg backend and a fixed style; restore the caller's backend and style.

    The backend is switched here, not at import, so importing xorbench never changes how a
    user's own figures are shown. Figures opened inside the context and still open at its end
    are closed.
    """
    import matplotlib
    import matplotlib.pyplot as plt
    import seaborn as sns

    previous = matplotlib.get_backend()
    switch = previous.lower() != "agg"
    if switch:
        plt.switch_backend("agg")
    before = set(plt.get_fignums())
    try:
        with plt.style.context(["default", sns.axes_style("whitegrid"), RC]):
            yield
    finally:
        # Figures left open by an error on the way are closed too; the caller's are kept.
        for number in sorted(set(plt.get_fignums()) - before):
            plt.close(number)
        if switch:
            plt.switch_backend(previous)


def framework_colors(frameworks: Sequence[str]) -> dict[str, Any]:
    """A fixed colour per framework, from seaborn's colour-blind palette."""
    import seaborn as sns

    palette = sns.color_palette("colorblind", max(len(FRAMEWORKS), len(frameworks)))
    names = [*FRAMEWORKS, *sorted(set(frameworks) - set(FRAMEWORKS))]
    return dict(zip(names, palette, strict=False))


def framework_widths(frameworks: Sequence[str]) -> dict[str, float]:
    """A line width per framework, widest first.

    Frameworks that agree exactly draw the same curve; the first one's wider line then shows
    as a coloured rim around the next one's, instead of disappearing under it.
    """
    names = _ordered(pd.Series(list(frameworks), dtype=object), FRAMEWORKS)
    return {name: max(2.6 - 1.2 * i, 0.8) for i, name in enumerate(names)}


def save_figure(fig: Figure, path: Path) -> None:
    """Write ``fig`` as PNG at a fixed DPI without metadata, atomically, and close it."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=DPI, metadata=PNG_METADATA)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    logger.info("wrote %s", path)


def _figure_legend(fig: Figure, handles: Sequence[Artist]) -> None:
    """A legend above the panels, in as many columns as fit the figure's width."""
    # About 0.06 inch per character at 8 points, plus the handle and padding.
    widest = max(0.6 + 0.06 * len(str(h.get_label())) for h in handles)
    ncols = max(1, min(len(handles), int(fig.get_figwidth() // widest)))
    fig.legend(handles=handles, loc="outside upper center", ncols=ncols, frameon=False)


def _new_figure(
    nrows: int, ncols: int, size: tuple[float, float], *, share: bool = False, dpi: int = DPI
) -> tuple[Figure, np.ndarray]:
    """A pyplot figure of ``nrows`` x ``ncols`` panels of ``size`` inches, plus a legend row."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(size[0] * ncols, size[1] * nrows + 0.6),
        dpi=dpi,
        squeeze=False,
        sharex=share,
        sharey=share,
        layout="constrained",
    )
    return fig, axes


# ---------------------------------------------------------------------------------------------
# Figure: curves over epochs


def curve_quantiles(history: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Median and quartiles of ``metric`` over seeds, per cell and epoch.

    Non-finite values (a diverged run's last epoch) are left out, so a late epoch may rest on
    fewer seeds; ``seeds`` counts the values used.

    Returns
    -------
    DataFrame
        The cell keys, ``epoch``, ``q1``, ``median``, ``q3`` and ``seeds``; one row per cell
        and epoch, sorted by cell and epoch.
    """
    values = pd.to_numeric(history[metric], errors="coerce").astype(float)
    frame = history[[*CELL_KEYS, "epoch"]].assign(value=values.where(np.isfinite(values)))
    grouped = frame.groupby([*CELL_KEYS, "epoch"], sort=True)["value"]
    quantiles = grouped.quantile(np.array(QUARTILES)).unstack()
    quantiles.columns = pd.Index(["q1", "median", "q3"])
    quantiles["seeds"] = grouped.count()
    return quantiles.reset_index()


def plot_curve_panel(
    quantiles: pd.DataFrame,
    *,
    ax: Axes | None = None,
    colors: dict[str, Any] | None = None,
    variant_keys: Sequence[str] = (),
    styles: dict[str, LineStyleType] | None = None,
    widths: dict[str, float] | None = None,
) -> Axes:
    """Draw each cell's median line and interquartile band against epoch.

    Parameters
    ----------
    quantiles
        Rows of :func:`curve_quantiles` for the cells of this panel.
    ax
        Axes to draw on; the current axes when None.
    colors
        Colour per framework; :func:`framework_colors` when None.
    variant_keys
        Cell keys (lr, hidden, epochs) that tell this panel's cells of one framework apart;
        each of their combinations gets its own line style.
    styles
        Line style per variant label; :func:`line_styles` of ``quantiles`` when None. Pass one
        mapping to every panel of a figure so that a style means the same everywhere.
    widths
        Line width per framework; :func:`framework_widths` when None.

    Returns
    -------
    Axes
        The axes drawn on; median lines have gid "median", bands gid "band".
    """
    import matplotlib.pyplot as plt

    ax = ax if ax is not None else plt.gca()
    colors = colors or framework_colors(list(quantiles["framework"].unique()))
    styles = styles or line_styles(quantiles, variant_keys)
    widths = widths or framework_widths(list(quantiles["framework"].unique()))
    for _, cell in quantiles.groupby(CELL_KEYS, sort=False):
        first = cell.iloc[0]
        style = styles[_variant_label(first, variant_keys)]
        color = colors[first["framework"]]
        epoch = cell["epoch"].to_numpy()
        band = ax.fill_between(
            epoch, cell["q1"].to_numpy(), cell["q3"].to_numpy(),
            color=color, alpha=0.25, linewidth=0,
        )
        band.set_gid("band")
        # A cell whose runs all failed has only epoch 0; a marker keeps that point visible.
        marker = "o" if len(epoch) == 1 else None
        (line,) = ax.plot(epoch, cell["median"].to_numpy(), color=color, linestyle=style,
                          lw=widths[first["framework"]], marker=marker, markersize=4)
        line.set_gid("median")
    return ax


def line_styles(
    quantiles: pd.DataFrame, variant_keys: Sequence[str]
) -> dict[str, LineStyleType]:
    """A line style per variant (lr, hidden, epochs combination), in order of appearance."""
    cycle: list[LineStyleType] = ["-", "--", ":", "-."]
    cells = quantiles.drop_duplicates(CELL_KEYS)
    labels = dict.fromkeys(_variant_label(row, variant_keys) for _, row in cells.iterrows())
    return {label: cycle[i % len(cycle)] for i, label in enumerate(labels)}


def _curve_legend(fig: Figure, colors: dict[str, Any], frameworks: Sequence[str],
                  styles: dict[str, LineStyleType], widths: dict[str, float]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Artist] = [
        Line2D([], [], color=colors[fw], lw=widths[fw], label=f"{fw}: median")
        for fw in frameworks
    ]
    handles += [Line2D([], [], color="black", linestyle=style, lw=1.4, label=label)
                for label, style in styles.items() if label]
    handles += [Patch(color="grey", alpha=0.25, label="band: interquartile range over seeds")]
    _figure_legend(fig, handles)


def curves_figure(runs: pd.DataFrame, history: pd.DataFrame, metric: str, *,
                  target: float, n_train: int = N_TRAIN) -> Figure:
    """Median and interquartile band of ``metric`` against epoch; optimizer rows x batch cols."""
    quantiles = in_cell_order(curve_quantiles(history, metric))
    optimizers = _ordered(quantiles["optimizer"], OPTIMIZERS)
    batches = sorted(int(b) for b in quantiles["batch_size"].unique())
    frameworks = _ordered(runs["framework"], FRAMEWORKS)
    colors = framework_colors(frameworks)
    widths = framework_widths(frameworks)
    variant_keys = _variant_keys(quantiles)
    styles = line_styles(quantiles, variant_keys)
    fig, axes = _new_figure(len(optimizers), len(batches), PANEL_SIZE, share=True)
    for (i, optimizer), (j, batch) in _grid(optimizers, batches):
        ax = axes[i, j]
        panel = quantiles[(quantiles["optimizer"] == optimizer)
                          & (quantiles["batch_size"] == batch)]
        _style_curve_axes(ax, metric, target, optimizer, batch_label(batch, n_train),
                          first_col=j == 0, last_row=i == len(optimizers) - 1)
        if panel.empty:
            _mark_empty(ax)
            continue
        plot_curve_panel(panel, ax=ax, colors=colors, variant_keys=variant_keys, styles=styles,
                         widths=widths)
    _curve_legend(fig, colors, frameworks, styles, widths)
    return fig


def _grid(rows: Sequence[Any], cols: Sequence[Any]) -> list[tuple[tuple[int, Any], ...]]:
    return [((i, r), (j, c)) for i, r in enumerate(rows) for j, c in enumerate(cols)]


def _mark_empty(ax: Axes, text: str = "no such cell") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def _style_curve_axes(ax: Axes, metric: str, target: float, optimizer: str, batch: str, *,
                      first_col: bool, last_row: bool) -> None:
    ax.set_title(f"{optimizer}, batch {batch}")
    if metric == "val_loss":
        # Losses of runs that learn XOR fall by orders of magnitude; a log axis keeps them apart.
        ax.set_yscale("log")
    else:
        ax.set_ylim(0.0, 1.02)
        ax.axhline(target, color="grey", linestyle="--", linewidth=0.8)
    if first_col:
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    if last_row:
        ax.set_xlabel("epoch")


# ---------------------------------------------------------------------------------------------
# Figure: final accuracy of every seed


def spread_offsets(values: np.ndarray, width: float, tolerance: float = 0.025) -> np.ndarray:
    """Sideways offsets that set equal (or nearly equal) values side by side, centred.

    A deterministic stand-in for random jitter (seaborn's stripplot jitters with numpy's global,
    unseeded generator): two drawings of the same data are the same picture. Values are taken in
    ascending order (stable); a value within ``tolerance`` of the first value of the current
    group joins it, so markers that would overlap are spread even when not exactly equal.

    Parameters
    ----------
    values
        The values of one group, shape (n,).
    width
        The widest the spread of one group may get, in x units.
    tolerance
        Values closer than this to a group's first value share the group, in y units.

    Returns
    -------
    ndarray
        Offsets of shape (n,), in the order of ``values``.
    """
    order = np.argsort(values, kind="stable")
    groups: list[list[int]] = []
    for index in order:
        if groups and values[index] - values[groups[-1][0]] <= tolerance:
            groups[-1].append(int(index))
        else:
            groups.append([int(index)])
    offsets = np.zeros(len(values))
    for members in groups:
        step = min(width / len(members), MAX_SPREAD_STEP)
        offsets[members] = (np.arange(len(members)) - (len(members) - 1) / 2) * step
    return offsets


def _x_labels(runs: pd.DataFrame, n_train: int) -> pd.Series:
    """The x category of each run in the strip figure: its batch size and other varying keys."""
    keys = _variant_keys(runs)
    return pd.Series(
        [
            "\n".join(filter(None, [batch_label(row["batch_size"], n_train),
                                    _variant_label(row, keys)]))
            for _, row in runs.iterrows()
        ],
        index=runs.index,
        dtype=object,
    )


def _draw_seeds(ax: Axes, x: float, cell: pd.DataFrame, color: Any, width: float) -> None:
    """One cell's seeds as points (diverged ones as crosses) and its median as a bar."""
    acc = pd.to_numeric(cell["final_val_acc"]).astype(float).to_numpy()
    shown = np.isfinite(acc)
    offsets = spread_offsets(acc[shown], width)
    diverged = (cell["status"] == "diverged").to_numpy()[shown]
    for marker, mask in (("o", ~diverged), ("X", diverged)):
        if mask.any():
            points = ax.scatter(x + offsets[mask], acc[shown][mask], s=18, marker=marker,
                                color=color, edgecolor="black", linewidth=0.4, zorder=3)
            points.set_gid("seeds")
    if not shown.any():
        ax.text(x, 0.02, "no final\naccuracy", ha="center", va="bottom", fontsize=7,
                color="grey")
        return
    # Under the points, so that a seed at the median stays visible.
    median = ax.scatter([x], [np.median(acc[shown])], s=400, marker="_", color="black",
                        linewidth=2, zorder=2.5)
    median.set_gid("median")


def plot_final_accuracy(
    runs: pd.DataFrame,
    *,
    ax: Axes | None = None,
    target: float | None = None,
    n_train: int = N_TRAIN,
    colors: dict[str, Any] | None = None,
) -> Axes:
    """Every seed's final validation accuracy, one column of points per cell, with its median.

    x: the cell's batch size (and lr, hidden, epochs where they vary); frameworks side by side.
    Seeds with equal accuracy are set side by side (:func:`spread_offsets`), so every seed is
    visible: a median alone hides bimodal seeds (field case F2). Runs without a final accuracy
    (failed) cannot be drawn.

    Returns
    -------
    Axes
        The axes drawn on; seed points have gid "seeds", median bars gid "median".
    """
    import matplotlib.pyplot as plt

    ax = ax if ax is not None else plt.gca()
    runs = in_cell_order(runs)
    frameworks = _ordered(runs["framework"], FRAMEWORKS)
    colors = colors or framework_colors(frameworks)
    labels = _x_labels(runs, n_train)
    categories = list(dict.fromkeys(labels))
    width = 0.8 / len(frameworks)
    for i, category in enumerate(categories):
        for j, framework in enumerate(frameworks):
            x = i + (j - (len(frameworks) - 1) / 2) * width
            for _, cell in runs[(labels == category) & (runs["framework"] == framework)].groupby(
                CELL_KEYS, sort=False
            ):
                _draw_seeds(ax, x, cell, colors[framework], 0.9 * width)
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(categories)), categories)
    ax.set_xlim(-0.6, len(categories) - 0.4)
    ax.set_ylim(-0.02, 1.04)
    return ax


def _accuracy_legend(fig: Figure, colors: dict[str, Any], frameworks: Sequence[str]) -> None:
    from matplotlib.lines import Line2D

    def point(label: str, marker: str, color: Any) -> Line2D:
        return Line2D([], [], linestyle="none", marker=marker, color=color,
                      markeredgecolor="black", markeredgewidth=0.4, label=label)

    handles = [point(f"{fw}: one seed", "o", colors[fw]) for fw in frameworks]
    handles += [point("diverged seed", "X", "white"),
                Line2D([], [], linestyle="none", marker="_", markersize=14, color="black",
                       markeredgewidth=2, label="median")]
    _figure_legend(fig, handles)


def final_accuracy_figure(runs: pd.DataFrame, *, target: float, n_train: int = N_TRAIN) -> Figure:
    """Every seed's final validation accuracy: one panel per optimizer, two panels per row."""
    optimizers = _ordered(runs["optimizer"], OPTIMIZERS)
    frameworks = _ordered(runs["framework"], FRAMEWORKS)
    colors = framework_colors(frameworks)
    n_categories = max(
        _x_labels(runs[runs["optimizer"] == o], n_train).nunique() for o in optimizers
    )
    size = (max(2.4, 0.35 * len(frameworks) * n_categories + 1.2), 2.8)
    ncols = min(len(optimizers), ACCURACY_COLUMNS)
    nrows = math.ceil(len(optimizers) / ncols)
    fig, axes = _new_figure(nrows, ncols, size, share=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(optimizers):
            ax.set_axis_off()
            continue
        optimizer = optimizers[k]
        plot_final_accuracy(runs[runs["optimizer"] == optimizer], ax=ax, target=target,
                            n_train=n_train, colors=colors)
        ax.set_title(optimizer)
        ax.set_xlabel("batch size")
        ax.set_ylabel("final validation accuracy" if k % ncols == 0 else "")
    _accuracy_legend(fig, colors, frameworks)
    return fig


# ---------------------------------------------------------------------------------------------
# Figure: decision regions of representative seeds


def representative_run(
    cell: pd.DataFrame, eligible: pd.Series | None = None
) -> pd.Series | None:
    """The run whose final validation accuracy is closest to its cell's median; ties: lowest seed.

    Parameters
    ----------
    cell
        The runs of one cell. The median is over every run with a finite final accuracy.
    eligible
        Boolean mask over ``cell``: the runs that may be chosen (all when None). Runs without
        a finite final accuracy are never chosen.
    """
    acc = pd.to_numeric(cell["final_val_acc"]).astype(float)
    finite = np.isfinite(acc)
    allowed = finite & (eligible if eligible is not None else True)
    if not allowed.any():
        return None
    # Rounded so that float noise cannot break a tie that the lowest seed should win.
    distance = (acc - acc[finite].median()).abs().round(9)
    candidates = cell[allowed].assign(_distance=distance[allowed])
    chosen = candidates.sort_values(["_distance", "seed"], kind="stable")
    return chosen.iloc[0].drop("_distance")


def finite_weight_runs(weights: pd.DataFrame) -> list[str]:
    """The ids of the runs whose stored weights are all finite."""
    finite = [bool(np.isfinite(np.asarray(p, dtype=float)).all()) for p in weights["params"]]
    return weights.loc[finite, "run_id"].astype(str).tolist()


def representative_runs(runs: pd.DataFrame, weights: pd.DataFrame) -> pd.DataFrame:
    """One run per framework x optimizer, from the cell with the largest batch size.

    Among cells with that batch size the one with the smallest lr (then hidden, epochs) is used.
    Only runs with stored, finite weights can be chosen: a diverged run's NaN weights would
    draw a one-class map without any error.

    Returns
    -------
    DataFrame
        One row per framework x optimizer (in report order) with the run's columns plus
        ``cell_median`` (the cell's median final validation accuracy).
    """
    drawable = set(finite_weight_runs(weights))
    rows = []
    for _, pair in in_cell_order(runs).groupby(["optimizer", "framework"], sort=False):
        candidates = pair[pair["run_id"].isin(drawable)]
        if candidates.empty:
            continue
        largest = candidates["batch_size"].max()
        first = candidates[candidates["batch_size"] == largest].iloc[0]
        cell = pair[(pair[CELL_KEYS] == first[CELL_KEYS]).all(axis=1)]
        chosen = representative_run(cell, eligible=cell["run_id"].isin(drawable))
        if chosen is not None:
            median = _finite(cell["final_val_acc"]).median()
            rows.append(chosen.to_dict() | {"cell_median": median})
    return pd.DataFrame(rows)


def _regions_panel(ax: Axes, run: pd.Series, weights: pd.DataFrame, *, n_train: int,
                   legend: bool) -> None:
    """Draw one run's decision regions over the validation points of its data."""
    data = make_xor(int(run["data_seed"]), n_train=n_train)
    classifier = WeightsClassifier(results.run_weights(weights, str(run["run_id"])))
    plot_regions(data.x_val, data.y_val, classifier, ax=ax, legend=legend,
                 scatter_kwargs={"s": 14, "linewidth": 0.4})
    ax.set_aspect("equal")
    ax.grid(False)  # grid lines over the coloured regions read as boundaries
    ax.set_title(
        f"{run['framework']}, {run['optimizer']}, batch {batch_label(run['batch_size'], n_train)}"
        f"\nseed {int(run['seed'])}: val acc {float(run['final_val_acc']):.2f}"
    )


def decision_regions_figure(chosen: pd.DataFrame, weights: pd.DataFrame, *,
                            n_train: int = N_TRAIN) -> Figure:
    """Decision regions of the runs in ``chosen``: framework rows x optimizer columns."""
    frameworks = _ordered(chosen["framework"], FRAMEWORKS)
    optimizers = _ordered(chosen["optimizer"], OPTIMIZERS)
    nrows, ncols = len(frameworks), len(optimizers)
    grid_dpi = min(DPI, math.ceil(REGION_POINTS / (REGION_SIZE * min(nrows, ncols))))
    fig, axes = _new_figure(nrows, ncols, (REGION_SIZE, REGION_SIZE), dpi=grid_dpi)
    for (i, framework), (j, optimizer) in _grid(frameworks, optimizers):
        ax = axes[i, j]
        match = chosen[(chosen["framework"] == framework) & (chosen["optimizer"] == optimizer)]
        if match.empty:
            ax.set_title(f"{framework}, {optimizer}")
            _mark_empty(ax, "no run with stored weights")
            ax.set_axis_off()
            continue
        _regions_panel(ax, match.iloc[0], weights, n_train=n_train, legend=i == j == 0)
        ax.set_xlabel("x1" if i == nrows - 1 else "")
        ax.set_ylabel("x2" if j == 0 else "")
    return fig


# ---------------------------------------------------------------------------------------------
# Markdown


@dataclass(frozen=True)
class FigureEntry:
    """A drawn figure: its file name, alt text and caption (which always names its band)."""

    name: str
    alt: str
    caption: str

    def markdown(self, number: int) -> str:
        """The image link and its numbered caption."""
        return f"![{self.alt}]({FIGURES}/{self.name})\n\n*Figure {number}. {self.caption}*"


def _table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "None."
    return str(frame.to_markdown(index=False, disable_numparse=True))


def _listing(values: Sequence[Any]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    words = [str(v) for v in values]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def intro_markdown(res: Results, title: str) -> str:
    """Title, what the report is, and how to read it."""
    runs = res.runs
    batches = [batch_label(b, res.n_train) for b in sorted(runs["batch_size"].unique())]
    name = res.experiment.get("name", "unnamed")
    hidden = _listing(sorted(runs["hidden"].unique()))
    frameworks = _listing(_ordered(runs["framework"], FRAMEWORKS))
    optimizers = _listing(_ordered(runs["optimizer"], OPTIMIZERS))
    n_cells = runs.groupby(CELL_KEYS).ngroups
    unit = _unit(res)
    batch_words = "batch sizes" if len(batches) > 1 else "batch size"
    return f"""# {title}

This report summarises the xorbench experiment **{name}**: a small MLP (2 inputs, hidden
layers {hidden}, ReLU, one logit output) trained on XOR (points uniform in [-1, 1]², label 1
where x1·x2 ≥ 0; {res.n_train} points train, the rest validate) in {frameworks}, with
{optimizers} at {batch_words} {_listing(batches)}. It holds {len(runs)} runs: {n_cells} cells
with {_design_text(res)}{_impl_text(res)}

**How to read it.** A *cell* is one framework, optimizer, batch size, learning rate, hidden
layers and number of epochs; it is trained once per {_pass_unit(res)}.
Batch "full ({res.n_train})" is full-batch gradient descent, batch 1 is plain SGD. A run
*reached the target* when its validation accuracy was ≥ {res.target:g} at some epoch. Up to
the seed-variance section, spreads are quartiles over {unit}s (never a standard error);
that section adds intervals (Wilson, bootstrap), each named where it is shown. Every figure
caption states its band. Nothing is dropped: runs that never reach the target, diverge or fail
stay in every count, and the final-accuracy figure shows every {unit}.{_missing_markdown(res)}"""


def _design_text(res: Results) -> str:
    """How many seeds each cell ran, and how seeds pair runs across cells."""
    same = "in every cell and in both frameworks, so cells can be compared {} by {}."
    if res.experiment.get("seed_design") != "factorial":
        return (f"{_seed_count_text(res.runs)}. Seed *i* starts from the same initial weights "
                f"and batch order {same.format('seed', 'seed')}")
    k = res.experiment.get("seeds")
    return (f"{k} init seeds x {k} order seeds each (a factorial design: every initial weight "
            f"draw with every batch order). Init seed *a* gives the same initial weights and "
            f"order seed *b* the same batch order {same.format('run', 'run')}")


def _pass_unit(res: Results) -> str:
    """What a cell is trained once for: a seed, or a pair of init and order seeds."""
    return "seed" if _unit(res) == "seed" else "pair of init and order seeds"


def _impl_text(res: Results) -> str:
    """Which Keras classes trained rmsprop and adam, when the report has such Keras runs.

    The two libraries' RMSprop and Adam differ in formula, so a framework gap in those rows
    means something else under each implementation.
    """
    runs = res.runs
    keras = runs.loc[runs["framework"] == "keras", "optimizer"]
    adaptive = [name for name in ("rmsprop", "adam") if (keras == name).any()]
    if not adaptive:
        return ""
    names = _listing(adaptive)
    if res.experiment.get("optimizer_impl", "native") == "aligned":
        return (f" Keras trained {names} with xorbench's classes that implement torch's "
                "formulas (`--optimizer-impl aligned`), so a gap between the frameworks there "
                "is not a formula difference.")
    return (f" Keras trained {names} with its own optimizer classes (`native`, hyperparameters "
            "set equal to torch's), whose formulas place epsilon differently from torch's: "
            "that is part of any gap between the frameworks there (`xorbench parity`).")


def _missing_markdown(res: Results) -> str:
    """A warning that the run has not finished, naming the cells that have no results yet."""
    if not res.missing_cells:
        return ""
    done = res.runs["cell"].nunique()
    planned = done + len(res.missing_cells)
    return (f"\n\n**Partial results.** Only {done} of the experiment's {planned} cells have "
            "finished: the run was interrupted or is still running. Every table and figure "
            "below covers the finished cells only. Running the same `xorbench run` command "
            "again trains the missing ones and keeps the finished ones. Missing: "
            + ", ".join(f"`{key}`" for key in res.missing_cells) + ".")


def summary_markdown(res: Results) -> str:
    """The summary table per cell, its definitions, and the tables of failed and diverged runs."""
    unit = _unit(res)
    table = summary_table(res.runs, n_train=res.n_train).rename(columns={"seeds": f"{unit}s"})
    return f"""## Summary per cell

{_table(table)}
{_factorial_note(res)}
- *reached target*: runs whose validation accuracy was ≥ {res.target:g} at some epoch, out of
  all {unit}s of the cell; a run that never got there (stuck, failed, or diverged first) counts
  as not reached.
- *final val acc*: median and quartiles [Q1, Q3] (linear interpolation) of the validation
  accuracy after the last epoch, over the {unit}s that have one (a failed run has none).
- *median epochs to target*: the first epoch by which at least half of the {unit}s had reached
  the target. A run that never reached it counts as reaching it later than every run that did,
  so it is not dropped; with an even number of {unit}s this is the lower of the two middle
  values, and it is "not reached" when fewer than half of the {unit}s reached the target.
- *median wall s / run*: median training time of one run, in seconds.

### Failed runs

{_table(failed_table(res.runs, n_train=res.n_train))}

### Diverged runs

A diverged run had a non-finite training loss; training stopped after that epoch.

{_table(diverged_table(res.runs, n_train=res.n_train))}"""


def _factorial_note(res: Results) -> str:
    """Under the summary of a factorial design: what its runs are, and are not."""
    if _unit(res) != "run":
        return ""
    k = res.experiment.get("seeds")
    return (
        f"\n- *runs*: in this factorial design a cell's {k} x {k} runs are every init seed with "
        f"every\n  order seed. They share seeds, so they are not {k}² independent draws: this "
        "table and the\n  figures before the seed-variance section describe all of them; that "
        f"section's intervals\n  and tests use only the {k} runs whose init and order seeds have "
        "the same index, which\n  share nothing."
    )


def regions_markdown(chosen: pd.DataFrame, n_train: int) -> str:
    """The table of the runs drawn in the decision-region figure."""
    if chosen.empty:
        return ""
    table = _run_keys_table(chosen, n_train)
    table["final val acc"] = [f"{a:.2f}" for a in chosen["final_val_acc"]]
    table["cell median"] = [f"{m:.2f}" for m in chosen["cell_median"]]
    return _table(table)


def _format_seconds(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    if minutes == 0:
        return f"{seconds:.1f} s"
    return f"{seconds:.1f} s ({minutes:.0f} min {rest:.0f} s)"


def _wall_time(manifest: dict[str, Any]) -> str:
    """The experiment's wall time: the manifest's own, else finished minus started."""
    wall = manifest.get("wall_s")
    if isinstance(wall, int | float) and math.isfinite(wall):
        sessions = len(manifest.get("sessions") or [])
        note = (f" (summed over the sessions that finished, of {sessions}; an interrupted "
                "session is not timed)" if sessions > 1 else "")
        return _format_seconds(float(wall)) + note
    try:
        started = datetime.fromisoformat(str(manifest["started"]))
        finished = datetime.fromisoformat(str(manifest["finished"]))
    except (KeyError, TypeError, ValueError):
        return "unknown"
    return _format_seconds((finished - started).total_seconds()) + " (finished minus started)"


def _key_value_table(items: Sequence[tuple[str, Any]], header: tuple[str, str]) -> str:
    frame = pd.DataFrame(
        [(key, _one_line("unknown" if value is None else value)) for key, value in items],
        columns=list(header),
    )
    return _table(frame)


def _configured_cells(experiment: dict[str, Any]) -> pd.DataFrame:
    """The manifest's list of cells as a table, columns in cell-key order."""
    cells = pd.DataFrame(experiment.get("cells") or [])
    if cells.empty:
        return cells
    if "hidden" in cells:
        cells["hidden"] = [results.hidden_label(h) if isinstance(h, list) else h
                           for h in cells["hidden"]]
    first = [key for key in CELL_KEYS if key in cells]
    return cells[[*first, *(c for c in cells.columns if c not in first)]]


def _session_text(session: Any) -> str:
    """One session of a resumed run: when, on what, and with which code."""
    if not isinstance(session, dict):  # manifests before sessions were described
        return str(session)
    where = (f"Dask {session['scheduler']}" if session.get("scheduler")
             else f"{session.get('workers')} local workers")
    return (f"{session.get('started')} ({where}, commit {session.get('git_commit')}, code "
            f"{session.get('code_digest')})")


def _machine_items(manifest: dict[str, Any]) -> list[tuple[str, Any]]:
    """Machine, commit and times from the manifest; a resumed run lists its sessions."""
    sessions = manifest.get("sessions") or []
    return [
        ("platform", manifest.get("platform")),
        ("CPU", manifest.get("cpu")),
        ("CPU count", manifest.get("cpu_count")),
        ("workers", manifest.get("workers")),
        ("git commit" if len(sessions) < 2 else "git commit (last session)",
         manifest.get("git_commit")),
        ("started", manifest.get("started")),
        ("finished", manifest.get("finished")),
        *([("sessions (resumed)", "; ".join(map(_session_text, sessions)))]
          if len(sessions) > 1 else []),
        ("wall time", _wall_time(manifest)),
    ]


def setup_markdown(res: Results) -> str:
    """Config, cells, versions, machine and times, from the manifest."""
    manifest, experiment = res.manifest, res.experiment
    settings = [(key, value) for key, value in experiment.items() if key != "cells"]
    versions = [(name, v if v is not None else "not installed")
                for name, v in (manifest.get("versions") or {}).items()]
    note = manifest.get("wall_time_note")
    note_text = f"\n\nNote: {_one_line(note)}." if note else ""
    return f"""## Setup

### Experiment

{_key_value_table(settings, ("setting", "value"))}

Cells as configured:

{_table(_configured_cells(experiment))}

### Software

{_key_value_table(versions, ("package", "version"))}

### Machine and time

{_key_value_table(_machine_items(manifest), ("item", "value"))}{note_text}"""


# ---------------------------------------------------------------------------------------------
# Drawing the figures and writing the report


def _curve_entries(res: Results, figures_dir: Path) -> list[FigureEntry]:
    if res.history is None or res.history.empty:
        return []
    entries = []
    unit = _unit(res)
    seeds = _seed_count_text(res.runs, unit)
    for metric in ("val_loss", "val_acc"):
        fig = curves_figure(res.runs, res.history, metric, target=res.target, n_train=res.n_train)
        save_figure(fig, figures_dir / f"{metric}.png")
        target = "" if metric == "val_loss" else f" Dashed line: target {res.target:g}."
        scale = " (log scale)" if metric == "val_loss" else ""
        entries.append(FigureEntry(
            f"{metric}.png",
            f"{METRIC_LABELS[metric]} against epoch, median and interquartile band over {unit}s",
            f"{METRIC_LABELS[metric].capitalize()}{scale} against epoch (epoch 0 is the untrained "
            f"network), one panel per optimizer (rows) and batch size (columns), colour: "
            f"framework (where frameworks agree exactly, the thinner line runs inside the wider "
            f"one). Line: median over {unit}s at each epoch. Band: interquartile range over "
            f"{seeds} (25th to 75th percentile, linear interpolation, computed per epoch; no "
            f"bootstrap). A diverged run's non-finite values are left out, so after it stops "
            f"the band rests on fewer {unit}s.{target}",
        ))
    return entries


def _accuracy_entry(res: Results, figures_dir: Path) -> FigureEntry:
    fig = final_accuracy_figure(res.runs, target=res.target, n_train=res.n_train)
    save_figure(fig, figures_dir / "final_accuracy.png")
    acc = pd.to_numeric(res.runs["final_val_acc"]).astype(float)
    hidden = int((~np.isfinite(acc)).sum())
    missing = (f" {hidden} run(s) without a final accuracy (failed) cannot be drawn; they are "
               "counted in the summary table." if hidden else "")
    unit = _unit(res)
    return FigureEntry(
        "final_accuracy.png",
        f"final validation accuracy of every {unit} of every cell",
        f"Final validation accuracy of every {unit} ({len(res.runs) - hidden} points), one "
        f"panel per optimizer, frameworks side by side. Each point is one {unit}; {unit}s with "
        f"equal accuracy are set side by side in a fixed order (no random jitter); crosses are "
        f"diverged runs; the black bar is the cell's median; dashed line: target "
        f"{res.target:g}. Band: none, every {unit} is drawn.{missing}",
    )


def _regions_entry(res: Results, figures_dir: Path) -> tuple[FigureEntry | None, str]:
    if res.weights is None or res.weights.empty:
        return None, "No stored weights: decision regions cannot be drawn."
    chosen = representative_runs(res.runs, res.weights)
    if chosen.empty:
        return None, ("No run has finite stored weights (every run diverged or failed): no "
                      "decision region to draw.")
    fig = decision_regions_figure(chosen, res.weights, n_train=res.n_train)
    save_figure(fig, figures_dir / "decision_regions.png")
    entry = FigureEntry(
        "decision_regions.png",
        "decision regions of one representative seed per framework and optimizer",
        "Decision regions (mlxtend) of one seed per framework (rows) and optimizer (columns), "
        "from its stored final weights through xorbench's numpy forward pass. The cell is the "
        "optimizer's largest batch size (at the smallest learning rate); the seed is the one "
        "whose final validation accuracy is closest to the cell's median (ties: lowest seed), "
        "among the runs with stored, finite weights. Points: the validation set (square: "
        "class 0, triangle: class 1). Band: none, one seed per panel.",
    )
    return entry, regions_markdown(chosen, res.n_train)


def _remove_stale_figures(figures_dir: Path, drawn: set[str]) -> None:
    """Delete figures of an earlier report that this one did not draw (only names we own)."""
    for name in sorted(FIGURE_NAMES - drawn):
        (figures_dir / name).unlink(missing_ok=True)


def write_report(
    results_dir: Path, out_dir: Path, *, title: str | None = None,
    bench: Sequence[Path] | None = None, stats_options: Mapping[str, Any] | None = None,
    parity: Path | None = None,
) -> Path:
    """Write ``out_dir/report.md`` and its figures from the results in ``results_dir``.

    Figures are written first and the Markdown last, each under a temporary name renamed into
    place, so a reader never sees a half-written report.

    Parameters
    ----------
    results_dir
        A results directory written by the runner.
    out_dir
        Where to write; created if missing, existing report files are replaced.
    title
        The report's title; "xorbench report: <experiment name>" when None.
    bench
        pytest-benchmark JSON files for the "Speed" section; when None, the directory's own
        ``bench*.json`` files, if any (see :mod:`xorbench.bench`).
    stats_options
        Options of :func:`xorbench.stats.compute_tables`, such as ``margin_rate`` and
        ``margin_loss``, the equivalence margins of Lightning against Keras.
    parity
        A directory written by ``xorbench parity --out`` for the "Framework parity" section;
        when None, ``results_dir/parity`` if it exists (see :mod:`xorbench.parity`).

    Returns
    -------
    Path
        The path of ``report.md``.
    """
    res = load_results(Path(results_dir))
    # Read before any figure is drawn, so that a bad benchmark file stops the report at once.
    speed_text = speed_markdown_for(Path(results_dir), bench)
    parity_text = parity_markdown_for(Path(results_dir), parity, res.runs)
    out_dir = Path(out_dir)
    figures_dir = out_dir / FIGURES
    figures_dir.mkdir(parents=True, exist_ok=True)
    title = title or f"xorbench report: {res.experiment.get('name', Path(results_dir).name)}"

    with figure_context():
        curves = _curve_entries(res, figures_dir)
        accuracy = _accuracy_entry(res, figures_dir)
        regions, regions_text = _regions_entry(res, figures_dir)
        tables = stats.compute_tables(res.runs, res.weights,
                                      stats.training_inputs(res.runs, res.n_train),
                                      **(stats_options or {}))
        stats_figures = stats_plots.write_stats_figures(tables, figures_dir)
    drawn = {entry.name for entry in [*curves, accuracy, *([regions] if regions else [])]}
    _remove_stale_figures(figures_dir, drawn | {f.name for f in stats_figures})

    # The statistics figures continue the report's figure numbering.
    first = len(curves) + 2 + (1 if regions else 0)
    stats_figures = [replace(f, number=first + i) for i, f in enumerate(stats_figures)]
    stats_text = stats_plots.stats_markdown(tables, figures=stats_figures, n_train=res.n_train)
    text = _assemble(res, title, curves, accuracy, regions, regions_text, stats_text, speed_text,
                     parity_text)
    path = out_dir / REPORT
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    logger.info("wrote %s", path)
    return path


def _assemble(res: Results, title: str, curves: list[FigureEntry], accuracy: FigureEntry,
              regions: FigureEntry | None, regions_text: str, stats_text: str,
              speed_text: str = "", parity_text: str = "") -> str:
    """The whole Markdown document, figures numbered in order of appearance."""
    figures = [*curves, accuracy, *([regions] if regions else [])]
    number = {entry.name: i for i, entry in enumerate(figures, start=1)}

    def show(entry: FigureEntry) -> str:
        return entry.markdown(number[entry.name])

    curve_text = ("\n\n".join(show(e) for e in curves) if curves
                  else "No history table: the curves cannot be drawn.")
    regions_part = "\n\n".join(filter(None, [show(regions) if regions else "", regions_text]))
    sections = [
        intro_markdown(res, title),
        summary_markdown(res),
        f"## Validation curves\n\n{curve_text}",
        f"## Final accuracy of every {_unit(res)}\n\n{show(accuracy)}",
        f"## Decision regions\n\n{regions_part}",
        stats_text,
        *([speed_text] if speed_text else []),
        *([parity_text] if parity_text else []),
        setup_markdown(res),
    ]
    return "\n\n".join(sections) + "\n"


# ---------------------------------------------------------------------------------------------
# Speed section (pytest-benchmark JSON, see xorbench.bench)


def parity_markdown_for(
    results_dir: Path, directory: Path | None, runs: pd.DataFrame | None = None
) -> str:
    """The "Framework parity" section from ``directory`` (default ``results_dir/parity``).

    "" when there is no parity table: the section is only written from measured results. With
    the run's ``runs`` table, a sentence under the heading says where the tables were made at
    another lr or over other optimizers or batch sizes than the run trained.
    """
    directory = directory if directory is not None else results_dir / "parity"
    found = read_parity(directory) if directory.is_dir() else []
    if not found:
        return ""
    intro = (
        f"{_parity_runs(found)} `native` uses each library's own optimizer with equal "
        "hyperparameters (what `xorbench run` uses by default); `aligned` runs Keras "
        "optimizers that implement torch's formulas (`xorbench run --optimizer-impl "
        "aligned`). The cause of a gap is read off the framework-differences table below it. "
        "Each float type says the command that made "
        "its tables, and when."
    )
    scope = parity_scope_markdown(found, runs) if runs is not None else ""
    parts = [
        parity_markdown(t.summary, t.differences,
                        made_with_markdown(t.record, str(t.summary["dtype"].iloc[0])))
        for t in found
    ]
    return "\n\n".join(["## Framework parity", *([scope] if scope else []), intro, *parts])


def _parity_runs(found: Sequence[ParityTables]) -> str:
    """The intro's first sentence: which seeds each row trains and compares."""
    counts = {str(t.summary["dtype"].iloc[0]): seed_count(t.summary) for t in found}
    if set(counts.values()) == {1}:
        return ("Each row trains one run in Lightning and one in Keras from the same initial "
                "weights and batch order (seed 0) and compares them after every epoch.")
    if len(set(counts.values())) == 1:
        seeds = seeds_text(next(iter(counts.values())))
    else:
        seeds = "; ".join(f"{dtype}: {seeds_text(n)}" for dtype, n in counts.items())
    return ("Each row trains one run in Lightning and one in Keras per seed "
            f"({seeds}, each from the initial weights and batch order `xorbench run` gives it), "
            "compares them after every epoch and shows the worst seed.")


def _scope(lrs: list[float] | None, optimizers: set[str], batches: set[int]) -> str:
    """"at lr 0.05 for sgd, adam at batch 1, 150"; an unknown lr is said to be unrecorded."""
    at = "at an unrecorded lr" if lrs is None else "at lr " + ", ".join(f"{lr:g}" for lr in lrs)
    ordered = [opt for opt in OPTIMIZERS if opt in optimizers]
    return f"{at} for {', '.join(ordered)} at batch {', '.join(map(str, sorted(batches)))}"


def _cells_of(
    frame: pd.DataFrame, lrs: list[float] | None
) -> tuple[list[float] | None, set[str], set[int]]:
    """The lrs given, and the optimizers and batch sizes of a runs or parity summary table."""
    return lrs, {str(o) for o in frame["optimizer"]}, {int(b) for b in frame["batch_size"]}


def parity_scope_markdown(found: Sequence[ParityTables], runs: pd.DataFrame) -> str:
    """One sentence when the parity tables were made at another lr, or over other optimizers or
    batch sizes, than the run in ``runs`` trained; "" when every float type matches it."""
    trained = _cells_of(runs, sorted({float(lr) for lr in runs["lr"]}))
    made = {}
    for check in found:
        lrs = None if check.record is None else [float(check.record["lr"])]
        made[str(check.summary["dtype"].iloc[0])] = _cells_of(check.summary, lrs)

    def matches(lrs: list[float] | None, optimizers: set[str], batches: set[int]) -> bool:
        # An unrecorded lr is no mismatch: nothing says it differs.
        return lrs in (None, trained[0]) and (optimizers, batches) == trained[1:]

    sentences = [_hidden_mismatch(found, runs)]
    if not all(matches(*scope) for scope in made.values()):
        said = {dtype: _scope(*scope) for dtype, scope in made.items()}
        if len(set(said.values())) == 1:
            tables = f"These parity tables were made {next(iter(said.values()))}"
        else:
            tables = "The " + ", the ".join(f"{dtype} parity tables were made {text}"
                                           for dtype, text in said.items())
        sentences.insert(0, f"{tables}; this run trained {_scope(*trained)}.")
    return " ".join(filter(None, sentences))


def _hidden_mismatch(found: Sequence[ParityTables], runs: pd.DataFrame) -> str:
    """A sentence when the recorded parity network is not one the run trained; else ""."""
    trained = sorted({str(h) for h in runs["hidden"]})
    made = sorted({results.hidden_label(check.record["hidden"]) for check in found
                   if check.record is not None and "hidden" in check.record})
    if not made or set(made) <= set(trained):
        return ""
    return (f"They were made with hidden layers {', '.join(made)}; this run trained "
            f"{', '.join(trained)}.")


def speed_markdown_for(results_dir: Path, files: Sequence[Path] | None) -> str:
    """The "Speed" section from ``files``, else from ``results_dir/bench*.json``; "" if none.

    Raises
    ------
    xorbench.bench.BenchFileError
        When a file is missing or is not pytest-benchmark JSON.
    """
    paths = list(files) if files is not None else find_bench_files(results_dir)
    if not paths:
        return ""
    logger.info("speed section from %s", ", ".join(map(str, paths)))
    return speed_markdown(load_benchmarks(paths))
