"""Speed benchmark results: JSON -> tidy table -> ratios -> the report's Speed section.

Everything here runs on hand-made pytest-benchmark JSON, no framework and no timing; the
figures are checked against the same arithmetic done in plain pandas. The PausedFit tests use a
fake fit made of sleeps.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fakes import FakeRun, write_results_dir

from xorbench import bench
from xorbench.adapters.paused import PausedFit
from xorbench.bench import BenchCase, BenchFileError
from xorbench.cli import main

FRAMEWORKS = ("torch", "lightning", "keras")

# (framework, median, q1, q3) seconds per timed call, per-run adam at batch 32, 20 epochs.
PER_RUN = [("torch", 0.080, 0.078, 0.083), ("lightning", 0.200, 0.190, 0.230),
           ("keras", 0.100, 0.095, 0.120)]


def stats(median: float, q1: float, q3: float, rounds: int = 9) -> dict[str, Any]:
    """pytest-benchmark's stats block (the fields the report reads, and a few others)."""
    return {"min": q1 * 0.9, "max": q3 * 1.1, "mean": median, "stddev": 0.0, "rounds": rounds,
            "median": median, "iqr": q3 - q1, "q1": q1, "q3": q3, "ops": 1 / median,
            "total": median * rounds, "iterations": 1}


def entry(case: BenchCase, median: float, q1: float, q3: float, peak: float = 500.0,
          rounds: int = 9) -> dict[str, Any]:
    """One benchmark as pytest-benchmark writes it, with xorbench's extra_info."""
    kind = f"test_{case.kind}"
    return {
        "group": case.group,
        "name": f"{kind}[{case.id}]",
        "fullname": f"benchmarks/test_bench.py::{kind}[{case.id}]",
        "params": {"case_id": case.id},
        "param": case.id,
        "extra_info": {**case.extra_info(), "warmup_rounds": 1, "peak_rss_mib": peak,
                       "versions": {"python": "3.11.7", "torch": "2.13.0"}},
        "options": {},
        "stats": stats(median, q1, q3, rounds),
    }


def write_json(path: Path, benchmarks: Sequence[dict[str, Any]]) -> Path:
    """A whole --benchmark-json file."""
    data = {
        "machine_info": {"processor": "x86_64", "python_version": "3.11.7",
                         "cpu": {"brand_raw": "Test CPU", "count": 2}},
        "commit_info": {"id": "0123456789abcdef", "dirty": True},
        "benchmarks": list(benchmarks),
        "datetime": "2026-01-01T00:00:00+00:00",
        "version": "5.3.1",
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def train(framework: str, engine: str = "per-run", optimizer: str = "adam", batch: int = 32,
          seeds: int = 1, epochs: int = 20) -> BenchCase:
    return BenchCase("train", framework, engine, optimizer, batch, seeds=seeds, epochs=epochs)


@pytest.fixture
def two_files(tmp_path: Path) -> list[Path]:
    """A torch file and a Keras file, as the two suites write them: per-run, batched, setup."""
    torch_side, keras_side = [], []
    for framework, median, q1, q3 in PER_RUN:
        side = keras_side if framework == "keras" else torch_side
        side.append(entry(train(framework), median, q1, q3, peak=400 if side is torch_side
                          else 700))
        for seeds, scale in ((1, 1.0), (100, 1.5)):
            case = train(framework, "batched", "sgd", 150, seeds=seeds, epochs=60)
            side.append(entry(case, median * scale, q1 * scale, q3 * scale, rounds=5))
        setup = BenchCase("setup", framework, "per-run", "sgd", 32, epochs=0)
        side.append(entry(setup, median * 3, q1 * 3, q3 * 3, rounds=5))
    return [write_json(tmp_path / "bench-torch.json", torch_side),
            write_json(tmp_path / "bench-keras.json", keras_side)]


# ---------------------------------------------------------------------------------------------
# Cases and derived figures


def test_derived_figures_divide_the_call_by_its_steps_and_epochs() -> None:
    case = train("lightning", "batched", seeds=10, epochs=20)  # 5 steps per epoch at 32

    got = bench.derived_figures(case, median_s=0.5, q1_s=0.4, q3_s=0.8)

    assert case.steps == 100
    assert got["ms_per_step_median"] == pytest.approx(5.0)
    assert got["ms_per_step_q1"] == pytest.approx(4.0)
    assert got["ms_per_epoch_q3"] == pytest.approx(40.0)
    assert got["seed_steps_per_s_median"] == pytest.approx(10 * 100 / 0.5)
    # The slowest call (Q3) gives the lowest rate.
    assert got["seed_steps_per_s_low"] == pytest.approx(10 * 100 / 0.8)
    assert got["seed_steps_per_s_high"] == pytest.approx(10 * 100 / 0.4)


def test_setup_cases_have_no_per_step_figures() -> None:
    case = BenchCase("setup", "keras", "per-run", "sgd", 32, epochs=0)

    assert bench.derived_figures(case, 1.0, 0.9, 1.1) == {}
    assert case.cell.epochs == 2  # the warm-up epoch and one epoch to end the run


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"framework": "jax"}, "framework must be one of torch, lightning, keras; received 'jax'"),
        ({"engine": "vmap"}, "engine must be one of per-run, batched; received 'vmap'"),
        ({"seeds": 10}, "the per-run engine trains 1 seed per call; received 10"),
    ],
)
def test_bench_case_refuses_unknown_values(kwargs: dict[str, Any], message: str) -> None:
    args = {"kind": "train", "framework": "torch", "engine": "per-run", "optimizer": "sgd",
            "batch_size": 32, **kwargs}

    with pytest.raises(ValueError, match=message):
        BenchCase(**args)


def test_case_ids_and_groups() -> None:
    assert train("keras", "batched", "sgd", 150, seeds=100).id == "keras-batched-sgd-b150-s100"
    assert train("torch").id == "torch-per-run-adam-b32"
    assert train("torch", batch=150).group == "train per-run, batch full (150)"


# ---------------------------------------------------------------------------------------------
# Loading and ratios, against plain pandas


def test_load_reads_stats_and_derives_per_step_like_plain_pandas(two_files: list[Path]) -> None:
    frame = bench.load_benchmarks(two_files)

    raw = pd.DataFrame([
        {**b["extra_info"], **{f"{k}_s": b["stats"][k] for k in ("median", "q1", "q3")}}
        for path in two_files for b in json.loads(path.read_text())["benchmarks"]
    ])
    raw = raw[raw["kind"] == "train"]
    raw["expected"] = 1e3 * raw["median_s"] / (raw["epochs"] * raw["steps_per_epoch"])
    merged = frame.merge(raw, on=bench.CASE_KEYS, suffixes=("", "_raw"))

    assert len(frame) == 12
    assert len(merged) == 9
    assert merged["ms_per_step_median"].to_numpy() == pytest.approx(merged["expected"])
    assert merged["iqr_s"].to_numpy() == pytest.approx(merged["q3_s_raw"] - merged["q1_s_raw"])
    assert list(frame["framework"][:3]) == ["torch", "lightning", "keras"]


def test_ratios_to_the_plain_loop_match_plain_pandas(two_files: list[Path]) -> None:
    frame = bench.load_benchmarks(two_files)

    ratios = bench.overhead_ratios(frame)

    keys = ["engine", "optimizer", "batch_size", "seeds"]
    rows = frame[frame["kind"] == "train"].set_index([*keys, "framework"])
    for _, ratio in ratios.iterrows():
        mine = rows.loc[(*ratio[keys], ratio["framework"])]
        torch_row = rows.loc[(*ratio[keys], "torch")]
        assert ratio["ratio"] == pytest.approx(mine["median_s"] / torch_row["median_s"])
        assert ratio["ratio_low"] == pytest.approx(mine["q1_s"] / torch_row["q3_s"])
        assert ratio["ratio_high"] == pytest.approx(mine["q3_s"] / torch_row["q1_s"])
    assert len(ratios) == 6  # Lightning and Keras, per-run and two batched cases
    per_run = ratios[ratios["engine"] == "per-run"].set_index("framework")["ratio"]
    assert per_run["lightning"] == pytest.approx(0.200 / 0.080)


def test_ratio_is_per_step_when_the_epochs_differ(tmp_path: Path) -> None:
    # Lightning timed half the epochs in half the time: the same speed per step.
    path = write_json(tmp_path / "bench.json", [
        entry(train("torch", epochs=20), 0.1, 0.1, 0.1),
        entry(train("lightning", epochs=10), 0.05, 0.05, 0.05),
    ])

    ratios = bench.overhead_ratios(bench.load_benchmarks([path]))

    assert ratios["ratio"].tolist() == pytest.approx([1.0])


# ---------------------------------------------------------------------------------------------
# Tables and Markdown


def _framework_blocks(table: pd.DataFrame, keys: list[str]) -> list[list[str]]:
    return [list(group["framework"]) for _, group in table.groupby(keys, sort=False)]


def test_every_speed_table_has_a_plain_torch_row_beside_lightning(two_files: list[Path]) -> None:
    """F6: overhead is shown as overhead, next to the plain loop."""
    frame = bench.load_benchmarks(two_files)

    for engine, keys in (("per-run", ["optimizer", "batch"]),
                         ("batched", ["optimizer", "batch", "seeds"])):
        table = bench.speed_table(frame, engine)
        blocks = _framework_blocks(table, keys)
        assert blocks and all(
            b == ["torch (plain loop)", "Lightning", "Keras"] for b in blocks
        ), blocks


def test_a_missing_torch_file_leaves_a_not_measured_torch_row(two_files: list[Path]) -> None:
    frame = bench.load_benchmarks([two_files[1]])  # Keras only

    table = bench.speed_table(frame, "per-run")

    assert list(table["framework"]) == ["torch (plain loop)", "Lightning", "Keras"]
    assert table.iloc[0]["ms / step, median [Q1, Q3]"] == "not measured"
    assert table.iloc[2]["x torch, median [low, high]"] == "n/a (torch not measured)"


def test_speed_table_shows_medians_quartiles_and_ratios(two_files: list[Path]) -> None:
    table = bench.speed_table(bench.load_benchmarks(two_files), "per-run")

    lightning = table[table["framework"] == "Lightning"].iloc[0]
    # 0.200 s for 20 epochs of 5 steps: 2.00 ms per step, 10.0 ms per epoch.
    assert lightning["ms / step, median [Q1, Q3]"] == "2.00 [1.90, 2.30]"
    assert lightning["ms / epoch, median [Q1, Q3]"] == "10.0 [9.50, 11.5]"
    low, high = 0.190 / 0.083, 0.230 / 0.078
    assert lightning["x torch, median [low, high]"] == f"2.50 [{low:.2f}, {high:.2f}]"
    assert "seeds" not in table.columns


def test_batched_table_shows_seed_steps_per_second(two_files: list[Path]) -> None:
    table = bench.speed_table(bench.load_benchmarks(two_files), "batched")

    row = table[(table["framework"] == "torch (plain loop)") & (table["seeds"] == "100")].iloc[0]
    # 100 seeds x 60 steps in 0.12 s (Q1 0.117, Q3 0.1245).
    expected = f"{6000 / 0.12:,.0f} [{6000 / 0.1245:,.0f}, {6000 / 0.117:,.0f}]"
    assert row["seed-steps/s, median [low, high]"] == expected


def test_speed_markdown_has_every_part(two_files: list[Path]) -> None:
    text = bench.speed_markdown(bench.load_benchmarks(two_files))

    for part in ("## Speed", "### Per-run engine", "### Seed-batched engine",
                 "### Setup, timed on its own", "### Peak memory", "5 to 9 timed rounds",
                 "1 untimed warm-up round", "Test CPU, 2 cores", "commit 0123456789ab-dirty",
                 "| bench-keras.json     | Keras", "700"):
        assert part in text, part


def test_setup_text_says_whether_keras_compiled_with_xla(tmp_path: Path) -> None:
    cases = [train("keras"), train("keras", "batched", seeds=10)]
    benchmarks = [entry(case, 0.1, 0.1, 0.1) for case in cases]
    benchmarks[0]["extra_info"]["jit_compile"] = False
    benchmarks[1]["extra_info"]["jit_compile"] = True

    text = bench.speed_markdown(bench.load_benchmarks([write_json(tmp_path / "b.json",
                                                                  benchmarks)]))

    assert "Keras XLA (`jit_compile`): per-run off, batched on." in text


def test_memory_table_keeps_each_process_peak(two_files: list[Path]) -> None:
    table = bench.memory_table(bench.load_benchmarks(two_files))

    assert table.to_dict("list") == {
        "file (one process)": ["bench-keras.json", "bench-torch.json"],
        "frameworks": ["Keras", "torch (plain loop), Lightning"],
        "benchmarks": ["4", "8"],
        "peak RSS, MiB": ["700", "500"],
    }


# ---------------------------------------------------------------------------------------------
# Bad files


def test_the_same_case_in_two_files_is_refused(tmp_path: Path) -> None:
    one = write_json(tmp_path / "a.json", [entry(train("torch"), 0.1, 0.1, 0.1)])
    two = write_json(tmp_path / "b.json", [entry(train("torch"), 0.2, 0.2, 0.2)])

    with pytest.raises(BenchFileError, match=r"more than one file \(a.json, b.json\)"):
        bench.load_benchmarks([one, two])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "benchmark file not found: "),
        ("{not json", "is not valid JSON"),
        ('{"benchmarks": 3}', "has no 'benchmarks' list: is it pytest-benchmark's"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path: Path, content: str | None,
                                        message: str) -> None:
    path = tmp_path / "bench-x.json"
    if content is not None:
        path.write_text(content)

    with pytest.raises(BenchFileError, match=message):
        bench.load_benchmarks([path])


def test_a_foreign_benchmark_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    foreign = {"fullname": "other::test_sum", "extra_info": {}, "stats": stats(1, 1, 1)}
    path = write_json(tmp_path / "bench.json", [foreign, entry(train("torch"), 0.1, 0.1, 0.1)])

    with caplog.at_level(logging.WARNING, logger="xorbench.bench"):
        frame = bench.load_benchmarks([path])

    assert list(frame["framework"]) == ["torch"]
    assert "skipping other::test_sum, not an xorbench speed case" in caplog.text


# ---------------------------------------------------------------------------------------------
# The report and the command


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    runs = [FakeRun(framework=fw, seed=s, epochs=5) for fw in ("lightning", "keras")
            for s in range(2)]
    return write_results_dir(tmp_path / "results", runs)


def test_report_takes_its_speed_section_from_the_results_dir(
    results_dir: Path, two_files: list[Path], tmp_path: Path
) -> None:
    for path in two_files:
        (results_dir / path.name).write_bytes(path.read_bytes())

    text = bench.speed_markdown(bench.load_benchmarks(two_files))
    report = Path(main_report(results_dir, tmp_path / "out")).read_text()

    assert text in report
    assert report.index("## Speed") < report.index("## Setup")


def test_report_bench_flag_overrides_and_no_file_means_no_section(
    results_dir: Path, two_files: list[Path], tmp_path: Path
) -> None:
    without = Path(main_report(results_dir, tmp_path / "a")).read_text()
    with_flag = Path(main_report(results_dir, tmp_path / "b", "--bench", *map(str, two_files)))

    assert "## Speed" not in without
    assert "### Per-run engine" in with_flag.read_text()


def main_report(results: Path, out: Path, *extra: str) -> str:
    """Run ``xorbench report`` and return the report's path."""
    assert main(["report", str(results), "--out", str(out), *extra]) == 0
    return str(out / "report.md")


def test_report_with_a_missing_bench_file_exits_2_with_one_line(
    results_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["report", str(results_dir), "--out", str(tmp_path / "out"),
                 "--bench", str(tmp_path / "nope.json")])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"xorbench report: error: benchmark file not found: {tmp_path / 'nope.json'}"]
    assert not (tmp_path / "out" / "report.md").exists()


# ---------------------------------------------------------------------------------------------
# PausedFit: the clock sees only the timed epochs


def fake_fit(paused_box: list[PausedFit], epochs: int, warmup: int, epoch_s: float,
             startup_s: float, fail_at: int | None = None) -> Callable[[], None]:
    """A fit with a slow start-up whose epoch hooks call the PausedFit, as the gates do."""
    def fit() -> None:
        time.sleep(startup_s)
        for epoch in range(epochs):
            if epoch == warmup:
                paused_box[0].timed_epochs_begin()
            if epoch == fail_at:
                raise FloatingPointError("loss is nan")
            time.sleep(epoch_s)
        paused_box[0].timed_epochs_end()
        time.sleep(startup_s)  # shut-down
    return fit


def paused(epochs: int, warmup: int, epoch_s: float, startup_s: float,
           fail_at: int | None = None) -> PausedFit:
    box: list[PausedFit] = []
    box.append(PausedFit(fake_fit(box, epochs, warmup, epoch_s, startup_s, fail_at)))
    return box[0]


def test_paused_fit_times_the_timed_epochs_only() -> None:
    run = paused(epochs=4, warmup=1, epoch_s=0.02, startup_s=0.3)

    run.start()
    started = time.perf_counter()
    run.resume()
    timed = time.perf_counter() - started
    run.finish()

    # Three epochs of 20 ms: no start-up (0.3 s), no warm-up epoch, no shut-down (0.3 s).
    assert 0.055 < timed < 0.25


def test_paused_fit_reraises_an_error_of_the_timed_epochs() -> None:
    run = paused(epochs=3, warmup=1, epoch_s=0.0, startup_s=0.0, fail_at=2)
    run.start()

    with pytest.raises(RuntimeError, match="fit failed in its worker thread: FloatingPoint"):
        run.resume()
    run.finish()


def test_paused_fit_refuses_a_run_with_nothing_to_time() -> None:
    run = paused(epochs=1, warmup=1, epoch_s=0.0, startup_s=0.0)

    with pytest.raises(RuntimeError, match="fit returned before its timed epochs began"):
        run.start()


def test_paused_fit_notices_a_run_that_stopped_early() -> None:
    def fit() -> None:
        box[0].timed_epochs_begin()  # then returns without ending the timed epochs

    box = [PausedFit(fit)]
    box[0].start()

    with pytest.raises(RuntimeError, match="fit returned before the end of its timed epochs"):
        box[0].resume()
    box[0].finish()


def test_nan_is_shown_as_not_available() -> None:
    assert bench._interval(math.nan, 1.0, 2.0) == "n/a"
