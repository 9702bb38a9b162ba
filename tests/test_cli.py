"""The command line: instant help, one-line refusals with exit status 2, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from xorbench.cli import main

FRAMEWORK_MODULES = ("torch", "lightning", "tensorflow", "keras")


def test_help_imports_no_framework() -> None:
    code = (
        "import sys\n"
        "from xorbench.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print([m for m in {FRAMEWORK_MODULES!r} if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--framework", "jax"], "framework must be one of lightning, keras; received 'jax'"),
        (["--optimizer", "sgd,adagrad"], "optimizer must be one of sgd, asgd, rmsprop, adam"),
        (["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
        (["--batch-size", "0"], "batch_size must be an integer from 1 to 150"),
        (["--batch-size", "-3"], "batch_size must be an integer from 1 to 150"),
        (["--batch-size", "big"], "--batch-size takes integers; received 'big'"),
        (["--batch-size", "151"], "received 151"),
        (["--lr", "0"], "lr must be a finite number > 0; received 0.0"),
        (["--lr", "inf"], "lr must be a finite number > 0; received inf"),
        (["--lr", "nan"], "lr must be a finite number > 0; received nan"),
        (["--epochs", "0"], "epochs must be an integer from 1 to 100,000; received 0"),
        (["--batch-size", "32,32"], "--batch-size lists 32 more than once; list each value once"),
        (["--name", ""], "name must be 1 to 100 letters"),
        (["--hidden", "100000x100000"], "hidden must be 1 to 8 layer widths from 1 to 1024"),
        (["--seeds", "0"], "--seeds must be an integer >= 1; received '0'"),
        (["--lr", "0.1,,0.2"], "--lr takes a comma-separated list"),
        (["--margin-rate", "1"], "--margin-rate must be a number greater than 0 and less than 1; "
                                 "received '1'"),
        (["--margin-loss", "-0.1"], "--margin-loss must be a number greater than 0 and less than "
                                    "inf; received '-0.1'"),
        (["--margin-loss", "nan"], "--margin-loss must be a number greater than 0"),
    ],
)
def test_bad_run_options_exit_2_with_one_line_and_write_nothing(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)

    with pytest.raises(SystemExit) as info:
        sys.exit(main(["run", *argv, "--out", str(tmp_path / "out")]))

    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert message in err
    assert list(tmp_path.iterdir()) == []


def test_results_path_that_is_a_file_is_refused(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file"
    target.write_text("keep me")

    assert main(["run", "--preset", "smoke", "--out", str(target)]) == 2
    assert "--out must be a directory" in capsys.readouterr().err
    assert target.read_text() == "keep me"


def test_report_on_a_directory_that_is_not_results_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        f"xorbench report: error: RESULTS must be an xorbench results directory; "
        f"received {tmp_path}"
    )


def test_help_states_the_margins_the_statistics_use(capsys: pytest.CaptureFixture[str]) -> None:
    from xorbench import stats

    with pytest.raises(SystemExit):
        main(["report", "--help"])
    text = " ".join(capsys.readouterr().out.split())

    assert f"reached-target rate, in every comparison (default {stats.MARGIN_RATE:g})" in text
    assert f"in nats (default {stats.MARGIN_LOSS:g})" in text


def test_report_margins_reach_the_equivalence_tests(tmp_path: Path) -> None:
    from fakes import grid_runs, write_results_dir

    results_dir = write_results_dir(tmp_path / "r", grid_runs(seeds=30))

    assert main(["report", str(results_dir), "--out", str(tmp_path / "a"),
                 "--margin-rate", "0.2", "--margin-loss", "0.5"]) == 0
    text = (tmp_path / "a" / "report.md").read_text()
    assert "Margins: reached-target rate ±0.2;" in text
    assert "Lightning - Keras final loss ±0.5 nats." in text


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('hidden = [[3, 4], "8"]', "hidden must be 1 to 8 layer widths from 1 to 1024"),
        ('preset = ["smoke"]', "preset must be one of notebook, grid, smoke; received ['smoke']"),
        ("name = 5", "name must be 1 to 100 letters, digits"),
        ('name = "../escape"', "received '../escape'"),
        ('optimizer = ["sgd", "sgd"]', "optimizer lists 'sgd' more than once; list each "
                                       "value once"),
        ("lr = [0.1, 0.1000001]", "the grid has cell lightning-sgd-b1-lr0.1-h3x4-e500 twice: "
                                  "lr values must differ in their first 6 significant digits"),
        ('seed_design = "factorial"\nseeds = 1', "seeds must be from 2 to 100 with seed_design "
                                                  "factorial"),
    ],
)
def test_bad_config_files_exit_2_with_one_line_and_write_nothing(
    toml: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.toml").write_text(toml + "\n")

    assert main(["run", "--config", "c.toml"]) == 2

    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


def test_a_mixed_hidden_list_is_two_architectures(tmp_path: Path) -> None:
    from xorbench.grid import build_experiment

    (tmp_path / "c.toml").write_text('preset = "smoke"\nhidden = [[3, 4], 8]\n')

    cells = build_experiment(None, tmp_path / "c.toml").cells

    assert {cell.hidden for cell in cells} == {(3, 4), (8,)}


def test_a_config_path_that_is_a_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--config", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"xorbench run: error: config file {tmp_path} cannot be read: Is a directory")


def test_report_dirs_that_are_files_are_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fakes import grid_runs, write_results_dir

    afile = tmp_path / "afile"
    afile.write_text("keep me")
    results_dir = write_results_dir(tmp_path / "r", grid_runs(seeds=2))

    assert main(["run", "--preset", "smoke", "--out", str(tmp_path / "new"),
                 "--report-dir", str(afile)]) == 2
    assert main(["report", str(results_dir), "--out", str(afile)]) == 2

    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"xorbench run: error: --report-dir must be a directory; {afile} is a file",
                   f"xorbench report: error: --out must be a directory; {afile} is a file"]
    assert afile.read_text() == "keep me" and not (tmp_path / "new").exists()


@pytest.mark.parametrize(("manifest", "why"), [("{", "cannot be read"),
                                               ("[]", "is not an xorbench manifest")])
def test_a_damaged_manifest_is_one_line_for_run_and_report(
    manifest: str, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "manifest.json").write_text(manifest)

    assert main(["report", str(tmp_path / "r"), "--out", str(tmp_path / "rep")]) == 2
    assert main(["run", "--preset", "smoke", "--out", str(tmp_path / "r")]) == 2

    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(why in line for line in err), err
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["manifest.json"]


def test_a_truncated_table_is_one_line_for_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fakes import grid_runs, write_results_dir

    results_dir = write_results_dir(tmp_path / "r", grid_runs(seeds=2))
    runs = results_dir / "runs.parquet"
    runs.write_bytes(runs.read_bytes()[:100])

    assert main(["report", str(results_dir), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"xorbench report: error: a table in {results_dir} cannot be read")
    assert "\n" not in err


def test_parity_refuses_an_out_it_cannot_create_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me")

    code = main(["parity", "--optimizer", "sgd", "--batch-size", "150", "--epochs", "1",
                 "--out", str(afile / "sub")])

    assert code == 2
    err = capsys.readouterr()
    assert err.err.strip() == f"xorbench parity: error: --out {afile / 'sub'} cannot be created: " \
                              "Not a directory"
    assert err.out == "" and afile.read_text() == "keep me"  # no table: nothing was trained


def test_report_refuses_a_parity_directory_without_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fakes import grid_runs, write_results_dir

    results_dir = write_results_dir(tmp_path / "r", grid_runs(seeds=2))
    (tmp_path / "empty").mkdir()

    code = main(["report", str(results_dir), "--parity", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "rep")])

    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"xorbench report: error: --parity {tmp_path / 'empty'} holds no parity tables; write "
        f"them with xorbench parity --out {tmp_path / 'empty'}")
    assert not (tmp_path / "rep").exists()


def test_counts_are_singular_for_one() -> None:
    from xorbench.cli import _count

    assert [_count(n, "cell") for n in (0, 1, 2)] == ["0 cells", "1 cell", "2 cells"]
