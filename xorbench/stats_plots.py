"""Figures and Markdown for the seed-variance statistics of :mod:`xorbench.stats`.

Every figure is drawn with matplotlib from the tables, deterministically: no seaborn estimator,
no bootstrap band drawn at plot time, no random jitter (field case F9). Every plotting function
takes an optional ``ax`` and returns it; every figure names its bars or bands in its legend and
in its caption. :func:`write_stats_figures` writes the PNGs and :func:`stats_markdown` renders
the section of the report that holds the tables, labels and power notes.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from xorbench import results, stats
from xorbench.adapters.base import FRAMEWORKS
from xorbench.data import N_TRAIN
from xorbench.optimizers import OPTIMIZERS
from xorbench.results import CELL_KEYS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

DPI = 100
FIGURES = "figures"
# matplotlib writes its version into every PNG; without it the bytes depend only on the drawing.
PNG_METADATA: dict[str, str | None] = {"Software": None}
RC: dict[str, Any] = {
    "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "figure.dpi": DPI, "savefig.dpi": DPI,
}
PANEL_SIZE = (3.2, 2.4)  # inches per facet
ROW_HEIGHT = 0.22  # inches per cell in the one-row-per-cell figures
BAND_ALPHA = 0.2
LINE_STYLES: tuple[Any, ...] = ("-", "--", ":", "-.")
SOURCE_COLORS = {"init seed": "#0173b2", "order seed": "#de8f05", "rest": "#bbbbbb"}
VERDICT_COLORS = {"better": "#0173b2", "equivalent": "#029e73", "inconclusive": "#7f7f7f",
                  "not compared": "#cccccc"}

CAPTION_REACHED = (
    "Fraction of seeds that had reached the target validation accuracy by each epoch, one panel "
    "per optimizer (rows) and batch size (columns), colour: framework. Runs that never reach "
    "the target stay in the denominator, so a curve that levels off below 1 shows the share "
    "that never did. Band: pointwise Wilson 95% interval of the fraction at each epoch (not a "
    "bootstrap, not a simultaneous band)."
)
CAPTION_RATES = (
    "Share of seeds that reached the target, one row per cell. Point: the share; bar: Wilson "
    "95% interval; the label at the right is reached/seeds."
)
CAPTION_FOREST = (
    "Optimizer pairs on the final validation loss: P(A lower), the chance that a seed of A ends "
    "with a lower loss than a seed of B (ties count half; 0.5 means neither). Point: estimate; "
    "bar: 95% percentile bootstrap interval over seeds (pairs resampled together when seeds are "
    "shared); shaded: equivalence margin; colour: Holm-corrected verdict."
)
CAPTION_VARIANCE = (
    "Where the seed variance comes from, per cell, for a factorial design (k init seeds x k "
    "order seeds). Bars: each source's share of the outcome's variance, from method-of-moments "
    "variance components of a two-way ANOVA without replication (negative estimates set to "
    "0); rest: the init x order interaction and everything else."
)


# ---------------------------------------------------------------------------------------------
# Labels and colours


def batch_label(batch_size: Any, n_train: int = N_TRAIN) -> str:
    """The batch size as shown to readers: full-batch GD is "full (150)"."""
    return f"full ({n_train})" if int(batch_size) == n_train else str(int(batch_size))


def _varied(frame: pd.DataFrame, keys: Sequence[str] = ("lr", "hidden", "epochs")) -> list[str]:
    return [key for key in keys if key in frame.columns and frame[key].nunique() > 1]


def cell_label(row: Any, varied: Sequence[str] = (), n_train: int = N_TRAIN) -> str:
    """"lightning, adam, batch 32" plus the other axes that vary, such as ", lr 0.1"."""
    names = {"lr": "lr {:g}", "hidden": "hidden {}", "epochs": "{} epochs"}
    batch = batch_label(row["batch_size"], n_train)
    parts = [f"{row['framework']}, {row['optimizer']}, batch {batch}"]
    parts += [names[key].format(row[key]) for key in varied]
    return ", ".join(parts)


def framework_colors(frameworks: Sequence[str]) -> dict[str, Any]:
    """A fixed colour per framework, from seaborn's colour-blind palette (as the report)."""
    import seaborn as sns

    palette = sns.color_palette("colorblind", max(len(FRAMEWORKS), len(frameworks)))
    names = [*FRAMEWORKS, *sorted(set(frameworks) - set(FRAMEWORKS))]
    return dict(zip(names, palette, strict=False))


def _ordered(values: pd.Series, known: Sequence[str]) -> list[str]:
    present = set(values)
    return [*[v for v in known if v in present], *sorted(present - set(known))]


def _current_ax(ax: Axes | None) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.gca()


# ---------------------------------------------------------------------------------------------
# Axes-level plots


def variant_styles(frame: pd.DataFrame) -> tuple[list[str], dict[tuple[Any, ...], str]]:
    """The axes among lr, hidden, epochs that vary in ``frame``, and a line style per value.

    Returns
    -------
    (keys, styles)
        ``styles`` maps each combination of those axes' values (a tuple, in ``keys`` order) to a
        matplotlib line style, in order of appearance.
    """
    keys = _varied(frame)
    combos = dict.fromkeys(tuple(row) for row in frame[keys].itertuples(index=False))
    return keys, {combo: LINE_STYLES[i % len(LINE_STYLES)] for i, combo in enumerate(combos)}


def _variant_text(keys: Sequence[str], combo: tuple[Any, ...]) -> str:
    names = {"lr": "lr {:g}", "hidden": "hidden {}", "epochs": "{} epochs"}
    return ", ".join(names[key].format(value) for key, value in zip(keys, combo, strict=True))


def plot_reached_by_epoch(
    curve: pd.DataFrame,
    *,
    ax: Axes | None = None,
    colors: dict[str, Any] | None = None,
    styles: tuple[list[str], dict[tuple[Any, ...], str]] | None = None,
    n_train: int = N_TRAIN,
) -> Axes:
    """Fraction reached against epoch for each cell in ``curve``, as steps with Wilson bands.

    Parameters
    ----------
    curve
        Rows of :func:`xorbench.stats.reached_by_epoch` (one or more cells).
    ax
        Axes to draw on; the current axes when None.
    colors
        Colour per framework; :func:`framework_colors` when None.
    styles
        :func:`variant_styles` of the whole figure, so every panel uses the same line style for
        the same lr x hidden x epochs; computed from ``curve`` when None.

    Returns
    -------
    Axes
        Lines have gid "fraction", bands gid "band" and a label naming the cell.
    """
    ax = _current_ax(ax)
    colors = colors or framework_colors(list(curve["framework"].unique()))
    keys, style_of = styles if styles is not None else variant_styles(curve)
    for _, cell in curve.groupby(CELL_KEYS, sort=False):
        first = cell.iloc[0]
        color = colors[first["framework"]]
        epoch = cell["epoch"].to_numpy()
        band = ax.fill_between(epoch, cell["low"].to_numpy(), cell["high"].to_numpy(),
                               step="post", color=color, alpha=BAND_ALPHA, linewidth=0)
        band.set_gid("band")
        (line,) = ax.step(epoch, cell["fraction"].to_numpy(), where="post", color=color,
                          linestyle=style_of[tuple(first[key] for key in keys)], lw=1.3,
                          label=cell_label(first, keys, n_train))
        line.set_gid("fraction")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epoch")
    ax.set_ylabel("fraction reached target")
    return ax


def plot_success_rates(
    summary: pd.DataFrame, *, ax: Axes | None = None, n_train: int = N_TRAIN
) -> Axes:
    """Reached-target share of each cell with its Wilson 95% interval, one row per cell.

    Parameters
    ----------
    summary
        :func:`xorbench.stats.cell_summary` (its rows are drawn top to bottom in order).

    Returns
    -------
    Axes
        One errorbar container per framework, labelled "<framework>".
    """
    ax = _current_ax(ax)
    colors = framework_colors(list(summary["framework"].unique()))
    varied = _varied(summary)
    y = np.arange(len(summary))[::-1]
    for framework in _ordered(summary["framework"], FRAMEWORKS):
        rows = (summary["framework"] == framework).to_numpy()
        part = summary[rows]
        rate = part["reached_rate"].to_numpy(dtype=float)
        err = np.vstack([rate - part["reached_low"].to_numpy(dtype=float),
                         part["reached_high"].to_numpy(dtype=float) - rate])
        # At a rate of exactly 0 or 1 the Wilson bound can miss the rate by a rounding error.
        err = np.clip(err, 0.0, None)
        ax.errorbar(rate, y[rows], xerr=err, fmt="o", ms=4, capsize=2, color=colors[framework],
                    label=framework)
    for yi, (_, row) in zip(y, summary.iterrows(), strict=True):
        ax.annotate(f"{row['reached']}/{row['seeds']}", (1.0, yi), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=7,
                    xycoords=("axes fraction", "data"))
    labels = [cell_label(row, varied, n_train) for _, row in summary.iterrows()]
    ax.set_yticks(y, labels)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.7, len(summary) - 0.3)
    ax.set_xlabel("share of seeds that reached the target (bar: Wilson 95% interval)")
    return ax


def _forest_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rank-based loss rows of an optimizer comparison table (P(A lower) rows)."""
    if table.empty:
        return table
    return table[table["estimand"].astype(str).str.startswith("P(")].reset_index(drop=True)


def _pair_label(row: Any, varied: Sequence[str], n_train: int) -> str:
    names = {"lr": "lr {:g}", "hidden": "hidden {}", "epochs": "{} epochs"}
    extra = "".join(", " + names[key].format(row[key]) for key in varied)
    return (f"{row['a']} vs {row['b']} ({row['framework']}, batch "
            f"{batch_label(row['batch_size'], n_train)}{extra})")


def plot_forest(
    table: pd.DataFrame,
    *,
    ax: Axes | None = None,
    margin: float = stats.MARGIN_PROB,
    n_train: int = N_TRAIN,
) -> Axes:
    """Forest plot of P(A lower loss) with bootstrap 95% intervals, one row per optimizer pair.

    Parameters
    ----------
    table
        ``compare_optimizers(...).table``; only its "final val loss" rows are drawn.
    margin
        The equivalence margin around 0.5, shaded.

    Returns
    -------
    Axes
        One errorbar container per verdict present, labelled with the verdict.
    """
    ax = _current_ax(ax)
    rows = _forest_rows(table)
    ax.axvspan(0.5 - margin, 0.5 + margin, color="#e5e5e5", zorder=0,
               label=f"equivalence margin 0.5 ± {margin:g}")
    ax.axvline(0.5, color="black", lw=0.8)
    varied = _varied(rows)
    y = np.arange(len(rows))[::-1]
    for verdict, color in VERDICT_COLORS.items():
        pick = (rows["verdict"] == verdict).to_numpy() if len(rows) else np.zeros(0, bool)
        if not pick.any():
            continue
        part = rows[pick]
        est = part["estimate"].to_numpy(dtype=float)
        err = np.vstack([est - part["ci_low"].to_numpy(dtype=float),
                         part["ci_high"].to_numpy(dtype=float) - est])
        # A percentile bootstrap interval need not contain the point estimate.
        err = np.clip(err, 0.0, None)
        ax.errorbar(est, y[pick], xerr=err, fmt="o", ms=4, capsize=2, color=color, label=verdict)
    ax.set_yticks(y, [_pair_label(row, varied, n_train) for _, row in rows.iterrows()])
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.7, max(len(rows), 1) - 0.3)
    ax.set_xlabel("P(A ends with a lower val loss than B) (bar: 95% bootstrap interval)")
    return ax


def plot_variance_split(
    split: pd.DataFrame,
    *,
    outcome: str = "reached target",
    ax: Axes | None = None,
    n_train: int = N_TRAIN,
) -> Axes:
    """Stacked bars of the init-seed, order-seed and rest shares of one outcome, per cell.

    Parameters
    ----------
    split
        :func:`xorbench.stats.variance_split`.
    outcome
        Which outcome to draw, one of :data:`xorbench.stats.VARIANCE_OUTCOMES`.

    Returns
    -------
    Axes
        One bar container per source, labelled with the source; cells with no variance or an
        incomplete design get a text note instead of bars.
    """
    ax = _current_ax(ax)
    part = split[split["outcome"] == outcome].reset_index(drop=True)
    sources = list(stats.VARIANCE_SOURCES)
    if part["source"].tolist() != sources * (len(part) // len(sources)):
        raise ValueError("split must hold the rows of variance_split: init seed, order seed and "
                         "rest for each cell, in that order")
    shares = np.nan_to_num(part["share"].to_numpy(dtype=float).reshape(-1, len(sources)))
    cells = part.iloc[:: len(sources)].reset_index(drop=True)
    varied = _varied(cells)
    y = np.arange(len(cells))[::-1]
    left = np.zeros(len(cells))
    for i, source in enumerate(sources):
        ax.barh(y, shares[:, i], left=left, color=SOURCE_COLORS[source], label=source,
                height=0.7)
        left += shares[:, i]
    for yi, note in zip(y, cells["note"], strict=True):
        if note:
            ax.text(0.01, yi, note, va="center", fontsize=7, color="dimgrey")
    ax.set_yticks(y, [cell_label(row, varied, n_train) for _, row in cells.iterrows()])
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.7, max(len(cells), 1) - 0.3)
    ax.set_xlabel(f"share of the variance of '{outcome}' (variance components)")
    return ax


# ---------------------------------------------------------------------------------------------
# Figures for the report


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1,
            share: bool = False) -> tuple[Figure, np.ndarray]:
    """A figure outside pyplot (no global state), with a grid of axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=share, sharey=share)
    return fig, axes


def _style() -> Any:
    """The report's fixed style (matplotlib default + seaborn whitegrid + font sizes)."""
    import matplotlib.style
    import seaborn as sns

    return matplotlib.style.context(["default", sns.axes_style("whitegrid"), RC])


def reached_by_epoch_figure(curve: pd.DataFrame, *, n_train: int = N_TRAIN) -> Figure:
    """:func:`plot_reached_by_epoch` in a grid: optimizer rows x batch-size columns."""
    optimizers = _ordered(curve["optimizer"], OPTIMIZERS)
    batches = sorted(int(b) for b in curve["batch_size"].unique())
    frameworks = _ordered(curve["framework"], FRAMEWORKS)
    colors = framework_colors(frameworks)
    styles = variant_styles(curve)
    fig, axes = _figure(PANEL_SIZE[0] * len(batches), PANEL_SIZE[1] * len(optimizers) + 0.6,
                        len(optimizers), len(batches), share=True)
    for i, optimizer in enumerate(optimizers):
        for j, batch in enumerate(batches):
            ax = axes[i, j]
            panel = curve[(curve["optimizer"] == optimizer) & (curve["batch_size"] == batch)]
            ax.set_title(f"{optimizer}, batch {batch_label(batch, n_train)}")
            if panel.empty:
                ax.text(0.5, 0.5, "no such cell", ha="center", transform=ax.transAxes)
                continue
            plot_reached_by_epoch(panel, ax=ax, colors=colors, styles=styles, n_train=n_train)
            ax.label_outer()
    variants = [(_variant_text(styles[0], combo), style) for combo, style in styles[1].items()]
    _band_legend(fig, colors, frameworks, "band: Wilson 95% interval at each epoch",
                 variants if styles[0] else [])
    return fig


def _band_legend(fig: Figure, colors: dict[str, Any], frameworks: Sequence[str],
                 band: str, variants: Sequence[tuple[str, Any]] = ()) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [Line2D([], [], color=colors[fw], lw=1.3, label=f"{fw}: fraction")
                          for fw in frameworks]
    handles += [Line2D([], [], color="grey", lw=1.3, linestyle=style, label=label)
                for label, style in variants]
    handles.append(Patch(color="grey", alpha=BAND_ALPHA, label=band))
    fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 4),
               frameon=False)


def success_rates_figure(summary: pd.DataFrame, *, n_train: int = N_TRAIN) -> Figure:
    """:func:`plot_success_rates` sized to the number of cells."""
    fig, axes = _figure(7.0, 1.4 + ROW_HEIGHT * len(summary))
    ax = plot_success_rates(summary, ax=axes[0, 0], n_train=n_train)
    _outside_legend(fig, ax)
    return fig


def _outside_legend(fig: Figure, ax: Axes) -> None:
    """The axes' legend entries in one row above the panels, where they hide no data."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=len(handles), frameon=False)


def forest_figure(table: pd.DataFrame, *, margin: float = stats.MARGIN_PROB,
                  n_train: int = N_TRAIN) -> Figure:
    """:func:`plot_forest` sized to the number of optimizer pairs."""
    rows = len(_forest_rows(table))
    fig, axes = _figure(7.0, 1.6 + ROW_HEIGHT * rows)
    ax = plot_forest(table, ax=axes[0, 0], margin=margin, n_train=n_train)
    _outside_legend(fig, ax)
    return fig


def variance_split_figure(split: pd.DataFrame, *, n_train: int = N_TRAIN) -> Figure:
    """:func:`plot_variance_split` for every outcome in ``split``, side by side."""
    outcomes = list(dict.fromkeys(split["outcome"]))
    cells = split.drop_duplicates(CELL_KEYS).shape[0]
    fig, axes = _figure(3.6 * len(outcomes) + 2.0, 1.6 + ROW_HEIGHT * cells, 1, len(outcomes),
                        share=True)
    for ax, outcome in zip(axes[0], outcomes, strict=True):
        plot_variance_split(split, outcome=outcome, ax=ax, n_train=n_train)
        ax.set_title(outcome)
        ax.set_xlabel("bar: share of variance")
    _outside_legend(fig, axes[0, 0])
    return fig


@dataclass(frozen=True)
class StatsFigure:
    """A written figure: file name (under ``figures/``), alt text and caption."""

    name: str
    alt: str
    caption: str
    number: int | None = None  # its number in the whole report, when it is part of one

    def markdown(self, number: int | None = None) -> str:
        """The image link and its caption, numbered when ``number`` (or ``self.number``) is set."""
        number = self.number if number is None else number
        prefix = f"Figure {number}. " if number is not None else ""
        return f"![{self.alt}]({FIGURES}/{self.name})\n\n*{prefix}{self.caption}*"


def save_figure(fig: Figure, path: Path) -> None:
    """Write ``fig`` as PNG at a fixed DPI without metadata, atomically."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=DPI, metadata=PNG_METADATA)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("wrote %s", path)


def write_stats_figures(
    tables: stats.StatsTables, figures_dir: Path, *, n_train: int = N_TRAIN
) -> list[StatsFigure]:
    """Draw and write the statistics figures; return them in the order the report shows them."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    drawn: list[tuple[StatsFigure, Figure]] = []
    with _style():
        drawn.append((StatsFigure("stats_success_rates.png",
                                  "reached-target share per cell with Wilson intervals",
                                  CAPTION_RATES),
                      success_rates_figure(tables.summary, n_train=n_train)))
        if not tables.reached_curve.empty:
            drawn.append((StatsFigure("stats_reached_by_epoch.png",
                                      "fraction of seeds reached target against epoch",
                                      CAPTION_REACHED),
                          reached_by_epoch_figure(tables.reached_curve, n_train=n_train)))
        if not _forest_rows(tables.optimizers.table).empty:
            drawn.append((StatsFigure("stats_forest.png",
                                      "forest plot of P(A lower loss) per optimizer pair",
                                      CAPTION_FOREST),
                          forest_figure(tables.optimizers.table, n_train=n_train)))
        if tables.variance is not None and not tables.variance.empty:
            drawn.append((StatsFigure("stats_variance_split.png",
                                      "variance split into init seed, order seed and rest",
                                      CAPTION_VARIANCE),
                          variance_split_figure(tables.variance, n_train=n_train)))
        for entry, fig in drawn:
            save_figure(fig, figures_dir / entry.name)
    return [entry for entry, _ in drawn]


# ---------------------------------------------------------------------------------------------
# Markdown


def _table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "None."
    return str(frame.to_markdown(index=False, disable_numparse=True))


def _num(value: Any, digits: int = 2) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    if math.isnan(number):
        return "n/a"
    if math.isinf(number):
        return "∞"
    return f"{number:.{digits}f}"


def _spread_text(row: pd.Series, prefix: str, digits: int) -> str:
    """"median [Q1, Q3] · IQM x · mean y (lo to hi)" of one summary row."""
    if not row[f"{prefix}_n"]:
        return "n/a"
    return (f"{_num(row[f'{prefix}_median'], digits)} [{_num(row[f'{prefix}_q1'], digits)}, "
            f"{_num(row[f'{prefix}_q3'], digits)}] · IQM {_num(row[f'{prefix}_iqm'], digits)} · "
            f"mean {_num(row[f'{prefix}_mean'], digits)} "
            f"({_num(row[f'{prefix}_mean_low'], digits)} to "
            f"{_num(row[f'{prefix}_mean_high'], digits)})")


def _failures_text(row: pd.Series) -> str:
    dead = "n/a" if pd.isna(row["dead_first_layer"]) else str(int(row["dead_first_layer"]))
    counts = [str(int(row[kind])) for kind in stats.FAILURE_KINDS]
    return " / ".join([*counts, dead])


def _epochs_text(row: pd.Series) -> str:
    median = row["epochs_median"]
    shown = "not reached" if math.isinf(median) else f"{median:.0f}"
    return (f"{shown} · {_num(row['epochs_restricted_mean'], 1)} "
            f"({_num(row['epochs_restricted_low'], 1)} to "
            f"{_num(row['epochs_restricted_high'], 1)})")


def headline_table(summary: pd.DataFrame, *, n_train: int = N_TRAIN) -> pd.DataFrame:
    """The summary per cell as shown in the report: one row per cell, all columns text."""
    return pd.DataFrame({
        "framework": summary["framework"],
        "optimizer": summary["optimizer"],
        "batch": [batch_label(b, n_train) for b in summary["batch_size"]],
        "lr": [f"{lr:g}" for lr in summary["lr"]],
        "hidden": summary["hidden"].astype(str),
        "epochs": summary["epochs"].astype(int).astype(str),
        "reached target [Wilson 95%]": [
            f"{r}/{n} = {rate:.2f} [{lo:.2f}, {hi:.2f}]" for r, n, rate, lo, hi in zip(
                summary["reached"], summary["seeds"], summary["reached_rate"],
                summary["reached_low"], summary["reached_high"], strict=True)
        ],
        "stuck ≈0.5 / ≈0.75 / other / diverged / failed / dead layer": [
            _failures_text(row) for _, row in summary.iterrows()
        ],
        "final val acc: median [Q1, Q3] · IQM · mean (95% CI)": [
            _spread_text(row, "val_acc", 2) for _, row in summary.iterrows()
        ],
        "final val loss: median [Q1, Q3] · IQM · mean (95% CI)": [
            _spread_text(row, "val_loss", 3) for _, row in summary.iterrows()
        ],
        "epochs to target: median · restricted mean (95% CI)": [
            _epochs_text(row) for _, row in summary.iterrows()
        ],
    })


def _group_columns(table: pd.DataFrame, keys: Sequence[str], n_train: int) -> dict[str, Any]:
    """The group keys that tell rows apart, as text columns (batch as the report shows it)."""
    shown = [key for key in keys if key in ("framework", "optimizer", "batch_size")
             or table[key].nunique() > 1]
    columns: dict[str, Any] = {}
    for key in shown:
        if key == "batch_size":
            columns["batch"] = [batch_label(b, n_train) for b in table[key]]
        else:
            columns[key] = table[key].astype(str).to_numpy()
    return columns


def _power_text(value: Any) -> str:
    number = float(value)
    if math.isnan(number):
        return "n/a"
    return "∞ (no difference observed)" if math.isinf(number) else f"{number:.0f}"


def comparison_table(table: pd.DataFrame, keys: Sequence[str], *,
                     n_train: int = N_TRAIN) -> pd.DataFrame:
    """A comparison table as shown in the report: groups, pair, outcome, verdict, words, power."""
    return pd.DataFrame({
        **_group_columns(table, keys, n_train),
        "A vs B": [f"{a} vs {b}" for a, b in zip(table["a"], table["b"], strict=True)],
        "outcome": table["outcome"],
        "seeds (A, B)": [f"{a}, {b}" for a, b in zip(table["n_a"], table["n_b"], strict=True)],
        "verdict": table["verdict"],
        "result": [_one_line(label) for label in table["label"]],
        "seeds for 80% power": [_power_text(v) for v in table["seeds_for_power"]],
    })


def trend_table(table: pd.DataFrame, *, n_train: int = N_TRAIN) -> pd.DataFrame:
    """The batch-size trend as shown in the report."""
    keys = [key for key in CELL_KEYS if key != "batch_size"]
    return pd.DataFrame({
        **_group_columns(table, keys, n_train),
        "batch sizes": table["batch_sizes"],
        "reached rate per batch size": table["rates"],
        "verdict": table["verdict"],
        "result": [_one_line(label) for label in table["label"]],
        "seeds per batch size for 80% power": [_power_text(v) for v in table["seeds_for_power"]],
    })


def variance_table(split: pd.DataFrame, *, n_train: int = N_TRAIN) -> pd.DataFrame:
    """The variance split as shown in the report: one row per cell and outcome."""
    rows = []
    for keys, part in split.groupby([*CELL_KEYS, "outcome"], sort=False):
        row = dict(zip([*CELL_KEYS, "outcome"], keys, strict=True))
        outcome = row["outcome"]
        share = dict(zip(part["source"], part["share"], strict=True))
        p = dict(zip(part["source"], part["p_value"], strict=True))
        rows.append({
            "cell": cell_label(row, [], n_train),
            "outcome": outcome,
            "k init x k order": f"{part['n_init'].iloc[0]} x {part['n_order'].iloc[0]}",
            "init seed share (F-test)":
                f"{_num(share['init seed'])} ({stats.format_p(p['init seed'])})",
            "order seed share (F-test)":
                f"{_num(share['order seed'])} ({stats.format_p(p['order seed'])})",
            "rest share": _num(share["rest"]),
            "note": part["note"].iloc[0] or "",
        })
    return pd.DataFrame(rows)


def _one_line(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _figure_block(figures: Sequence[StatsFigure], name: str) -> str:
    return "\n\n".join(f.markdown() for f in figures if f.name == name)


VERDICTS_TEXT = """\
How to read the comparisons. *better*: the difference test rejects "no difference" after
Holm's correction. *equivalent*: two one-sided tests (TOST) reject a difference as large as the
margin after Holm's correction; a "not significant" difference is never read as "the same".
*inconclusive*: neither. When both hold, the verdict is *equivalent* and the words say that the
difference, though detected, is smaller than the margin. p-values are Holm-corrected within each
family: one family per table, outcome and kind of test (difference or equivalence). Intervals
are 95% percentile bootstrap intervals over seeds (pairs of runs resampled together when the
cells share their seeds), with a fixed random state. The TOST for P(A lower) is read off the
same bootstrap replicates (its p-value is the larger share of replicates beyond either end of
the margin), so it keeps the pairing by seed; its smallest non-zero p-value is 1 / resamples.
When every seed gives the same difference in reaching the target or in epochs to target, no
spread is left for a t-based TOST, and an exact binomial bound on the share of seeds that
disagree is used instead ({rate_seeds} agreeing seeds are needed to show a reached-target gap
within ±{margin_rate:g}, and {epoch_seeds} for epochs to target within ±{margin_epochs:.0%} of
the budget, before Holm's correction); for a loss with no spread the t-test's limit is used."""

def _verdicts_text(settings: dict[str, Any]) -> str:
    """How to read the verdicts, with the seeds the exact binomial bound needs at these margins."""
    alpha = float(settings.get("alpha", stats.ALPHA))
    margin_rate = float(settings.get("margin_rate", stats.MARGIN_RATE))
    margin_epochs = float(settings.get("margin_epochs", stats.MARGIN_EPOCHS))
    return VERDICTS_TEXT.format(
        rate_seeds=stats.agreeing_seeds_needed(margin_rate, alpha), margin_rate=margin_rate,
        epoch_seeds=stats.agreeing_seeds_needed(margin_epochs, alpha),
        margin_epochs=margin_epochs)


POWER_TEXT = """\
*Seeds for 80% power*: how many seeds per cell a difference of the observed size would need to
be detected with 80% power by a two-sided test at alpha = {alpha:g} (rates: normal test on Cohen's
h, computed as if unpaired; P(A lower): statsmodels' rank-test sample size; epochs and
framework losses: t-test on Cohen's d). It treats the observed difference as the true one, so
it is a rough guide; "∞" means no difference was observed."""


def _comparison_section(title: str, comparison: stats.Comparison, keys: Sequence[str],
                        intro: str, n_train: int, extra: str = "") -> str:
    if comparison.empty:
        return f"{title}\n\n{intro}\n\n{_empty_reason(comparison)}"
    parts = [title, intro, _table(comparison_table(comparison.table, keys, n_train=n_train)),
             POWER_TEXT.format(alpha=comparison.settings.get("alpha", stats.ALPHA))]
    if comparison.withheld:
        parts.append(comparison.withheld)
    if extra:
        parts.append(extra)
    return "\n\n".join(parts)


def _empty_reason(comparison: stats.Comparison) -> str:
    """Why a comparison table is empty; the long too-few-seeds text is said once, above."""
    if comparison.too_few_seeds:
        return (f"Not shown: fewer than {comparison.settings.get('min_seeds')} seeds per cell "
                "(see above).")
    return comparison.withheld or "Nothing to compare."


FACTORIAL_SUBSET = (
    "This experiment crossed every init seed with every order seed (a factorial design). Runs "
    "that share an init seed start from the same weights, so they are not independent seeds: "
    "the tables, figures and tests of this section use only the runs whose init and order "
    "seeds have the same index (one independent seed per init seed), and the variance split "
    "at the end uses every run.")


def _descriptive_only(tables: stats.StatsTables, min_seeds: int) -> str:
    """The below-the-minimum sentence: for the whole report, or for the cells it concerns."""
    counts = tables.summary["seeds"]
    fewest = int(counts.min()) if len(counts) else 0
    if fewest >= min_seeds:
        return ""
    comparisons = (tables.optimizers, tables.frameworks, tables.trend)
    if all(c.empty for c in comparisons):
        return (f"**{stats.DESCRIPTIVE_ONLY.format(min_seeds=min_seeds)}** This experiment has "
                f"{fewest} seeds in its smallest cell; comparisons need at least {min_seeds} "
                f"seeds in both cells.")
    small = int((counts < min_seeds).sum())
    return (f"**{small} of {len(counts)} cells have fewer than {min_seeds} seeds (fewest: "
            f"{fewest}); they are described but not compared, because "
            f"{stats.WHY_DESCRIPTIVE}**")


def _summary_section(tables: stats.StatsTables, figures: Sequence[StatsFigure],
                     n_train: int) -> str:
    target = tables.summary["target"].iloc[0] if len(tables.summary) else math.nan
    tolerance = tables.settings.get("stuck_tolerance", stats.STUCK_TOLERANCE)
    definitions = f"""\
- *reached target*: seeds whose validation accuracy was ≥ {target:g} at some epoch, out of all
  seeds (stuck, diverged and failed runs included), with its Wilson 95% interval.
- *stuck ≈0.5 / ≈0.75*: runs that finished without error, never reached the target and ended
  within ±{tolerance:g} of accuracy 0.5 (a constant prediction) or 0.75 (three of the four
  quadrants); *other*: the rest of those runs; *diverged* and *failed*: runs with that status;
  *dead layer*: runs whose final first layer is inactive (no positive pre-activation) on every
  training point, computed from the stored weights (it overlaps the other kinds; n/a without
  weights).
- *final val acc / loss*: median and quartiles (linear interpolation), interquartile mean (IQM,
  the mean of the middle half) and mean with its 95% percentile bootstrap interval, over seeds
  with a finite value.
- *epochs to target*: the first epoch by which half of the seeds had reached the target ("not
  reached" if fewer than half ever did), and the restricted mean of min(epochs to target,
  epochs), which counts a run that never reached the target as the full budget, with its 95%
  bootstrap interval."""
    parts = ["### Summary per cell",
             _table(headline_table(tables.summary, n_train=n_train)), definitions,
             _figure_block(figures, "stats_success_rates.png"),
             _figure_block(figures, "stats_reached_by_epoch.png")]
    return "\n\n".join(p for p in parts if p)


def _variance_section(tables: stats.StatsTables, figures: Sequence[StatsFigure],
                      n_train: int) -> str:
    if tables.variance is None or tables.variance.empty:
        return ""
    intro = ("Each cell ran a factorial seed design: every init seed with every order seed. "
             "The outcome's variance is split into the init seed (initial weights), the order "
             "seed (batch order) and the rest, by variance components of a two-way ANOVA "
             "without replication; F-test p-values are uncorrected.")
    return "\n\n".join(p for p in [
        "### Where the seed variance comes from", intro,
        _table(variance_table(tables.variance, n_train=n_train)),
        _figure_block(figures, "stats_variance_split.png"),
    ] if p)


def stats_markdown(
    source: Path | str | stats.StatsTables,
    *,
    figures: Sequence[StatsFigure] = (),
    n_train: int = N_TRAIN,
) -> str:
    """The statistics section of the report, as Markdown.

    Parameters
    ----------
    source
        A results directory (the tables are computed with :func:`xorbench.stats.tables_from_dir`)
        or already computed :class:`xorbench.stats.StatsTables`.
    figures
        Figures written by :func:`write_stats_figures`, embedded beside their tables.
    n_train
        The training set size, so full-batch GD is labelled "full (n)"; read from the manifest
        when ``source`` is a results directory.
    """
    if isinstance(source, stats.StatsTables):
        tables = source
    else:
        tables = stats.tables_from_dir(Path(source))
        experiment = results.read_manifest(Path(source)).get("experiment") or {}
        n_train = int(experiment.get("n_train", n_train))
    settings = tables.settings
    min_seeds = int(settings.get("min_seeds", stats.MIN_SEEDS_FOR_TESTS))
    margin_rate = settings.get("margin_rate", stats.MARGIN_RATE)
    margin_prob = settings.get("margin_prob", stats.MARGIN_PROB)
    margin_epochs = settings.get("margin_epochs", stats.MARGIN_EPOCHS)
    margin_loss = settings.get("margin_loss", stats.MARGIN_LOSS)
    margins = (f"Margins: reached-target rate ±{margin_rate:g}; P(A lower loss) 0.5 ± "
               f"{margin_prob:g}; restricted mean epochs ±{margin_epochs:.0%} of the epoch "
               f"budget; Lightning - Keras final loss ±{margin_loss:g} nats.")
    no_opt = [key for key in CELL_KEYS if key != "optimizer"]
    no_fw = [key for key in CELL_KEYS if key != "framework"]
    sections = [
        "## Seed variance",
        FACTORIAL_SUBSET if settings.get("factorial_subset") == "diagonal" else "",
        _descriptive_only(tables, min_seeds),
        _summary_section(tables, figures, n_train),
        f"{_verdicts_text(settings)} {margins}" if not (tables.optimizers.empty
                                             and tables.frameworks.empty) else "",
        _comparison_section(
            "### Optimizers compared", tables.optimizers, no_opt,
            "Each pair of optimizers within one framework, batch size, learning rate, hidden "
            "layers and epochs: the reached-target rate (McNemar exact when the seeds are "
            "shared, else Fisher exact), the final validation loss as P(A lower) with a "
            "Brunner-Munzel test, and epochs to target as the restricted mean of min(epochs "
            "to target, epochs).", n_train, _figure_block(figures, "stats_forest.png")),
        _comparison_section(
            "### Lightning against Keras", tables.frameworks, no_fw,
            "The two frameworks start every seed from the same initial weights and batch "
            "order, so each cell is compared seed by seed: McNemar and a TOST on the per-seed "
            "differences of reaching the target, a paired t-test and TOST on the per-seed "
            "differences of the final validation loss.", n_train),
        _trend_section(tables.trend, n_train),
        _variance_section(tables, figures, n_train),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def _trend_section(trend: stats.Comparison, n_train: int) -> str:
    intro = ("For each framework and optimizer: Spearman's rho between log2 batch size and "
             "whether each run reached the target, over every run at those batch sizes, with a "
             "Fisher-z 95% interval; Holm-corrected across rows. rho < 0: larger batches reach "
             "the target less often. Seeds are shared across batch sizes, but the test treats "
             "runs as independent.")
    if trend.empty:
        return f"### Batch-size trend\n\n{intro}\n\n{_empty_reason(trend)}"
    parts = ["### Batch-size trend", intro, _table(trend_table(trend.table, n_train=n_train)),
             "*Seeds per batch size for 80% power*: Fisher-z sample size for a correlation of "
             "the observed size, divided among the batch sizes; a rough guide."]
    if trend.withheld:
        parts.append(trend.withheld)
    return "\n\n".join(parts)
