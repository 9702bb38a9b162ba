"""The report: tables, figures and Markdown from fabricated results directories (no training)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from fakes import FakeRun, grid_runs, seed_runs, write_results_dir, xor_rule_weights
from PIL import Image

from xorbench import report
from xorbench.data import xor_labels
from xorbench.regions import LabelPredictor, WeightsClassifier, as_labels, plot_regions
from xorbench.results import CELL_KEYS, ResultsDirError

# Field case F2: one cell, 10 seeds; 7 end at 1.0, 2 at 0.75, 1 at 0.5.
F2_ACCURACIES = [1.0, 0.75, 1.0, 1.0, 0.5, 1.0, 1.0, 0.75, 1.0, 1.0]
EPOCHS = 12
FRAMEWORK_MODULES = ("torch", "lightning", "pytorch_lightning", "keras", "tensorflow", "tf_keras")
FIGURE_NAMES = {"val_loss.png", "val_acc.png", "final_accuracy.png", "decision_regions.png"}
# The seed-variance section adds its own figures, named stats_*.png.
STATS_PREFIX = "stats_"


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    """Close the figures a test leaves open, so none leaks into the next test."""
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def f2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = seed_runs(F2_ACCURACIES, epochs=EPOCHS)
    return write_results_dir(tmp_path_factory.mktemp("f2") / "results", runs)


@pytest.fixture(scope="module")
def messy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 x 2 x 2 grid of 5 seeds plus a diverged run, a failed run, a stuck run (F1) and a
    cell at another lr whose every seed failed."""
    runs = grid_runs(seeds=5, epochs=EPOCHS)
    runs += [
        FakeRun("keras", "adam", 32, epochs=EPOCHS, seed=5, final_val_acc=0.5,
                status="diverged", diverged_at=4),
        FakeRun("keras", "adam", 32, epochs=EPOCHS, seed=6, status="failed",
                error="RuntimeError: shapes do not match | (3, 4)\n  in line 7"),
        FakeRun("lightning", "sgd", 150, epochs=EPOCHS, seed=5, final_val_acc=0.5),
        *(FakeRun("lightning", "adam", 32, lr=0.1, epochs=EPOCHS, seed=s, status="failed",
                  error="ValueError: boom") for s in range(2)),
    ]
    return write_results_dir(tmp_path_factory.mktemp("messy") / "results", runs)


@dataclass(frozen=True)
class Rendered:
    """The messy results rendered here and by a fresh interpreter."""

    here: Path  # report.md written in this process
    there: Path  # report.md written by a fresh interpreter
    caught: list[warnings.WarningMessage]  # every warning raised while rendering here
    imported: list[str]  # framework modules loaded by the fresh interpreter


def _render_in_fresh_interpreter(results_dir: Path, out: Path) -> list[str]:
    """Write the report in a new Python process in which FutureWarning and DeprecationWarning
    are errors (imports included); return the framework modules it loaded."""
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from xorbench.report import write_report\n"
        "write_report(Path(sys.argv[1]), Path(sys.argv[2]))\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in sys.argv[3:])))\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-W", "error::DeprecationWarning",
         "-c", code, str(results_dir), str(out), *FRAMEWORK_MODULES],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    imported: list[str] = json.loads(done.stdout.splitlines()[-1])
    return imported


@pytest.fixture(scope="module")
def messy(messy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    out = tmp_path_factory.mktemp("reports")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        here = report.write_report(messy_dir, out / "here")
    imported = _render_in_fresh_interpreter(messy_dir, out / "there")
    return Rendered(here, out / "there" / report.REPORT, caught, imported)


def _history(results_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs and history tables of ``results_dir``."""
    res = report.load_results(results_dir)
    assert res.history is not None
    return res.runs, res.history


def _row(table: pd.DataFrame, **keys: str) -> pd.Series:
    """The one row of ``table`` whose columns equal ``keys``."""
    match = table[np.logical_and.reduce([table[k] == v for k, v in keys.items()])]
    assert len(match) == 1, keys
    return match.iloc[0]


def _points(fig: plt.Figure, gid: str) -> np.ndarray:
    """All scatter offsets with ``gid`` in ``fig``, shape (n, 2)."""
    offsets = [c.get_offsets() for ax in fig.axes for c in ax.collections if c.get_gid() == gid]
    return np.vstack(offsets) if offsets else np.empty((0, 2))


# ---------------------------------------------------------------------------------------------
# F2: a median hides bimodal seeds


def test_f2_summary_says_7_of_10_reached(f2_dir: Path) -> None:
    table = report.summary_table(report.load_results(f2_dir).runs)

    assert len(table) == 1
    row = table.iloc[0]
    assert row["reached target"] == "7/10"
    assert row["batch"] == "full (150)"
    q1, median, q3 = np.quantile(F2_ACCURACIES, [0.25, 0.5, 0.75])  # numpy as the oracle
    assert row["final val acc, median [Q1, Q3]"] == f"{median:.2f} [{q1:.2f}, {q3:.2f}]"
    assert row["final val acc, median [Q1, Q3]"] == "1.00 [0.81, 1.00]"


def test_f2_report_states_7_of_10(f2_dir: Path, tmp_path: Path) -> None:
    text = report.write_report(f2_dir, tmp_path).read_text()

    summary = text.split("## Summary per cell")[1].split("###")[0]
    rows = [line for line in summary.splitlines() if line.startswith("| lightning ")]
    assert len(rows) == 1
    assert "| 7/10 " in rows[0]
    assert "Final validation accuracy of every seed (10 points)" in text


def test_f2_figure_draws_all_10_seeds_and_the_median(f2_dir: Path) -> None:
    runs = report.load_results(f2_dir).runs

    with report.figure_context():
        fig = report.final_accuracy_figure(runs, target=0.9)

    points = _points(fig, "seeds")
    assert len(points) == 10
    np.testing.assert_allclose(np.sort(points[:, 1]), np.sort(F2_ACCURACIES))
    # Equal accuracies are set side by side, not on top of each other.
    assert len(np.unique(points[points[:, 1] == 1.0, 0])) == 7
    np.testing.assert_allclose(_points(fig, "median")[:, 1], [1.0])


def test_f2_figure_is_the_same_on_every_drawing(f2_dir: Path) -> None:
    runs = report.load_results(f2_dir).runs

    with report.figure_context():
        first = _points(report.final_accuracy_figure(runs, target=0.9), "seeds")
        second = _points(report.final_accuracy_figure(runs, target=0.9), "seeds")

    np.testing.assert_array_equal(first, second)


def test_spread_offsets_separate_equal_values_deterministically() -> None:
    values = np.array([1.0, 0.5, 1.0, 1.0, 0.99, 0.5])

    offsets = report.spread_offsets(values, width=0.3)

    np.testing.assert_array_equal(offsets, report.spread_offsets(values, width=0.3))
    assert len(np.unique(offsets[values >= 0.99])) == 4  # 0.99 is within the tolerance of 1.0
    assert offsets[values >= 0.99].sum() == pytest.approx(0.0)
    assert sorted(offsets[values == 0.5]) == pytest.approx([-0.06 / 2, 0.06 / 2])


# ---------------------------------------------------------------------------------------------
# Epochs to target, representative seeds


@pytest.mark.parametrize(
    ("epochs", "expected"),
    [
        ([3, 5, None, 7, None, None], 7.0),  # 3 of 6 reached: the 3rd smallest
        ([9, 2, 4, 6, 8, None, None, None, None, None], 9.0),  # 5 of 10: the 5th smallest
        ([9, 2, 4, 6, None, None, None, None, None, None], np.inf),  # 4 of 10: not reached
        ([4, 1, 8], 4.0),
        ([None, None], np.inf),
    ],
)
def test_median_epochs_to_target_counts_non_reaching_runs_as_last(
    epochs: list[int | None], expected: float
) -> None:
    series = pd.Series(epochs, dtype="Int64")

    assert report.median_epochs_to_target(series) == expected


def test_summary_shows_not_reached_when_fewer_than_half_reached(tmp_path: Path) -> None:
    runs = seed_runs([1.0, 1.0, 0.5, 0.5, 0.5], epochs=EPOCHS)
    results = report.load_results(write_results_dir(tmp_path, runs))

    row = report.summary_table(results.runs).iloc[0]

    assert (row["reached target"], row["median epochs to target"]) == ("2/5", "not reached")


def test_representative_run_is_the_median_seed_ties_to_lowest() -> None:
    def seed_of(accuracies: list[float]) -> int | None:
        cell = pd.DataFrame({"seed": range(len(accuracies)), "final_val_acc": accuracies})
        chosen = report.representative_run(cell)
        return None if chosen is None else int(chosen["seed"])

    assert seed_of([0.5, 1.0, 0.96]) == 2
    assert seed_of([1.0, 0.75, 0.75, 1.0]) == 0  # median 0.875: all four tie
    assert seed_of([0.9, np.nan, 0.7, 0.94]) == 0
    assert seed_of([np.nan, np.nan]) is None


def test_representative_runs_skip_weights_that_are_not_finite(f2_dir: Path) -> None:
    res = report.load_results(f2_dir)
    assert res.weights is not None
    weights = res.weights

    before = report.representative_runs(res.runs, weights)
    # A diverged run's weights: seed 0 is the median seed until its weights are NaN.
    nan_params = [p * np.nan if seed == 0 else p for seed, p in enumerate(weights["params"])]
    after = report.representative_runs(res.runs, weights.assign(params=nan_params))

    assert before[["seed", "cell_median"]].values.tolist() == [[0, 1.0]]
    assert after[["seed", "cell_median"]].values.tolist() == [[2, 1.0]]  # next seed at 1.0


# ---------------------------------------------------------------------------------------------
# F8: decision regions with network models


def _xor_classifier() -> WeightsClassifier:
    return WeightsClassifier(xor_rule_weights())


def test_xor_rule_weights_classify_like_the_data_rule() -> None:
    clf = _xor_classifier()
    x = np.random.default_rng(0).uniform(-1, 1, size=(2000, 2))

    labels = clf.predict(np.array([[0.2, 0.8], [0.8, -0.8]]))

    np.testing.assert_array_equal(labels, [1, 0])
    assert labels.ndim == 1 and labels.dtype.kind == "i"
    off_axes = np.abs(x).min(axis=1) > 1e-3  # on the axes the rule's tie meets float rounding
    np.testing.assert_array_equal(clf.predict(x)[off_axes], xor_labels(x)[off_axes])


def test_regions_helper_hands_predict_a_float_grid_for_integer_x() -> None:
    X = np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]])  # integer dtype: the F8 trap
    y = np.array([[1.0], [0.0], [0.0], [1.0]])  # float, shape (n, 1): mlxtend would raise
    seen: list[np.ndarray] = []
    returned: list[np.ndarray] = []

    def predict(grid: np.ndarray) -> np.ndarray:
        seen.append(grid.copy())
        returned.append(_xor_classifier().predict(grid))
        return returned[-1]

    with report.figure_context():
        _, ax = plt.subplots(figsize=(3, 3), dpi=100)
        assert plot_regions(X, y, predict, ax=ax) is ax

    grid, labels = np.vstack(seen), np.concatenate(returned)
    assert grid.dtype == np.float64
    assert len(np.unique(grid[:, 0])) >= 200 and len(np.unique(grid[:, 1])) >= 200
    assert labels.ndim == 1 and labels.dtype.kind == "i"
    for point, expected in [((0.2, 0.8), 1), ((0.8, -0.8), 0)]:
        nearest = np.argmin(np.hypot(*(grid - point).T))
        assert np.abs(grid[nearest] - point).max() < 0.02
        assert labels[nearest] == expected


def test_mlxtend_alone_collapses_an_integer_grid() -> None:
    """Why the helper exists: mlxtend casts its grid to X's dtype (F8). If this starts failing,
    mlxtend has changed and the cast in ``plot_regions`` may be dropped."""
    from mlxtend.plotting import plot_decision_regions

    X = np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]])
    seen: list[np.ndarray] = []

    class Spy:
        def predict(self, grid: np.ndarray) -> np.ndarray:
            seen.append(grid)
            return _xor_classifier().predict(grid)

    with report.figure_context():
        _, ax = plt.subplots(figsize=(3, 3), dpi=100)
        plot_decision_regions(X, np.array([1, 0, 0, 1]), clf=Spy(), ax=ax)

    assert seen[0].dtype.kind == "i" and len(np.unique(seen[0][:, 0])) <= 5


def test_label_predictor_returns_1d_int_and_refuses_probabilities() -> None:
    column = LabelPredictor(lambda x: (x[:, :1] > 0).astype(np.float32))
    probabilities = LabelPredictor(lambda x: np.full(len(x), 0.7))

    labels = column.predict(np.array([[1, 0], [-1, 0]]))

    np.testing.assert_array_equal(labels, [1, 0])
    assert labels.ndim == 1 and labels.dtype.kind == "i"
    with pytest.raises(ValueError, match=r"predict's output must hold class labels .* 0\.7"):
        probabilities.predict(np.zeros((3, 2)))


def test_as_labels_takes_a_float_column_and_refuses_other_shapes() -> None:
    np.testing.assert_array_equal(as_labels(np.array([[1.0], [0.0]])), [1, 0])
    with pytest.raises(ValueError, match=r"y must have shape \(n,\) or \(n, 1\); received"):
        as_labels(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="y must hold class labels such as 0 and 1; received NaN"):
        as_labels(np.array([1.0, np.nan]))


def test_label_predictor_refuses_a_class_missing_from_y() -> None:
    predictor = LabelPredictor(lambda x: np.full(len(x), 2), classes=[0, 1])

    with pytest.raises(ValueError, match=r"predict returned class 2, which is not among the "
                       r"classes of y \(0, 1\)"):
        predictor.predict(np.zeros((3, 2)))


# ---------------------------------------------------------------------------------------------
# F9: deterministic figures, no warnings, bands named


def test_two_renders_in_two_processes_are_byte_identical(messy: Rendered) -> None:
    names = {p.name for p in (messy.here.parent / report.FIGURES).iterdir()}

    assert {n for n in names if not n.startswith(STATS_PREFIX)} == FIGURE_NAMES
    assert messy.here.read_bytes() == messy.there.read_bytes()
    for name in names:
        a = (messy.here.parent / report.FIGURES / name).read_bytes()
        assert a == (messy.there.parent / report.FIGURES / name).read_bytes(), name


def test_pngs_carry_no_version_metadata(messy: Rendered) -> None:
    first = messy.here

    for name in FIGURE_NAMES:
        with Image.open(first.parent / report.FIGURES / name) as image:
            assert "Software" not in image.info, name
            assert image.info.get("dpi", (report.DPI,))[0] == pytest.approx(report.DPI, abs=0.1)


def test_report_generation_raises_no_warning(messy: Rendered) -> None:
    # The fresh interpreter ran with FutureWarning and DeprecationWarning as errors; here every
    # warning of any category was recorded.
    assert [f"{w.category.__name__}: {w.message}" for w in messy.caught] == []


def test_each_figure_caption_names_its_band(messy: Rendered) -> None:
    lines = [line for line in messy.here.read_text().splitlines() if line.strip()]

    images = [i for i, line in enumerate(lines) if line.startswith("![")]
    linked = {name for i in images for name in re.findall(r"\(figures/(.+?)\)", lines[i])}
    assert {n for n in linked if not n.startswith(STATS_PREFIX)} == FIGURE_NAMES
    assert linked == {p.name for p in (messy.here.parent / report.FIGURES).iterdir()}
    for i in images:
        caption = lines[i + 1]
        assert caption.startswith("*Figure "), caption
        if "figures/val_" in lines[i]:
            assert re.search(r"Band: interquartile range over 2 to 7 seeds per cell", caption)
        elif f"figures/{STATS_PREFIX}" in lines[i]:
            assert re.search(r"(Band|bar|bars|band): [^.]*(interval|seeds|variance)", caption), (
                caption
            )
        else:
            assert "Band: none" in caption


# ---------------------------------------------------------------------------------------------
# F11: curves against the epoch


def test_curves_are_drawn_against_epochs_0_to_e(messy_dir: Path) -> None:
    runs, history = _history(messy_dir)

    with report.figure_context():
        fig = report.curves_figure(runs, history, "val_acc", target=0.9)

    lines = [line for ax in fig.axes for line in ax.get_lines() if line.get_gid() == "median"]
    xs = [np.asarray(line.get_xdata()) for line in lines]
    assert len(xs) == 2 * 2 * 2 + 1  # every cell, the all-failed one included
    assert sum(len(x) == 1 for x in xs) == 1  # the all-failed cell: epoch 0 only
    for x in xs:
        np.testing.assert_array_equal(x, np.arange(len(x)))
    assert sum(len(x) == EPOCHS + 1 for x in xs) == 8


def test_curve_median_matches_plain_pandas(messy_dir: Path) -> None:
    _, history = _history(messy_dir)
    cell = history[(history["framework"] == "keras") & (history["optimizer"] == "adam")
                   & (history["batch_size"] == 32)]

    quantiles = report.curve_quantiles(cell, "val_loss")

    expected = cell.groupby("epoch")["val_loss"].median()  # NaN skipped by pandas itself
    np.testing.assert_allclose(quantiles["median"], expected.to_numpy())
    assert quantiles["seeds"].iloc[4] == 5  # the diverged run's epoch 4 loss is NaN
    assert quantiles["seeds"].iloc[0] == 7  # the failed run still has its epoch 0


# ---------------------------------------------------------------------------------------------
# Diverged, failed and stuck runs; no framework imports; bad input


def test_report_keeps_diverged_failed_and_stuck_runs(messy: Rendered, messy_dir: Path) -> None:
    text = messy.here.read_text()
    table = report.summary_table(report.load_results(messy_dir).runs)
    assert table.to_markdown(index=False, disable_numparse=True) in text

    adam = _row(table, framework="keras", optimizer="adam", batch="32", lr="0.05")
    assert (adam["seeds"], adam["reached target"], adam["diverged"], adam["failed"]) == (
        "7", "3/7", "1", "1"
    )
    assert adam["median epochs to target"] == "not reached"
    stuck = _row(table, framework="lightning", optimizer="sgd", batch="full (150)")
    assert stuck["reached target"] == "3/6"
    failed = _row(table, framework="lightning", optimizer="adam", batch="32", lr="0.1")
    assert (failed["reached target"], failed["final val acc, median [Q1, Q3]"]) == ("0/2", "n/a")
    assert "RuntimeError: shapes do not match \\| (3, 4) in line 7" in text
    runs = report.load_results(messy_dir).runs
    diverged = report.diverged_table(runs)
    assert diverged[["seed", "stopped at epoch"]].values.tolist() == [["5", "4"]]
    assert diverged.to_markdown(index=False, disable_numparse=True) in text
    assert "(42 points)" in text and "3 run(s) without a final accuracy" in text


def test_report_imports_no_framework(messy: Rendered) -> None:
    assert messy.imported == []
    assert messy.there.is_file()


def test_report_without_weights_or_history_still_writes(tmp_path: Path) -> None:
    results_dir = write_results_dir(tmp_path / "results", seed_runs([1.0, 0.5], epochs=3))
    report.write_report(results_dir, tmp_path / "out")  # a full report first
    (results_dir / "weights.parquet").unlink()
    (results_dir / "history.parquet").unlink()

    text = report.write_report(results_dir, tmp_path / "out").read_text()

    assert "No stored weights" in text and "No history table" in text
    drawn = {p.name for p in (tmp_path / "out" / report.FIGURES).iterdir()}
    assert {n for n in drawn if not n.startswith(STATS_PREFIX)} == {"final_accuracy.png"}


def test_not_a_results_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ResultsDirError, match="is not an xorbench results directory"):
        report.write_report(tmp_path, tmp_path / "out")


def test_runs_without_a_needed_column_are_refused(f2_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "results"
    broken.mkdir()
    for name in ("manifest.json", "history.parquet", "weights.parquet"):
        (broken / name).write_bytes((f2_dir / name).read_bytes())
    runs = pd.read_parquet(f2_dir / "runs.parquet").drop(columns=["epochs_to_target"])
    runs.to_parquet(broken / "runs.parquet")

    message = r"runs.parquet lacks column\(s\) epochs_to_target; it has run_id, cell,"
    with pytest.raises(ValueError, match=message):
        report.load_results(broken)


def test_cell_order_puts_frameworks_of_a_cell_together() -> None:
    runs = pd.DataFrame(
        [("keras", "adam", 32), ("lightning", "sgd", 150), ("keras", "sgd", 1),
         ("lightning", "adam", 32), ("lightning", "sgd", 1)],
        columns=["framework", "optimizer", "batch_size"],
    ).assign(lr=0.05, hidden="3x4", epochs=10)

    ordered = report.in_cell_order(runs)

    assert list(ordered[["framework", "optimizer", "batch_size"]].itertuples(index=False)) == [
        ("lightning", "sgd", 1), ("keras", "sgd", 1), ("lightning", "sgd", 150),
        ("lightning", "adam", 32), ("keras", "adam", 32),
    ]
    assert list(ordered.columns) == [*CELL_KEYS]


@pytest.mark.parametrize(("impl", "words"), [
    (None, "Keras trained adam with its own optimizer classes (`native`"),
    ("aligned", "Keras trained adam with xorbench's classes that implement torch's"),
])
def test_intro_names_the_keras_optimizer_implementation(
    tmp_path: Path, impl: str | None, words: str
) -> None:
    results_dir = write_results_dir(tmp_path, grid_runs(seeds=2))
    if impl is not None:
        manifest_path = results_dir / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["experiment"]["optimizer_impl"] = impl
        manifest_path.write_text(json.dumps(manifest))

    intro = report.intro_markdown(report.load_results(results_dir), "t")

    assert words in intro


def test_intro_leaves_the_implementation_out_without_keras_rmsprop_or_adam(
    tmp_path: Path,
) -> None:
    runs = grid_runs(frameworks=("keras",), optimizers=("sgd",), seeds=2)
    intro = report.intro_markdown(report.load_results(write_results_dir(tmp_path, runs)), "t")

    assert "(`native`" not in intro
    assert "aligned" not in intro


def test_a_resumed_run_lists_each_session_with_its_code_and_workers() -> None:
    manifest = {"sessions": [
        "2026-01-02T03:04:05+0000",  # a manifest written before sessions were described
        {"started": "2026-01-03T00:00:00+0000", "workers": 2, "scheduler": None,
         "git_commit": "abc", "code_digest": "0123456789ab"},
        {"started": "2026-01-04T00:00:00+0000", "workers": 4, "scheduler": "tcp://127.0.0.1:1",
         "git_commit": "def", "code_digest": "ba9876543210"},
    ]}

    items = dict(report._machine_items(manifest))

    assert "git commit (last session)" in items  # the top-level commit is the last session's

    assert items["sessions (resumed)"] == (
        "2026-01-02T03:04:05+0000; 2026-01-03T00:00:00+0000 (2 local workers, commit abc, code "
        "0123456789ab); 2026-01-04T00:00:00+0000 (Dask tcp://127.0.0.1:1, commit def, code "
        "ba9876543210)")


def test_intro_says_batch_size_for_one_and_batch_sizes_for_more(tmp_path: Path) -> None:
    one = write_results_dir(tmp_path / "one", grid_runs(batch_sizes=(150,), seeds=2))
    two = write_results_dir(tmp_path / "two", grid_runs(batch_sizes=(32, 150), seeds=2))

    assert "at batch size full (150). It holds" in report.intro_markdown(
        report.load_results(one), "t")
    assert "at batch sizes 32 and full (150). It holds" in report.intro_markdown(
        report.load_results(two), "t")
