"""Bad config input is always a one-line ConfigError; a results directory has one writer."""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from procs import alive, children

from xorbench import results
from xorbench.grid import TOML_KEYS, ConfigError, build_experiment

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
    st.text(max_size=8),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.lists(st.lists(SCALARS, max_size=3),
                                                                     max_size=2))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([*TOML_KEYS, "optimiser", "lr_"]), VALUES, max_size=4))
def test_any_config_is_an_experiment_or_a_one_line_config_error(config: dict[str, object]) -> None:
    try:
        experiment = build_experiment(overrides={k: v for k, v in config.items()
                                                 if k not in ("preset",)})
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message
        return

    # What was accepted is a valid grid.
    assert experiment.cells and experiment.seeds >= 1
    assert isinstance(experiment.data_per_run, bool)
    for cell in experiment.cells:
        assert 1 <= cell.batch_size <= 150 and cell.epochs >= 1
        assert math.isfinite(cell.lr) and cell.lr > 0


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_any_toml_text_is_an_experiment_or_a_one_line_config_error(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.mktemp("toml") / "config.toml"
    path.write_text(text, encoding="utf-8")
    try:
        build_experiment(config=path)
    except ConfigError as exc:
        assert "\n" not in str(exc).strip()
        return
    tomllib.loads(text)  # accepted text is valid TOML


@contextlib.contextmanager
def lock_held_elsewhere(path: Path) -> Iterator[None]:
    """Another process holds the lock of ``path`` until the block ends, then is SIGKILLed."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom pathlib import Path\nfrom xorbench import results\n"
         "with results.locked(Path(sys.argv[1])):\n    print('locked', flush=True)\n"
         "    time.sleep(60)\n", str(path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock with the process
        holder.wait()


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path: Path) -> None:
    with lock_held_elsewhere(tmp_path), pytest.raises(
        results.ResultsDirError, match="another xorbench run is writing to"
    ), results.locked(tmp_path):
        pass

    with results.locked(tmp_path):  # the killed holder's lock does not block
        pass


def _run(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "xorbench.cli", "run", "--preset", "smoke",
            "--framework", "lightning", "--optimizer", "sgd,adam,rmsprop,asgd",
            "--batch-size", "8,150", "--epochs", "30", "--seeds", "4", "--workers", "1",
            "--out", str(out), "--no-report", "-q", *extra]


def test_a_run_killed_mid_grid_resumes_to_the_same_tables(tmp_path: Path) -> None:
    import os
    import signal
    import time

    import pandas as pd

    whole = subprocess.run(_run(tmp_path / "whole"), capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr

    # Kill the run and its workers (SIGKILL, like a power cut) once some cells are done.
    cut = tmp_path / "cut"
    victim = subprocess.Popen(_run(cut), start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(list((cut / "parts").glob("*.runs.parquet"))) < 2:
        assert victim.poll() is None and time.monotonic() < deadline, "run ended before the kill"
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    finished_before = len(list((cut / "parts").glob("*.runs.parquet")))
    assert 2 <= finished_before < 8 and not (cut / "runs.parquet").exists()
    parts_before = sorted(p.read_bytes() for p in (cut / "parts").iterdir())

    # The report of the interrupted run covers its finished cells and names the missing ones.
    partial = subprocess.run(
        [sys.executable, "-m", "xorbench.cli", "report", str(cut), "--out",
         str(tmp_path / "partial-report")], capture_output=True, text=True, timeout=600)
    assert partial.returncode == 0, partial.stderr
    text = (tmp_path / "partial-report" / "report.md").read_text()
    assert f"Only {finished_before} of the experiment's 8 cells have finished" in text
    missing = set(text.split("Missing: ", 1)[1].split("\n", 1)[0].rstrip(".").split(", "))
    finished = {p.name.removesuffix(".runs.parquet") for p in (cut / "parts").glob("*.runs.*")}
    planned = {f"lightning-{opt}-b{batch}-lr0.05-h3x4-e30"
               for opt in ("sgd", "adam", "rmsprop", "asgd") for batch in (8, 150)}
    assert missing == {f"`{key}`" for key in planned - finished}
    assert f"It holds {4 * finished_before} runs" in text
    assert sorted(p.read_bytes() for p in (cut / "parts").iterdir()) == parts_before  # untouched

    resumed = subprocess.run(_run(cut), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert (f"xorbench: resuming: {finished_before} of 8 cells already finished are kept; "
            f"training the other {8 - finished_before}") in resumed.stderr
    kept = 4 * finished_before
    assert f"32 runs, {kept} kept and {32 - kept} trained in" in resumed.stdout

    for table in ("runs", "history"):
        a = pd.read_parquet(tmp_path / "whole" / f"{table}.parquet")
        b = pd.read_parquet(cut / f"{table}.parquet")
        if table == "runs":
            a, b = a.drop(columns="wall_s"), b.drop(columns="wall_s")
            assert not b["run_id"].duplicated().any() and len(b) == 8 * 4
        pd.testing.assert_frame_equal(a, b)  # bit-exact: same rows, same values, same order


def test_a_report_on_a_results_directory_with_no_finished_cell_is_refused(
    tmp_path: Path,
) -> None:
    results.start(tmp_path / "r", build_experiment("smoke"), workers=1)

    done = subprocess.run(
        [sys.executable, "-m", "xorbench.cli", "report", str(tmp_path / "r"), "--out",
         str(tmp_path / "report")], capture_output=True, text=True, timeout=120)

    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"xorbench report: error: {tmp_path / 'r'} has no finished cell yet (8 planned): "
        "nothing to report; run `xorbench run` with the same config to train them")
    assert not (tmp_path / "report").exists()


def test_restart_is_refused_while_another_run_holds_the_lock(tmp_path: Path) -> None:
    out = tmp_path / "r"
    results.start(out, build_experiment("smoke"), workers=1)
    (out / "parts" / "precious.runs.parquet").write_bytes(b"a finished cell")
    with lock_held_elsewhere(out):
        done = subprocess.run(_run(out, "--restart", "--epochs", "31"), capture_output=True,
                              text=True, timeout=120)

    assert done.returncode == 2
    assert done.stderr.strip() == (f"xorbench run: error: another xorbench run is writing to "
                                   f"{out}; wait for it to finish or choose another --out")
    assert (out / "parts" / "precious.runs.parquet").read_bytes() == b"a finished cell"


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_workers_end_when_the_run_is_killed(tmp_path: Path) -> None:
    import os
    import signal
    import time

    out = tmp_path / "r"
    run = subprocess.Popen(_run(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "parts").glob("*.runs.parquet")):  # workers are training
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        workers = children(run.pid)
        assert workers
        os.kill(run.pid, signal.SIGKILL)  # the run only, as a crash or the OOM killer would
        run.wait()

        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in workers), "workers outlived their run"
    finally:
        run.kill()


def test_restart_deletes_only_what_a_run_wrote(tmp_path: Path) -> None:
    out = tmp_path / "r"
    results.start(out, build_experiment("smoke"), workers=1)
    for name in (results.RUNS, results.HISTORY, results.WEIGHTS, results.SUMMARY,
                 ".runs.parquet.tmp-123"):
        (out / name).write_bytes(b"run output")
    (out / "parts" / "cell.runs.parquet").write_bytes(b"run output")
    (out / "parity").mkdir()
    (out / "parity" / "parity-float32.md").write_text("tables")
    (out / "bench-torch.json").write_text("{}")
    (out / "notes.txt").write_text("mine")

    kept = results.clear(out)

    assert kept == ["bench-torch.json", "notes.txt", "parity"]
    assert sorted(p.name for p in out.iterdir()) == kept
    assert (out / "parity" / "parity-float32.md").read_text() == "tables"


def _tiny(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "xorbench.cli", "run", "--preset", "smoke",
            "--framework", "lightning", "--optimizer", "sgd", "--batch-size", "150",
            "--seeds", "2", "--workers", "1", "--out", str(out), "--no-report", "-q", *extra]


def test_restart_trains_again_beside_what_it_kept(tmp_path: Path) -> None:
    import json

    out = tmp_path / "r"
    first = subprocess.run(_tiny(out, "--epochs", "2"), capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr
    (out / "parity").mkdir()
    (out / "parity" / "parity-float32.md").write_text("tables")
    (out / "notes.txt").write_text("mine")

    again = subprocess.run(_tiny(out, "--epochs", "3", "--restart"), capture_output=True,
                           text=True, timeout=300)

    assert again.returncode == 0, again.stderr
    assert "--restart kept what xorbench run did not write" in again.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert {cell["epochs"] for cell in manifest["experiment"]["cells"]} == {3}
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "parity" / "parity-float32.md").read_text() == "tables"


def test_a_run_may_follow_parity_tables_written_into_its_directory(tmp_path: Path) -> None:
    out = tmp_path / "r"
    (out / "parity").mkdir(parents=True)
    (out / "parity" / "parity-float32.md").write_text("tables")
    (out / "bench-torch.json").write_text("{}")

    done = subprocess.run(_tiny(out, "--epochs", "2"), capture_output=True, text=True,
                          timeout=300)

    assert done.returncode == 0, done.stderr
    assert (out / "runs.parquet").is_file()
    (out / "notes.txt").write_text("mine")  # anything else still makes it not a results dir
    (out / "manifest.json").unlink()
    refused = subprocess.run(_tiny(out, "--epochs", "2"), capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2
    assert "is a non-empty directory that is not an xorbench results directory" in (
        refused.stderr)
