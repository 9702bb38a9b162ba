"""The factorial seed design: k init seeds crossed with k order seeds, from flags to the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xorbench import stats
from xorbench.adapters.base import load_adapter
from xorbench.cli import main
from xorbench.grid import Cell, ConfigError, build_experiment
from xorbench.runner import CellTask, cell_frames
from xorbench.seeds import derive_seeds, design_seeds


def test_factorial_crosses_every_init_stream_with_every_order_stream() -> None:
    k = 4
    streams = derive_seeds(7, k)

    runs = design_seeds(7, k, "factorial")

    assert [r.seed for r in runs] == list(range(k * k))
    pairs = {(r.init_index, r.order_index) for r in runs}
    assert pairs == {(a, b) for a in range(k) for b in range(k)}
    for run in runs:
        assert run.init_seed == streams[run.init_index].init_seed
        assert run.order_seed == streams[run.order_index].order_seed
    # Its diagonal is the independent design: run (a, a) is independent seed a.
    diagonal = [r for r in runs if r.init_index == r.order_index]
    assert [(r.init_seed, r.order_seed) for r in diagonal] == [
        (s.init_seed, s.order_seed) for s in streams
    ]


def test_independent_design_pairs_each_seed_with_its_own_streams() -> None:
    runs = design_seeds(0, 5)

    assert runs == derive_seeds(0, 5)
    assert all(r.init_index == r.order_index == r.seed for r in runs)
    with pytest.raises(ValueError, match="design must be one of independent, factorial"):
        design_seeds(0, 5, "latin-square")


def test_the_setting_counts_k_squared_runs_and_refuses_unknown_designs(tmp_path: Path) -> None:
    factorial = build_experiment("smoke", None, {"seeds": 6, "seed_design": "factorial"})
    assert factorial.runs_per_cell == 36
    assert factorial.to_dict()["seed_design"] == "factorial"  # so a resume checks it
    assert build_experiment("smoke").runs_per_cell == 3

    config = tmp_path / "f.toml"
    config.write_text('preset = "smoke"\nseed_design = "factorial"\nseeds = 2\n')
    assert build_experiment(None, config).runs_per_cell == 4

    with pytest.raises(ConfigError, match="seed_design must be one of independent, factorial; "
                                          "received 'nested'"):
        build_experiment("smoke", None, {"seed_design": "nested"})


def test_cli_refuses_an_unknown_design_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--seed-design", "crossed", "--out", str(tmp_path / "r")])

    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "invalid choice: 'crossed'" in err
    assert not (tmp_path / "r").exists()


def test_a_factorial_cell_trains_crossed_runs_for_real(tmp_path: Path) -> None:
    """Lightning, batched: init streams fix epoch 0, and the diagonal equals independent runs."""
    cell = Cell("lightning", "adam", 32, 0.05, 3)
    adapter = load_adapter("lightning", "batched")
    k = 3

    def train(design: str) -> pd.DataFrame:
        task = CellTask(cell, tuple(design_seeds(0, k, design)), 0, False, 0.9, tmp_path,
                        engine="batched")
        runs, history, _ = cell_frames(task, adapter.fit_batched, adapter.fit_batched)
        first = history[history["epoch"] == 0].set_index("run_id")["val_loss"]
        return runs.assign(initial_val_loss=runs["run_id"].map(first))

    factorial, independent = train("factorial"), train("independent")

    assert len(factorial) == k * k and set(factorial["status"]) == {"ok"}
    assert set(zip(factorial.init_index, factorial.order_index, strict=True)) == {
        (a, b) for a in range(k) for b in range(k)
    }
    # The untrained model depends on the init stream only.
    by_init = factorial.groupby("init_index")["initial_val_loss"]
    assert (by_init.nunique() == 1).all() and factorial["initial_val_loss"].nunique() == k
    # Different batch orders from one start end in different places.
    assert (factorial.groupby("init_index")["final_val_loss"].nunique() == k).all()
    # Run (a, a) is independent seed a, to the bit.
    diagonal = factorial[factorial.init_index == factorial.order_index].sort_values("init_index")
    np.testing.assert_array_equal(diagonal["final_val_loss"].to_numpy(),
                                  independent.sort_values("seed")["final_val_loss"].to_numpy())
    assert stats.is_factorial(factorial) and not stats.is_factorial(independent)


def test_a_factorial_run_reports_where_the_variance_comes_from(tmp_path: Path) -> None:
    out, report_dir = tmp_path / "res", tmp_path / "report"
    code = main(["run", "--preset", "smoke", "--framework", "lightning", "--optimizer", "sgd",
                 "--batch-size", "8", "--epochs", "15", "--seed-design", "factorial",
                 "--seeds", "3", "--workers", "1", "--out", str(out),
                 "--report-dir", str(report_dir), "-q"])

    assert code == 0
    runs = pd.read_parquet(out / "runs.parquet")
    assert len(runs) == 9 and not runs["run_id"].duplicated().any()
    split = stats.variance_split(runs)
    assert set(split["source"]) == {"init seed", "order seed", "rest"}
    assert split.groupby("outcome")["n_init"].first().eq(3).all()
    report = (report_dir / "report.md").read_text()
    assert "### Where the seed variance comes from" in report
    assert (report_dir / "figures" / "stats_variance_split.png").is_file()
