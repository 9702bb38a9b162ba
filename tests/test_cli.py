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
        (["--epochs", "0"], "epochs must be an integer >= 1; received 0"),
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

    assert f"reached-target rate (default {stats.MARGIN_RATE:g})" in text
    assert f"in nats (default {stats.MARGIN_LOSS:g})" in text


def test_report_margins_reach_the_equivalence_tests(tmp_path: Path) -> None:
    from fakes import grid_runs, write_results_dir

    results_dir = write_results_dir(tmp_path / "r", grid_runs(seeds=30))

    assert main(["report", str(results_dir), "--out", str(tmp_path / "a"),
                 "--margin-rate", "0.2", "--margin-loss", "0.5"]) == 0
    text = (tmp_path / "a" / "report.md").read_text()
    assert "Margins: reached-target rate ±0.2;" in text
    assert "Lightning - Keras final loss ±0.5 nats." in text
