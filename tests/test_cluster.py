"""Running the grid on a Dask cluster: address checks, chunks, the worker-side retry (fast), and
a real scheduler with two workers on 127.0.0.1 compared with a local run (slow)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

import xorbench
from xorbench import cluster, results
from xorbench.cell_process import CellProcess, ChildDied
from xorbench.cli import main
from xorbench.grid import Cell, build_experiment
from xorbench.runner import CellFrames, CellTask, cell_tasks
from xorbench.seeds import derive_seeds

REPO = Path(xorbench.__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("text", "address"),
    [("tcp://127.0.0.1:8786", "tcp://127.0.0.1:8786"), ("tcp://localhost:1/", "tcp://localhost:1"),
     ("tcp://[::1]:8786", "tcp://[::1]:8786")],
)
def test_scheduler_addresses_that_are_accepted(text: str, address: str) -> None:
    assert cluster.parse_scheduler(text) == address


@pytest.mark.parametrize(
    "text",
    ["127.0.0.1:8786", "tls://127.0.0.1:8786", "tcp://127.0.0.1", "tcp://127.0.0.1:0",
     "tcp://127.0.0.1:70000", "tcp://127.0.0.1:port", "tcp://:8786", "tcp://h:1/path",
     "tcp://user@h:1", "inproc://x", ""],
)
def test_a_bad_scheduler_exits_2_with_one_line_and_writes_nothing(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    with pytest.raises(SystemExit) as info:
        main(["run", "--preset", "smoke", "--scheduler", text, "--out", str(tmp_path / "out")])

    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "xorbench run: error: argument --scheduler: --scheduler must be tcp://HOST:PORT, "
        f"e.g. tcp://127.0.0.1:8786; received {text!r}"
    )
    assert list(tmp_path.iterdir()) == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nothing listens there


def test_an_unreachable_scheduler_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1)
    address = f"tcp://127.0.0.1:{_free_port()}"
    out = tmp_path / "out"

    code = main(["run", "--preset", "smoke", "--scheduler", address, "--out", str(out)])

    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"xorbench run: error: no Dask scheduler answered at {address} within 1 s (OSError); "
        "start one (dask scheduler) or fix --scheduler"
    )
    assert not out.exists()


def test_a_port_that_is_not_a_scheduler_exits_2_instead_of_hanging(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service that accepts the connection and never speaks Dask (here, an HTTP server)."""
    import http.server
    import threading

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1)
    # Threaded: a handler stuck on the silent client must not block the server's shutdown.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             http.server.BaseHTTPRequestHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"tcp://127.0.0.1:{server.server_address[1]}"
    out = tmp_path / "out"
    try:
        code = main(["run", "--preset", "smoke", "--scheduler", address, "--out", str(out)])
    finally:
        server.shutdown()
        server.server_close()

    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"xorbench run: error: no Dask scheduler answered at {address} "
                          "within 1 s (")
    assert "\n" not in err and not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--scheduler", "tcp://127.0.0.1:8786", "--workers", "2"],
      "--workers sets local worker processes; with --scheduler the cluster's workers train the "
      "cells, so give one or the other"),
     (["--cells-per-task", "4"], "--cells-per-task needs --scheduler")],
)
def test_executor_options_that_do_not_go_together_are_refused(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--preset", "smoke", *argv, "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"xorbench run: error: {message}"
    assert list(tmp_path.iterdir()) == []


def test_a_local_run_imports_nothing_of_dask(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from xorbench.cli import main\n"
        "assert main(sys.argv[1:]) == 0\n"
        "print([m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')])\n"
    )
    argv = ["run", "--preset", "smoke", "--framework", "lightning", "--optimizer", "sgd",
            "--batch-size", "150", "--epochs", "2", "--seeds", "1", "--workers", "1",
            "--out", str(tmp_path / "out"), "--no-report", "-q"]
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                         timeout=300)

    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert len(pd.read_parquet(tmp_path / "out" / "runs.parquet")) == 1


def test_chunks_hold_one_framework_and_keep_the_longest_first_order() -> None:
    experiment = build_experiment("grid", overrides={"seeds": 2})
    tasks = cell_tasks(experiment, experiment.cells)

    chunks = cluster.chunk_tasks(tasks, 3)

    assert sorted(t.cell.key for c in chunks for t in c) == sorted(t.cell.key for t in tasks)
    assert all(len({t.cell.framework for t in chunk}) == 1 for chunk in chunks)
    assert all(1 <= len(chunk) <= 3 for chunk in chunks)
    for framework in ("lightning", "keras"):
        order = [t.cell.key for t in tasks if t.cell.framework == framework]
        chunked = [t.cell.key for c in chunks for t in c if t.cell.framework == framework]
        assert chunked == order
    assert cluster.auto_cells_per_task(32, 2) == 4
    assert cluster.auto_cells_per_task(10_000, 100) == 25
    assert cluster.auto_cells_per_task(8, 2) == 1


# ---------------------------------------------------------------------------------------------
# The worker side, without a cluster


CELL = Cell("lightning", "sgd", 32, 0.05, 3)


def _task() -> CellTask:
    return CellTask(CELL, tuple(derive_seeds(0, 2)), 0, False, 0.9)


class _DyingChild:
    """Stands in for a CellProcess whose child dies on the first ``deaths`` cells it is sent."""

    def __init__(self, deaths: int, frames: CellFrames) -> None:
        self.deaths, self.frames, self.calls = deaths, frames, 0

    def train(self, task: CellTask) -> CellFrames:
        self.calls += 1
        if self.calls <= self.deaths:
            raise ChildDied(f"lightning child process ended with status -9 while training "
                            f"{task.cell.key}")
        return self.frames


@pytest.mark.parametrize("deaths", [0, 1, 2])
def test_a_dying_child_costs_one_retry_then_the_cell_is_recorded_failed(
    deaths: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xorbench.runner import lost_cell_frames

    task = _task()
    trained = lost_cell_frames(task, "a marker, not a real failure")
    child = _DyingChild(deaths, trained)
    monkeypatch.setattr(cluster, "_child", lambda framework, engine: child)

    [frames] = cluster.train_chunk([task])

    assert child.calls == min(deaths + 1, 2)
    if deaths < 2:
        assert frames is trained
    else:
        assert frames.runs["status"].tolist() == ["failed", "failed"]
        assert frames.runs["error"].iloc[0] == (
            f"RuntimeError: lightning child process ended with status -9 while training "
            f"{CELL.key}"
        )


def test_a_child_that_dies_raises_child_died_and_is_replaced() -> None:
    child = CellProcess("no-such-framework", "per-run")  # its start-up fails: it exits
    try:
        with pytest.raises(ChildDied, match="no-such-framework child process ended with status 1 "
                           f"while training {CELL.key}"):
            child.train(_task())
        first = child._proc
        with pytest.raises(ChildDied):
            child.train(_task())
        assert child._proc is not first  # a fresh child was started for the second cell
    finally:
        child.close()
        child.wait()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its new parent to reap it has ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


WORKER_WITH_A_LONG_CELL = """
import pickle, sys, time
from xorbench.cell_process import CellProcess
from xorbench.grid import Cell
from xorbench.runner import CellTask
from xorbench.seeds import derive_seeds

# SGD at batch 1 for 20,000 epochs: minutes of training, far past the test's deadline.
task = CellTask(Cell("lightning", "sgd", 1, 0.05, 20_000), tuple(derive_seeds(0, 1)), 0,
                False, 0.9)
child = CellProcess("lightning", "per-run")
pickle.dump(task, child._proc.stdin)
child._proc.stdin.flush()
print(child._proc.pid, flush=True)
time.sleep(600)
"""


def test_a_child_ends_when_its_worker_is_killed_mid_cell() -> None:
    worker = subprocess.Popen([sys.executable, "-c", WORKER_WITH_A_LONG_CELL],
                              stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert worker.stdout is not None
        child = int(worker.stdout.readline())
        assert _alive(child)
        worker.kill()  # SIGKILL: the child is not told; the cell is already in its pipe
        worker.wait()
        deadline = time.monotonic() + 60
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child)
    finally:
        worker.kill()
        worker.wait()


# ---------------------------------------------------------------------------------------------
# A real cluster: a scheduler and two workers on 127.0.0.1, all started and stopped here


GRID = ["--preset", "smoke", "--epochs", "60", "--no-report"]


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="2")


def _xorbench(*argv: str) -> list[str]:
    return [sys.executable, "-m", "xorbench.cli", "-v", "run", *GRID, *argv]


@dataclass
class LocalCluster:
    address: str
    workers: dict[str, subprocess.Popen[bytes]]  # by worker name
    logs: Path


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End a process we started and everything it started (its own session)."""
    if proc.poll() is None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=20)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
    proc.wait()


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=_env(),
                                start_new_session=True)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    from distributed import Client

    logs = tmp_path_factory.mktemp("cluster")
    procs: list[subprocess.Popen[bytes]] = []
    loopback = ["--host", "127.0.0.1", "--no-dashboard", "--dashboard-address", "127.0.0.1:0"]
    try:
        scheduler_file = logs / "scheduler.json"
        procs.append(_start([sys.executable, "-m", "dask", "scheduler", "--port", "0",
                             *loopback, "--scheduler-file", str(scheduler_file)],
                            logs / "scheduler.log"))
        deadline = time.monotonic() + 120
        while not scheduler_file.exists():
            assert procs[0].poll() is None and time.monotonic() < deadline, "no scheduler"
            time.sleep(0.2)
        time.sleep(0.2)  # the file is written in one go, but give the write a moment
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")

        workers = {}
        for name in ("w1", "w2"):
            workers[name] = _start(
                [sys.executable, "-m", "dask", "worker", address, "--nthreads", "1",
                 "--name", name, *loopback, "--local-directory", str(logs / name)],
                logs / f"{name}.log")
            procs.append(workers[name])
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield LocalCluster(address, workers, logs)
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _tables(path: Path) -> dict[str, pd.DataFrame]:
    runs = pd.read_parquet(path / "runs.parquet").drop(columns="wall_s")
    return {"runs": runs, "history": pd.read_parquet(path / "history.parquet"),
            "weights": pd.read_parquet(path / "weights.parquet")}


def _assert_same_tables(a: Path, b: Path) -> None:
    ta, tb = _tables(a), _tables(b)
    pd.testing.assert_frame_equal(ta["runs"], tb["runs"])
    pd.testing.assert_frame_equal(ta["history"], tb["history"])
    assert ta["weights"]["run_id"].tolist() == tb["weights"]["run_id"].tolist()
    for x, y in zip(ta["weights"]["params"], tb["weights"]["params"], strict=True):
        assert x.tolist() == y.tolist()


def _written(log: str) -> Counter[str]:
    """How many times each cell's part was written, from the run's -v log."""
    return Counter(re.findall(r"INFO xorbench\.runner: cell (\S+): part written", log))


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "results"
    done = subprocess.run(_xorbench("--workers", "2", "--out", str(out), "-q"), env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return out


@dataclass
class ClusterRun:
    out: Path
    log: str
    victim_tasks: list[str]  # what the killed worker was processing when it was killed
    parts_at_kill: int  # cells already written then


@pytest.fixture(scope="module")
def cluster_run(dask_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
                ) -> ClusterRun:
    """The grid on the cluster; one worker is SIGKILLed (with its children) mid-run."""
    from distributed import Client

    out = tmp_path_factory.mktemp("on-cluster") / "results"
    log_path = out.parent / "run.log"
    run = _start(_xorbench("--scheduler", dask_cluster.address, "--out", str(out), "-q"),
                 log_path)
    victim_tasks: list[str] = []
    parts_at_kill = 0
    try:
        with Client(dask_cluster.address, timeout=60) as client:
            victim = next(addr for addr, w in client.scheduler_info(n_workers=-1)["workers"].items()
                          if w["name"] == "w2")
            deadline = time.monotonic() + 600
            while not victim_tasks:
                assert run.poll() is None and time.monotonic() < deadline, (
                    "the run ended before a worker could be killed mid-task")
                parts = list((out / results.PARTS).glob("*.runs.parquet"))
                busy = client.processing(workers=[victim]).get(victim, [])
                if parts and busy:
                    os.killpg(dask_cluster.workers["w2"].pid, signal.SIGKILL)
                    victim_tasks = [str(key) for key in busy]
                    parts_at_kill = len(parts)
                time.sleep(0.1)
        assert run.wait(timeout=900) == 0, log_path.read_text()
    finally:
        _stop(run)
    return ClusterRun(out, log_path.read_text(), victim_tasks, parts_at_kill)


@pytest.mark.slow
def test_the_grid_on_the_cluster_equals_the_local_run_despite_a_killed_worker(
    local_run: Path, cluster_run: ClusterRun, dask_cluster: LocalCluster
) -> None:
    experiment_cells = [c.key for c in build_experiment(
        "smoke", overrides={"epochs": (60,)}).cells]

    # The killed worker had a task in flight, and it died with it, mid-grid.
    assert cluster_run.victim_tasks
    assert 1 <= cluster_run.parts_at_kill < len(experiment_cells)
    assert dask_cluster.workers["w2"].wait(timeout=60) == -signal.SIGKILL

    # No cell lost, none written twice, and the same tables as the local run.
    assert _written(cluster_run.log) == Counter(experiment_cells)
    _assert_same_tables(local_run, cluster_run.out)
    manifest = results.read_manifest(cluster_run.out)
    assert manifest["scheduler"] == dask_cluster.address


def _interrupted_copy(full: Path, dest: Path, keep: int) -> list[str]:
    """What an interrupted run leaves: the manifest and the parts of its first ``keep`` cells."""
    (dest / results.PARTS).mkdir(parents=True)
    shutil.copy(full / results.MANIFEST, dest / results.MANIFEST)
    runs_parts = sorted((full / results.PARTS).glob("*.runs.parquet"))
    kept = [p.name.removesuffix(".runs.parquet") for p in runs_parts][:keep]
    for key in kept:
        for table in ("runs", "history", "weights"):
            name = f"{key}.{table}.parquet"
            shutil.copy(full / results.PARTS / name, dest / results.PARTS / name)
    return kept


@pytest.mark.slow
def test_resume_works_across_local_and_cluster_runs(
    local_run: Path, cluster_run: ClusterRun, dask_cluster: LocalCluster, tmp_path: Path
) -> None:
    cells = {c.key for c in build_experiment("smoke", overrides={"epochs": (60,)}).cells}

    # Started locally, finished on the cluster (two cells per Dask task): only the missing
    # cells are trained there.
    half_local = tmp_path / "half-local"
    kept = _interrupted_copy(local_run, half_local, 3)
    finish = subprocess.run(_xorbench("--scheduler", dask_cluster.address, "--out",
                                      str(half_local), "--cells-per-task", "2", "-q"),
                            env=_env(), capture_output=True, text=True, timeout=900)
    assert finish.returncode == 0, finish.stderr
    assert _written(finish.stderr) == Counter(cells - set(kept))
    _assert_same_tables(local_run, half_local)

    # Started on the cluster, finished locally.
    half_cluster = tmp_path / "half-cluster"
    kept = _interrupted_copy(cluster_run.out, half_cluster, 5)
    finish = subprocess.run(_xorbench("--workers", "2", "--out", str(half_cluster), "-q"),
                            env=_env(), capture_output=True, text=True, timeout=900)
    assert finish.returncode == 0, finish.stderr
    assert _written(finish.stderr) == Counter(cells - set(kept))
    _assert_same_tables(local_run, half_cluster)


def test_the_code_digest_tells_an_edited_copy_of_xorbench_apart(tmp_path: Path) -> None:
    """What the cluster check compares: a worker with the same version but other files differs."""
    import shutil
    import subprocess
    import sys

    import xorbench
    from xorbench.environment import code_digest

    copy = tmp_path / "site"
    shutil.copytree(Path(xorbench.__file__).parent, copy / "xorbench",
                    ignore=shutil.ignore_patterns("__pycache__"))

    def digest_of_copy() -> str:
        done = subprocess.run(
            [sys.executable, "-c", "from xorbench.environment import code_digest\n"
             "print(code_digest())"], env={"PYTHONPATH": str(copy)}, cwd=tmp_path,
            capture_output=True,
            text=True, check=True)
        return done.stdout.strip()

    assert digest_of_copy() == code_digest()
    runner = copy / "xorbench" / "runner.py"
    runner.write_text(runner.read_text() + "\n# an edit that keeps the version number\n")
    assert digest_of_copy() != code_digest()
