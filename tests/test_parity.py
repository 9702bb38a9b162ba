"""Framework parity: Lightning against Keras from the same start, epoch by epoch.

The driver trains each framework in its own spawned worker, so these tests run in the torch
process without importing TensorFlow here. The fast tier trains a few epochs at full batch; the
agreement claims (aligned optimizers: float64 to 1e-9 for 20 epochs, float32 to 1e-5 for 10)
are ``slow``.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import multiprocessing
import os
import re
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from procs import alive, children

from xorbench import parity
from xorbench.adapters import parity_worker
from xorbench.adapters.base import Trace
from xorbench.cli import _parity_configs, build_parser, main
from xorbench.optimizers import OPTIMIZERS
from xorbench.parity import ParityConfig, run_parity


def _trace(losses: list[float], weights: list[list[float]]) -> Trace:
    history = np.zeros((len(losses), 4))
    history[:, 0] = losses
    history[:, 2] = losses
    return Trace(history, np.asarray(weights, dtype=np.float64), None, len(losses))


def test_compare_takes_the_largest_weight_difference_per_epoch() -> None:
    torch_side = _trace([0.5, 0.4], [[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    keras_side = _trace([0.5, 0.41], [[1.0, 2.0], [1.0, 2.5], [0.0, 2.0]])

    diffs = parity.compare(torch_side, keras_side)

    np.testing.assert_allclose(diffs["weight_diff"], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(diffs["loss_diff"], [0.0, 0.0, 0.01], atol=1e-15)
    assert parity.first_epoch_past(diffs, 0.1) == 1
    assert parity.first_epoch_past(diffs, 0.001) == 1
    assert parity.first_epoch_past(diffs, 2.0) is None


def test_a_run_that_stopped_early_is_past_any_tolerance() -> None:
    # A diverged side has fewer epochs: the missing ones are NaN, which never counts as agreement.
    full = _trace([0.5, 0.4], [[1.0], [1.0], [1.0]])
    short = _trace([0.5], [[1.0], [1.0]])

    diffs = parity.compare(full, short)

    assert parity.first_epoch_past(diffs, 1.0) == 2


def _settings(eps_keras: float, keras_class: str) -> dict[tuple[str, str], dict]:
    torch_obj = {"class": "torch.optim.rmsprop.RMSprop",
                 "settings": {"lr": 0.05, "alpha": 0.99, "eps": 1e-8, "momentum": 0.0,
                              "centered": False, "weight_decay": 0.0, "foreach": None},
                 "library_defaults": {"lr": 0.01, "alpha": 0.99, "eps": 1e-8}}
    keras_obj = {"class": keras_class,
                 "settings": {"learning_rate": 0.05, "rho": 0.99, "epsilon": eps_keras,
                              "momentum": 0.0, "centered": False, "name": "x"},
                 "library_defaults": {"learning_rate": 0.001, "rho": 0.9, "epsilon": 1e-7}}
    return {("lightning", "rmsprop"): torch_obj, ("keras", "rmsprop"): keras_obj}


def test_causes_come_from_the_rows_that_differ() -> None:
    aligned = parity.differences_table(
        _settings(1e-8, "xorbench.adapters.keras_aligned.TorchRMSprop"), ["rmsprop"], "aligned")
    native = parity.differences_table(
        _settings(1e-7, "keras.src.optimizers.rmsprop.RMSprop"), ["rmsprop"], "native")

    assert parity.causes(aligned, "float64") == {}
    cause = parity.causes(native, "float64")["rmsprop"]
    assert "formula: torch p -= lr * g / (sqrt(v) + eps) vs keras p -= lr * g / sqrt(v + eps)" in (
        cause)
    assert "eps: torch 1e-08 vs keras 1e-07" in cause
    eps_row = native[native["hyperparameter"].str.startswith("eps ")].iloc[0]
    assert (eps_row["torch default"], eps_row["keras default"]) == (1e-8, 1e-7)


def test_lr_held_in_float32_counts_only_in_float64() -> None:
    settings = _settings(1e-8, "xorbench.adapters.keras_aligned.TorchRMSprop")
    settings["keras", "rmsprop"]["settings"]["learning_rate"] = float(np.float32(0.05))
    table = parity.differences_table(settings, ["rmsprop"], "aligned")

    assert parity.causes(table, "float32") == {}
    assert parity.causes(table, "float64")["rmsprop"].startswith("lr: torch 0.05 vs keras 0.05000")


# ---------------------------------------------------------------------------------------------
# Real runs in both frameworks


@pytest.fixture(scope="module")
def short_float64() -> parity.ParityResult:
    """Every optimizer, full batch, 3 epochs, float64, native and aligned."""
    return run_parity(ParityConfig(batch_sizes=(150,), epochs=3, dtype="float64"))


def _row(summary: pd.DataFrame, impl: str, optimizer: str) -> pd.Series:
    rows = summary[(summary["impl"] == impl) & (summary["optimizer"] == optimizer)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_aligned_float64_agrees_and_native_gaps_are_named(
    short_float64: parity.ParityResult,
) -> None:
    summary = short_float64.summary

    for opt in OPTIMIZERS:
        aligned = _row(summary, "aligned", opt)
        assert aligned["max_weight_diff"] <= 1e-9 and aligned["max_loss_diff"] <= 1e-9, opt
        assert pd.isna(aligned["first_epoch_past"])
    for opt in ("rmsprop", "adam"):
        native = _row(summary, "native", opt)
        assert native["first_epoch_past"] == 1
        assert native["max_weight_diff"] > 1e-6
        assert native["cause"].startswith("formula: torch p -= lr")
    for opt in ("sgd", "asgd"):
        assert _row(summary, "native", opt)["cause"] == "rounding (float operation order)"
    # Epoch 0 compares the weights as each framework holds them after loading: identical.
    assert (short_float64.epochs.query("epoch == 0")["weight_diff"] == 0).all()


def test_f3_asgd_is_a_real_asgd_that_never_averaged(short_float64: parity.ParityResult) -> None:
    # F3: torch's defaults lambd 1e-4, alpha 0.75, t0 1e6, read back from both live objects.
    table = short_float64.differences
    rows = table[(table["impl"] == "native") & (table["optimizer"] == "asgd")]
    values = {row["hyperparameter"].split(" (")[0]: (row["torch"], row["keras"])
              for _, row in rows.iterrows()}
    assert values["lambd"] == (1e-4, 1e-4)
    assert values["alpha"] == (0.75, 0.75)
    assert values["t0"] == (1e6, 1e6)
    assert values["class"] == ("torch.optim.asgd.ASGD", "xorbench.adapters.keras_asgd.ASGD")

    # 3 epochs at full batch are 3 steps, far below t0: averaging was never active, and each
    # framework says so (False, not None as for other optimizers).
    asgd = _row(short_float64.summary, "native", "asgd")
    assert (asgd["asgd_averaging_torch"], asgd["asgd_averaging_keras"]) == (False, False)
    assert _row(short_float64.summary, "native", "sgd")["asgd_averaging_keras"] is None


def test_f3_keras_asgd_is_not_sgd_under_another_name(short_float64: parity.ParityResult) -> None:
    # Same start and order: the ASGD and SGD trajectories must differ (weight decay lambd*eta),
    # by far more than the float64 gap between the frameworks, and by the same amount in both.
    traces = short_float64.traces

    keras_gap = np.abs(traces["native", "asgd", 150, 0].weights
                       - traces["native", "sgd", 150, 0].weights)
    torch_gap = np.abs(traces["lightning", "asgd", 150, 0].weights
                       - traces["lightning", "sgd", 150, 0].weights)
    assert keras_gap[1:].max() > 1e-7
    np.testing.assert_allclose(keras_gap, torch_gap, atol=1e-12)


@pytest.mark.slow
def test_aligned_float64_agrees_to_1e9_for_20_epochs() -> None:
    result = run_parity(ParityConfig(batch_sizes=(1, 32, 150), epochs=20, dtype="float64",
                                     impls=("aligned",), tolerance=1e-9))

    assert len(result.summary) == 12
    assert result.summary["first_epoch_past"].isna().all(), result.summary.to_string()
    assert (result.summary[["max_loss_diff", "max_weight_diff"]] <= 1e-9).all().all()


@pytest.mark.slow
def test_aligned_float32_agrees_to_1e5_for_10_epochs() -> None:
    result = run_parity(ParityConfig(batch_sizes=(1, 32, 150), epochs=10, dtype="float32",
                                     impls=("aligned",), tolerance=1e-5))

    summary = result.summary
    past = summary[summary["first_epoch_past"].notna()]
    # A cell may pass 1e-5 only where float32 rounding alone moves a framework's run that far
    # from its float64 twin (measured: rmsprop at batch 1, torch drifts ~1.7e-5); never by a
    # formula or a setting.
    assert len(past) <= 1, summary.to_string()
    assert past["cause"].str.startswith("float32 rounding").all(), summary.to_string()
    assert (past["float32_drift_torch"] > 1e-5).all()
    within = summary[summary["first_epoch_past"].isna()]
    assert (within[["max_loss_diff", "max_weight_diff"]] <= 1e-5).all().all()


def test_written_tables_render_in_the_report(
    short_float64: parity.ParityResult, tmp_path: Path,
) -> None:
    from xorbench.report import parity_markdown_for

    parity.write_parity(short_float64, tmp_path / "parity")
    text = parity_markdown_for(tmp_path, None)

    assert text.startswith("## Framework parity")
    assert "### Parity, float64" in text
    assert re.search(r"\| aligned +\| adam +\| 150 +\| [0-9.e-]+ +\| [0-9.e-]+ +\| — ", text)
    assert "xorbench.adapters.keras_aligned.TorchAdam" in text
    assert parity_markdown_for(tmp_path / "nothing", None) == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dtype", "float16"], "--dtype must be one of float32, float64; received 'float16'"),
        (["--optimizer", "adagrad"], "optimizer must be one of sgd, asgd, rmsprop, adam; "
         "received 'adagrad'"),
        (["--batch-size", "0"], "batch_size must be from 1 to 150; received 0"),
        (["--tolerance", "-1"], "tolerance must be a finite number > 0; received -1.0"),
        (["--optimizer-impl", "fast"], "argument --optimizer-impl: invalid choice: 'fast'"),
        (["--epochs", "0"], "--epochs must be an integer from 1 to 100000; received '0'"),
        (["--epochs", "100001"], "--epochs must be an integer from 1 to 100000; received "
                                   "'100001'"),
        (["--batch-size", "32,32"], "argument --batch-size: --batch-size lists 32 more than "
         "once; list each value once"),
        (["--optimizer", "sgd,adam,sgd"], "--optimizer lists sgd more than once; list each "
         "value once"),
        (["--dtype", "float32,float32"], "--dtype lists float32 more than once; list each "
         "value once"),
        (["--batch-size", "1,01"], "--batch-size lists 1 more than once (again as 01); list "
         "each value once"),
    ],
)
def test_bad_parity_options_exit_2_with_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        sys.exit(main(["parity", *argv, "--out", str(tmp_path / "out")]))

    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert message in err
    assert list(tmp_path.iterdir()) == []


def test_run_refuses_a_repeated_value_in_the_same_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # One list parser serves both commands.
    out = tmp_path / "results"

    with pytest.raises(SystemExit) as info:
        main(["run", "--preset", "smoke", "--batch-size", "32,32", "--out", str(out)])

    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == ("xorbench run: error: argument --batch-size: --batch-size lists 32 more "
                   "than once; list each value once\n")
    assert list(tmp_path.iterdir()) == []


def test_parity_command_prints_and_writes_the_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "parity"
    argv = ["parity", "--optimizer", "sgd", "--batch-size", "150", "--epochs", "2",
            "--dtype", "float64", "--optimizer-impl", "aligned", "--lr", "0.1", "--out", str(out)]

    assert main(argv) == 0

    captured = capsys.readouterr()
    assert "### Parity, float64" in captured.out
    assert re.search(r"\| aligned +\| sgd +\| 150 +\|", captured.out)
    assert sorted(p.name for p in out.iterdir()) == [
        "parity-float64.json", "parity-float64.md", "parity_differences-float64.parquet",
        "parity_epochs-float64.parquet", "parity_summary-float64.parquet",
    ]
    epochs = pd.read_parquet(out / "parity_epochs-float64.parquet")
    assert list(epochs["epoch"]) == [0, 1, 2]
    # The progress bar, on stderr: one comparison (aligned sgd at batch 150), done.
    assert re.search(r"float64: 100%.*\| 1/1 comparisons", captured.err), captured.err

    record = json.loads((out / "parity-float64.json").read_text())
    assert record["command"] == (
        "xorbench parity --dtype float64 --optimizer sgd --batch-size 150 --epochs 2 "
        f"--optimizer-impl aligned --lr 0.1 --out {out}")
    assert {key: record[key] for key in ("optimizers", "batch_sizes", "epochs", "lr",
                                         "tolerance", "impls", "dtype")} == {
        "optimizers": ["sgd"], "batch_sizes": [150], "epochs": 2, "lr": 0.1,
        "tolerance": 1e-9, "impls": ["aligned"], "dtype": "float64"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", record["written"])
    assert f"Made {record['written']} with `{record['command']}`: 2 epochs, lr 0.1." in (
        (out / "parity-float64.md").read_text())


@pytest.mark.parametrize(
    "config",
    [
        ParityConfig(dtype="float64", epochs=20),
        ParityConfig(optimizers=("asgd", "rmsprop"), batch_sizes=(1, 150), epochs=3,
                     dtype="float32", impls=("native",), tolerance=1e-6, lr=0.1),
        ParityConfig(optimizers=("adam", "sgd", "asgd", "rmsprop"), epochs=10,
                     impls=("aligned",), tolerance=1e-5, lr=0.05),
    ],
)
def test_the_recorded_command_makes_the_same_check_again(
    config: ParityConfig, tmp_path: Path,
) -> None:
    # The oracle is the command line itself: parsed as `xorbench parity`, it gives the config.
    command = parity.parity_command(config, tmp_path / "my dir")
    words = shlex.split(command)

    args = build_parser().parse_args(words[1:])

    assert words[0] == "xorbench"
    assert _parity_configs(args) == [config]
    assert args.out == tmp_path / "my dir"


def test_parity_config_default_command_gives_only_dtype_and_out() -> None:
    assert parity.parity_command(ParityConfig(dtype="float64", epochs=20), Path("p")) == (
        "xorbench parity --dtype float64 --out p")


@pytest.mark.parametrize("quiet", [True, False])
def test_quiet_hides_the_parity_progress_bar(
    quiet: bool, short_float64: parity.ParityResult, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fake_run(config: ParityConfig, on_comparison_done: parity.ComparisonCallback,
                 ) -> parity.ParityResult:
        for comparison in parity.comparisons(config):
            on_comparison_done(*comparison)
        return short_float64

    monkeypatch.setattr(parity, "run_parity", fake_run)
    argv = ["parity", "--dtype", "float64", "--batch-size", "150", *(["-q"] if quiet else [])]

    assert main(argv) == 0

    err = capsys.readouterr().err
    assert ("8/8 comparisons" in err) is not quiet, err
    assert "comparisons in" in err  # the closing line stays


def test_keras_parity_worker_drops_only_the_retracing_note() -> None:
    # The logger and the records are pickled to the spawned Keras worker and looked at there.
    tf_logger = logging.getLogger("tensorflow")
    retracing = logging.makeLogRecord({
        "name": "tensorflow", "levelno": logging.WARNING, "levelname": "WARNING",
        "msg": "5 out of the last 5 calls to <function f> triggered tf.function retracing."})
    other_warning = logging.makeLogRecord({
        "name": "tensorflow", "levelno": logging.WARNING, "levelname": "WARNING",
        "msg": "a warning about something else"})
    error = logging.makeLogRecord({
        "name": "tensorflow", "levelno": logging.ERROR, "levelname": "ERROR",
        "msg": "an error"})
    context = multiprocessing.get_context("spawn")

    with cf.ProcessPoolExecutor(1, mp_context=context, initializer=parity_worker.init,
                                initargs=("keras", os.getpid())) as keras_worker:
        shown = [keras_worker.submit(logging.Logger.filter, tf_logger, record).result()
                 for record in (retracing, other_warning, error)]
        level = keras_worker.submit(logging.Logger.getEffectiveLevel, tf_logger).result()

    assert [bool(s) for s in shown] == [False, True, True]
    assert level <= logging.WARNING


def _as_float32(result: parity.ParityResult, **settings: Any) -> parity.ParityResult:
    """The float64 result relabelled as a float32 check made with other ``settings``."""
    config = replace(result.config, dtype="float32", **settings)
    return replace(result, config=config, summary=result.summary.assign(dtype="float32"))


def test_report_shows_what_made_each_float_types_tables(
    short_float64: parity.ParityResult, tmp_path: Path,
) -> None:
    from xorbench.report import parity_markdown_for

    # float64 first; later float32 alone, with other settings, into the same directory.
    directory = tmp_path / "p2"
    parity.write_parity(short_float64, directory)
    parity.write_parity(_as_float32(short_float64, optimizers=("asgd", "rmsprop"),
                                    batch_sizes=(1, 150), epochs=3), directory)
    records = {dtype: json.loads((directory / f"parity-{dtype}.json").read_text())
               for dtype in ("float32", "float64")}

    text = parity_markdown_for(tmp_path, directory)

    assert "Regenerate with" not in text
    float32, float64 = text.split("### Parity, float32")[1].split("### Parity, float64")
    assert float32.startswith(
        f"\n\nMade {records['float32']['written']} with `xorbench parity --dtype float32 "
        f"--optimizer asgd,rmsprop --batch-size 1,150 --epochs 3 --out {directory}`: "
        "3 epochs, lr 0.05.\n\n")
    assert float64.startswith(
        f"\n\nMade {records['float64']['written']} with `xorbench parity --dtype float64 "
        f"--batch-size 150 --epochs 3 --out {directory}`: 3 epochs, lr 0.05.\n\n")
    # The other float type's files are the user's: rewriting float32 left them.
    assert (directory / "parity_summary-float64.parquet").exists()


def test_parity_tables_without_a_record_still_render(
    short_float64: parity.ParityResult, tmp_path: Path,
) -> None:
    from xorbench.report import parity_markdown_for

    parity.write_parity(short_float64, tmp_path / "old")
    parity.write_parity(_as_float32(short_float64), tmp_path / "old")
    (tmp_path / "old" / "parity-float64.json").unlink()  # as written before the record
    (tmp_path / "old" / "parity-float32.json").write_text("{not json")

    text = parity_markdown_for(tmp_path, tmp_path / "old")

    for dtype in ("float32", "float64"):
        assert (f"### Parity, {dtype}\n\nThe settings these {dtype} tables were made with are "
                f"not recorded (no readable parity-{dtype}.json beside them)") in text


def _runs(optimizers: list[str], batches: list[int], lrs: list[float],
          hidden: str = "3x4") -> pd.DataFrame:
    rows = [(o, b, lr, hidden) for o in optimizers for b in batches for lr in lrs]
    return pd.DataFrame(rows, columns=["optimizer", "batch_size", "lr", "hidden"])


@pytest.mark.parametrize(
    ("runs", "sentence"),
    [
        (_runs(list(OPTIMIZERS), [150], [0.05]), None),
        (_runs(["sgd"], [150], [0.05]), "These parity tables were made at lr 0.05 for sgd, "
         "asgd, rmsprop, adam at batch 150; this run trained at lr 0.05 for sgd at batch 150."),
        (_runs(list(OPTIMIZERS), [32, 150], [0.05]), "this run trained at lr 0.05 for sgd, "
         "asgd, rmsprop, adam at batch 32, 150."),
        (_runs(list(OPTIMIZERS), [150], [0.1, 0.05]), "These parity tables were made at lr "
         "0.05 for sgd, asgd, rmsprop, adam at batch 150; this run trained at lr 0.05, 0.1 for "
         "sgd, asgd, rmsprop, adam at batch 150."),
        (_runs(list(OPTIMIZERS), [150], [0.05], hidden="3x3"), "They were made with hidden "
         "layers 3x4; this run trained 3x3."),
    ],
)
def test_report_says_when_the_parity_tables_do_not_match_the_run(
    runs: pd.DataFrame, sentence: str | None, short_float64: parity.ParityResult,
    tmp_path: Path,
) -> None:
    from xorbench.report import parity_markdown_for

    parity.write_parity(short_float64, tmp_path / "parity")

    text = parity_markdown_for(tmp_path, None, runs)

    first = text.split("\n\n")[1]
    if sentence is None:
        assert first.startswith("Each row trains one run"), first
    else:
        assert sentence in first, first


def test_an_unrecorded_lr_is_said_and_not_called_a_mismatch(
    short_float64: parity.ParityResult, tmp_path: Path,
) -> None:
    from xorbench.report import parity_markdown_for

    parity.write_parity(short_float64, tmp_path / "parity")
    (tmp_path / "parity" / "parity-float64.json").unlink()

    matching = parity_markdown_for(tmp_path, None, _runs(list(OPTIMIZERS), [150], [0.1]))
    other_cells = parity_markdown_for(tmp_path, None, _runs(["sgd"], [150], [0.1]))

    assert "this run trained" not in matching
    assert ("These parity tables were made at an unrecorded lr for sgd, asgd, rmsprop, adam at "
            "batch 150; this run trained at lr 0.1 for sgd at batch 150.") in other_cells


def test_report_gains_a_parity_section_from_a_parity_directory(
    short_float64: parity.ParityResult, tmp_path: Path,
) -> None:
    from fakes import seed_runs, write_results_dir

    from xorbench.report import write_report

    results = write_results_dir(tmp_path / "results", seed_runs([1.0, 0.5], epochs=3))
    parity.write_parity(short_float64, tmp_path / "elsewhere")

    plain = write_report(results, tmp_path / "plain").read_text()
    with_parity = write_report(results, tmp_path / "report",
                               parity=tmp_path / "elsewhere").read_text()

    assert "## Framework parity" not in plain
    section = with_parity.split("## Framework parity", 1)[1]
    # The run trained sgd alone; the tables hold every optimizer.
    assert section.startswith("\n\nThese parity tables were made at lr 0.05 for sgd, asgd, "
                              "rmsprop, adam at batch 150; this run trained at lr 0.05 for sgd "
                              "at batch 150.\n\n")
    assert "### Parity, float64" in section
    assert "| rmsprop     | formula " in section
    assert with_parity.index("## Framework parity") < with_parity.index("## Setup")


# ---------------------------------------------------------------------------------------------
# Several seeds per cell (--seeds)


def _seed_epochs(
    diffs_by_seed: dict[int, tuple[list[float], list[float]]],
) -> tuple[pd.DataFrame, ParityConfig, dict[parity.TraceKey, Trace]]:
    """An epoch table of one comparison (aligned sgd at batch 150) from each seed's per-epoch
    loss and weight differences; a shorter list is a Keras run that stopped early."""
    config = ParityConfig(optimizers=("sgd",), batch_sizes=(150,), dtype="float64",
                          impls=("aligned",), seeds=len(diffs_by_seed))
    epochs = max(len(losses) for losses, _ in diffs_by_seed.values())
    traces = {}
    for seed, (losses, weights) in diffs_by_seed.items():
        traces["lightning", "sgd", 150, seed] = _trace([0.5] * epochs, [[0.0]] * (epochs + 1))
        traces["aligned", "sgd", 150, seed] = _trace(
            [0.5 + d for d in losses], [[0.0], *([w] for w in weights)])
    return parity.epoch_table(config, traces), config, traces


def test_the_summary_reports_each_cells_worst_seed() -> None:
    # Seed 1 has the largest loss difference, seed 2 the largest weight difference and the
    # largest of any kind; seeds 1 and 2 pass the tolerance 0.05, seed 1 first.
    epochs, config, traces = _seed_epochs({
        0: ([0.0, 0.0], [0.0, 0.0]),
        1: ([0.3, 0.0], [0.01, 0.1]),
        2: ([0.01, 0.02], [0.0, 0.5]),
    })
    no_differences = pd.DataFrame(columns=["impl", "optimizer", "hyperparameter", "torch",
                                           "keras", "difference"])

    summary = parity.summary_table(replace(config, tolerance=0.05), epochs, traces,
                                   no_differences)

    row = summary.iloc[0]
    assert list(epochs["seed"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert (row["seeds"], row["worst_seed"], row["max_loss_seed"], row["max_weight_seed"]) == (
        3, 2, 1, 2)
    assert (row["max_loss_diff"], row["max_weight_diff"]) == pytest.approx((0.3, 0.5))
    assert (row["first_epoch_past"], row["seeds_past"]) == (1, 2)
    assert row["cause"] == "unexplained: rounding (float operation order)"


def test_a_seed_that_stopped_early_is_the_worst_seed() -> None:
    # Seed 0's differences are larger, but seed 1 stopped after one epoch (diverged).
    epochs, config, traces = _seed_epochs({0: ([0.01, 0.01], [0.01, 0.01]), 1: ([0.0], [0.0])})
    no_differences = pd.DataFrame(columns=["impl", "optimizer", "difference"])

    row = parity.summary_table(config, epochs, traces, no_differences).iloc[0]

    assert (row["worst_seed"], row["max_weight_seed"], row["seeds_past"]) == (1, 0, 2)


@pytest.fixture(scope="module")
def three_seeds() -> parity.ParityResult:
    """RMSprop at full batch, 3 epochs, float32, native and aligned, seeds 0 to 2."""
    return run_parity(ParityConfig(optimizers=("rmsprop",), batch_sizes=(150,), epochs=3,
                                   dtype="float32", seeds=3))


def test_every_cell_is_trained_and_compared_for_each_seed(
    three_seeds: parity.ParityResult,
) -> None:
    epochs = three_seeds.epochs

    assert list(epochs.columns[:6]) == ["impl", "optimizer", "batch_size", "dtype", "seed",
                                        "epoch"]
    for impl in ("native", "aligned"):
        rows = epochs[epochs["impl"] == impl]
        assert sorted(rows.groupby("seed")["epoch"].apply(list).items()) == [
            (seed, [0, 1, 2, 3]) for seed in range(3)]
    # Three starts: the seeds are not one run repeated.
    starts = {tuple(three_seeds.traces["lightning", "rmsprop", 150, s].weights[0])
              for s in range(3)}
    assert len(starts) == 3


def test_the_summary_holds_the_largest_differences_over_the_seeds(
    three_seeds: parity.ParityResult,
) -> None:
    # Oracle: plain pandas over the epoch table, and the traces themselves for the drift.
    tol = three_seeds.config.tol
    for _, row in three_seeds.summary.iterrows():
        rows = three_seeds.epochs[three_seeds.epochs["impl"] == row["impl"]]
        by_seed = rows.groupby("seed")
        loss = by_seed[["loss_diff", "val_loss_diff"]].max().max(axis=1)
        weight = by_seed["weight_diff"].max()
        largest = by_seed[list(parity.DIFF_COLUMNS)].max().max(axis=1)
        past = rows[(rows[list(parity.DIFF_COLUMNS)] > tol).any(axis=1)].groupby("seed")["epoch"]

        assert (row["max_loss_diff"], row["max_loss_seed"]) == (loss.max(), loss.idxmax())
        assert (row["max_weight_diff"], row["max_weight_seed"]) == (weight.max(), weight.idxmax())
        assert row["worst_seed"] == largest.idxmax()
        assert row["seeds_past"] == past.ngroups
        assert (pd.isna(row["first_epoch_past"]) if past.ngroups == 0
                else row["first_epoch_past"] == past.min().min())
        worst = row["worst_seed"]
        exact = three_seeds.traces[parity.EXACT, "rmsprop", 150, worst].weights
        torch_side = three_seeds.traces["lightning", "rmsprop", 150, worst].weights
        assert row["float32_drift_torch"] == np.abs(torch_side - exact).max()
    # The seeds differ enough that seed 0 alone would misreport a cell.
    summary = three_seeds.summary
    assert (summary[["worst_seed", "max_loss_seed", "max_weight_seed"]] != 0).any().any()
    native = _row(summary, "native", "rmsprop")
    assert (native["first_epoch_past"], native["seeds_past"]) == (1, 3)
    assert native["cause"].startswith("formula: torch p -= lr")


def test_parity_seed_i_starts_where_xorbench_run_seed_i_does(
    three_seeds: parity.ParityResult,
) -> None:
    # Oracle: the runner's own seeds for a three-seed run of the cell, its own initial weights,
    # and a Lightning run it trains of each seed (same batch order: same final weights).
    from xorbench.adapters import lightning
    from xorbench.grid import build_experiment
    from xorbench.model import flatten, glorot_uniform
    from xorbench.runner import cell_frames, cell_tasks

    experiment = build_experiment("smoke", None, {
        "seeds": 3, "framework": ("lightning",), "optimizer": ("rmsprop",),
        "batch_size": (150,), "epochs": (3,), "lr": (0.05,)})
    task = cell_tasks(experiment, experiment.cells)[0]
    frames = cell_frames(task, lightning.fit)

    for run, params in zip(task.seeds, frames.weights["params"], strict=True):
        initial = flatten(glorot_uniform(experiment.cells[0].hidden, run.init_seed))
        for side in ("lightning", "native", "aligned"):
            trace = three_seeds.traces[side, "rmsprop", 150, run.seed]
            np.testing.assert_array_equal(trace.weights[0], initial)
        torch_final = three_seeds.traces["lightning", "rmsprop", 150, run.seed].weights[-1]
        np.testing.assert_array_equal(torch_final.astype(np.float32), params)


def test_the_report_and_the_tables_say_how_many_seeds(
    three_seeds: parity.ParityResult, tmp_path: Path,
) -> None:
    from xorbench.report import parity_markdown_for

    parity.write_parity(three_seeds, tmp_path / "parity")
    text = parity_markdown_for(tmp_path, None)
    record = json.loads((tmp_path / "parity" / "parity-float32.json").read_text())

    assert record["seeds"] == 3
    assert "Each row trains one run in Lightning and one in Keras per seed (seeds 0 to 2, " in text
    assert f"`{record['command']}`: 3 epochs, lr 0.05, 3 seeds." in text
    worst = _row(three_seeds.summary, "aligned", "rmsprop")
    assert re.search(
        rf"\| aligned +\| rmsprop +\| 150 +\| {worst['worst_seed']} +\| \S+ \(seed "
        rf"{worst['max_loss_seed']}\) +\| \S+ \(seed {worst['max_weight_seed']}\) +\| \S+ +\| "
        rf"{worst['seeds_past']}/3 +\|", text), text
    epochs = pd.read_parquet(tmp_path / "parity" / "parity_epochs-float32.parquet")
    assert sorted(set(epochs["seed"])) == [0, 1, 2]


@pytest.mark.parametrize("value", ["0", "101", "-1", "2.5", "five", ""])
def test_bad_seeds_exit_2_with_one_line_naming_the_range(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"

    with pytest.raises(SystemExit) as info:
        main(["parity", "--seeds", value, "--out", str(out)])

    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "xorbench parity: error: argument --seeds: --seeds must be an integer from 1 to 100; "
        f"received {value!r}\n")
    assert list(tmp_path.iterdir()) == []


def test_a_parity_config_with_bad_seeds_is_refused() -> None:
    for seeds in (0, 101, 2.0, True):
        with pytest.raises(ValueError, match=rf"^seeds must be an integer from 1 to 100; "
                           rf"received {re.escape(repr(seeds))}$"):
            parity.check_config(ParityConfig(seeds=seeds))  # type: ignore[arg-type]


@pytest.mark.parametrize("seeds", [1, 2, 100])
def test_the_recorded_command_gives_the_seeds_again(seeds: int, tmp_path: Path) -> None:
    config = ParityConfig(optimizers=("adam",), batch_sizes=(1,), epochs=5, seeds=seeds)

    words = shlex.split(parity.parity_command(config, tmp_path))

    assert ("--seeds" in words) is (seeds != 1)
    assert _parity_configs(build_parser().parse_args(words[1:])) == [config]


def test_the_report_says_the_seeds_of_each_float_type_when_they_differ(
    three_seeds: parity.ParityResult, short_float64: parity.ParityResult, tmp_path: Path,
) -> None:
    from xorbench.report import parity_markdown_for

    parity.write_parity(three_seeds, tmp_path / "parity")
    parity.write_parity(short_float64, tmp_path / "parity")

    text = parity_markdown_for(tmp_path, None)

    assert ("Each row trains one run in Lightning and one in Keras per seed (float32: seeds 0 to "
            "2; float64: seed 0, each from the initial weights and batch order `xorbench run` "
            "gives it), compares them after every epoch and shows the worst seed.") in text
    float64 = text.split("### Parity, float64")[1]
    assert "worst seed" not in float64.split("### Framework differences")[0]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_sigterm_stops_parity_and_its_workers(tmp_path: Path) -> None:
    # `timeout` and service managers send SIGTERM to the whole group; Lightning's worker catches
    # it and would train on, and a clean pool shutdown would wait for it.
    import signal
    import subprocess
    import time

    check = subprocess.Popen(
        [sys.executable, "-m", "xorbench.cli", "parity", "--optimizer", "sgd", "--batch-size",
         "1", "--epochs", "100000", "--optimizer-impl", "native", "-q",
         "--out", str(tmp_path / "p")],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(children(check.pid)) < 2:  # both framework workers started
        assert check.poll() is None and time.monotonic() < deadline, "parity ended too soon"
        time.sleep(0.1)
    time.sleep(10)  # imports done: the workers are training
    workers = children(check.pid)

    os.killpg(check.pid, signal.SIGTERM)
    _, err = check.communicate(timeout=60)

    assert check.returncode == 130
    assert err.strip().splitlines()[-1] == "xorbench: interrupted"
    time.sleep(3)  # a worker whose parent is gone ends within a second
    assert [pid for pid in workers if alive(pid)] == []
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())
