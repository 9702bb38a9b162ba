"""The ``xorbench`` command: ``run`` trains a grid and reports it, ``report`` redraws a report.

Only this module prints. Frameworks are imported in worker processes, never here, so
``xorbench --help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from xorbench.adapters.base import DTYPES, ENGINES, OPTIMIZER_IMPLS
from xorbench.bench import BenchFileError
from xorbench.cluster import ClusterError, parse_scheduler
from xorbench.grid import (
    MAX_EPOCHS,
    MAX_PARITY_SEEDS,
    PRESETS,
    Cell,
    ConfigError,
    build_experiment,
    parse_list,
)
from xorbench.results import ResultsDirError, check_target, check_unlocked, is_results_dir
from xorbench.seeds import SEED_DESIGNS

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``xorbench run: error: <what was wrong>``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _list(kind: type, option: str) -> Any:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            return parse_list(option, text, kind)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _positive_int(option: str, upper: int | None = None) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1 or (upper is not None and value > upper):
            allowed = ">= 1" if upper is None else f"from 1 to {upper}"
            raise argparse.ArgumentTypeError(
                f"{option} must be an integer {allowed}; received {text!r}")
        return value

    return parse


def _margin(option: str, upper: float) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0 < value < upper:
            raise argparse.ArgumentTypeError(
                f"{option} must be a number greater than 0 and less than {upper:g}; "
                f"received {text!r}")
        return value

    return parse


def _add_margins(parser: argparse.ArgumentParser) -> None:
    """The equivalence margins the comparisons of xorbench.stats are held to."""
    parser.add_argument("--margin-rate", type=_margin("--margin-rate", 1), metavar="X",
                        help="equivalence margin on a difference in reached-target rate, in "
                        "every comparison (default 0.05)")
    parser.add_argument("--margin-loss", type=_margin("--margin-loss", math.inf), metavar="X",
                        help="equivalence margin on the per-seed final val loss difference "
                        "between Lightning and Keras, in nats (default 0.02)")


def _stats_options(args: argparse.Namespace) -> dict[str, float]:
    names = ("margin_rate", "margin_loss")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _scheduler(text: str) -> str:
    try:
        return parse_scheduler(text)
    except ClusterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="xorbench",
        description="Train a tiny XOR network in Lightning and Keras over optimizers, batch "
        "sizes and seeds; write tidy results and a Markdown report.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="train a grid, write RESULTS and a report")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--preset", choices=sorted(PRESETS), help="start from a preset "
                        "(default: grid)")
    source.add_argument("--config", type=Path, metavar="FILE.toml", help="a TOML config file")
    run.add_argument("--name", help="the experiment's name (default: the preset's)")
    run.add_argument("--framework", type=_list(str, "--framework"), help="lightning,keras")
    run.add_argument("--optimizer", type=_list(str, "--optimizer"), help="sgd,asgd,rmsprop,adam")
    run.add_argument("--batch-size", type=_list(int, "--batch-size"), help="e.g. 1,8,32,150")
    run.add_argument("--lr", type=_list(float, "--lr"), help="learning rates, e.g. 0.05,0.1")
    run.add_argument("--hidden", type=_list(tuple, "--hidden"), help="hidden widths, e.g. 3x4")
    run.add_argument("--epochs", type=_list(int, "--epochs"), help="epochs per run")
    run.add_argument("--seeds", type=_positive_int("--seeds"),
                     help="seeds per cell (k: k x k runs per cell with --seed-design factorial)")
    run.add_argument("--seed-design", choices=SEED_DESIGNS,
                     help="independent (default): each seed its own initial weights and batch "
                     "order; factorial: every init seed with every order seed, to split the "
                     "seed variance between them")
    run.add_argument("--base-seed", type=int, help="the seed every run's seeds derive from")
    run.add_argument("--target", type=float, help="val accuracy that counts as reached (0.9)")
    run.add_argument("--data-per-run", action="store_true", default=None,
                     help="draw the XOR points per run (data-sampling variance)")
    run.add_argument("--engine", choices=ENGINES,
                     help="batched (default): all seeds of a cell in one model; per-run: one run "
                     "at a time")
    run.add_argument("--optimizer-impl", choices=OPTIMIZER_IMPLS,
                     help="Keras rmsprop/adam: native (default, Keras's own formulas) or aligned "
                     "(torch's formulas)")
    run.add_argument("--workers", type=_positive_int("--workers"),
                     help="worker processes (default: the number of cores)")
    run.add_argument("--scheduler", type=_scheduler, metavar="tcp://HOST:PORT",
                     help="train on the Dask cluster of this scheduler instead of local processes")
    run.add_argument("--cells-per-task", type=_positive_int("--cells-per-task"),
                     help="cells per Dask task (default: from the grid and the cluster's size)")
    run.add_argument("--out", type=Path, help="results directory (default: results/NAME)")
    run.add_argument("--restart", action="store_true",
                     help="delete the results in --out and start over")
    report_dest = run.add_mutually_exclusive_group()
    report_dest.add_argument("--report-dir", type=Path, help="default: reports/NAME")
    report_dest.add_argument("--no-report", action="store_true", help="skip the report")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_margins(run)

    report = commands.add_parser("report", help="write the report of a results directory")
    report.add_argument("results", type=Path, metavar="RESULTS")
    report.add_argument("--out", type=Path, help="report directory (default: reports/NAME)")
    report.add_argument("--bench", type=Path, nargs="+", metavar="FILE",
                        help="pytest-benchmark JSON files for the Speed section, e.g. "
                        "bench-torch.json bench-keras.json (default: RESULTS/bench*.json)")
    report.add_argument("--parity", type=Path, metavar="DIR",
                        help="a directory written by `xorbench parity --out` for the Framework "
                        "parity section (default: RESULTS/parity, if present)")
    _add_parity(commands)
    _add_margins(report)
    return parser


def _add_parity(commands: Any) -> None:
    parity = commands.add_parser(
        "parity", help="train Lightning and Keras from the same start; compare epoch by epoch")
    parity.add_argument("--optimizer", type=_list(str, "--optimizer"),
                        help="sgd,asgd,rmsprop,adam (default: all)")
    parity.add_argument("--batch-size", type=_list(int, "--batch-size"),
                        help="default: 1,32,150")
    parity.add_argument("--epochs", type=_positive_int("--epochs", MAX_EPOCHS),
                        help="epochs per run (default: 10 in float32, 20 in float64)")
    parity.add_argument("--dtype", type=_list(str, "--dtype"), default=("float32",),
                        help="float32 (default), float64 or float32,float64")
    parity.add_argument("--optimizer-impl", choices=[*OPTIMIZER_IMPLS, "both"], default="both",
                        help="Keras optimizers to compare: native, aligned or both (default)")
    parity.add_argument("--tolerance", type=float,
                        help="largest difference that counts as agreement (default: 1e-5 in "
                        "float32, 1e-9 in float64)")
    parity.add_argument("--lr", type=float, default=0.05, help="learning rate (default: 0.05)")
    parity.add_argument("--seeds", type=_positive_int("--seeds", MAX_PARITY_SEEDS), default=1,
                        metavar="N", help="seed indices 0 to N-1 per cell, each from the initial "
                        "weights and batch order `xorbench run` gives that seed; a row shows "
                        f"the worst (default: 1, at most {MAX_PARITY_SEEDS})")
    parity.add_argument("--out", type=Path, help="write parquet tables, Markdown and the "
                        "settings they were made with (parity-DTYPE.json) here")
    parity.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ["name", "framework", "optimizer", "batch_size", "lr", "hidden", "epochs", "seeds",
             "base_seed", "target", "data_per_run", "engine", "optimizer_impl", "seed_design"]
    return {name: getattr(args, name) for name in names}


def _bar(total: int, unit: str, quiet: bool, desc: str | None = None) -> Any:
    """A progress bar on stderr counting ``unit``s; hidden with -q."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, disable=quiet, dynamic_ncols=True, desc=desc,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} " + unit
                + "s [{elapsed}<{remaining}]")


def _progress(total_runs: int, runs_per_cell: int, n_cells: int,
              quiet: bool) -> tuple[Any, Any, Any, dict[str, int]]:
    """A progress bar over runs, the runner's callbacks that move it, and the count of runs
    kept from earlier sessions (``kept``, set when resuming)."""
    bar = _bar(total_runs, "run", quiet)
    kept = {"runs": 0}

    def on_cell_done(cell: Cell, runs: Any) -> None:
        bad = int((runs["status"] != "ok").sum())
        bar.set_postfix_str(f"{cell.key}" + (f" ({bad} not ok)" if bad else ""), refresh=False)
        bar.update(len(runs))

    def on_resume(finished: list[Cell]) -> None:
        bar.write(f"xorbench: resuming: {len(finished)} of {n_cells} cells already finished "
                  f"are kept; training the other {n_cells - len(finished)}", file=sys.stderr)
        # The kept runs start the bar as its initial count, so that the rate and the time left
        # are those of the runs trained now.
        kept["runs"] = len(finished) * runs_per_cell
        bar.initial = bar.n = kept["runs"]
        bar.refresh()

    return bar, on_cell_done, on_resume, kept


def _check_report_dir(path: Path, option: str) -> None:
    if path.exists() and not path.is_dir():
        raise ResultsDirError(f"{option} must be a directory; {path} is a file")


def _check_executor_options(args: argparse.Namespace) -> None:
    if args.scheduler is not None and args.workers is not None:
        raise ClusterError("--workers sets local worker processes; with --scheduler the "
                           "cluster's workers train the cells, so give one or the other")
    if args.scheduler is None and args.cells_per_task is not None:
        raise ClusterError("--cells-per-task needs --scheduler")


def _count(n: int, noun: str) -> str:
    """'1 cell', '8 cells'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def cmd_run(args: argparse.Namespace) -> int:
    _check_executor_options(args)
    experiment = build_experiment(args.preset, args.config, _overrides(args))
    out = args.out or Path("results") / experiment.name
    if args.restart and out.is_dir() and any(out.iterdir()) and not is_results_dir(out):
        raise ResultsDirError(f"--restart deletes results directories only; {out} is not one")
    check_target(out, None if args.restart else experiment)
    check_unlocked(out)
    report_dir = args.report_dir or Path("reports") / experiment.name
    if not args.no_report:
        _check_report_dir(report_dir, "--report-dir")

    from xorbench.runner import open_executor, run_experiment

    # Connect before printing anything, so a missing scheduler is one line of error and
    # leaves --out as it was.
    executor = open_executor(experiment.engine, workers=args.workers, scheduler=args.scheduler,
                             cells_per_task=args.cells_per_task)
    try:
        n_runs = len(experiment.cells) * experiment.runs_per_cell
        k = experiment.seeds
        seeds = f"{k} init x {k} order seeds" if experiment.seed_design == "factorial" else (
            _count(k, "seed"))
        where = f" on {args.scheduler}" if args.scheduler else ""
        print(f"xorbench: {experiment.name}: {_count(len(experiment.cells), 'cell')} x {seeds} "
              f"= {_count(n_runs, 'run')}{where} -> {out}", file=sys.stderr)
        bar, on_cell_done, on_resume, kept = _progress(n_runs, experiment.runs_per_cell,
                                                       len(experiment.cells), args.quiet)
        start = time.perf_counter()
        with bar:
            runs = run_experiment(experiment, out, executor=executor, on_cell_done=on_cell_done,
                                  on_resume=on_resume, restart=args.restart)
    finally:
        executor.close()
    counts = runs["status"].value_counts().to_dict()
    trained = (f"{len(runs)} runs in" if not kept["runs"] else
               f"{len(runs)} runs, {kept['runs']} kept and {len(runs) - kept['runs']} trained in")
    print(f"xorbench: {trained} {time.perf_counter() - start:.1f} s "
          f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}); results in {out}")

    if not args.no_report:
        from xorbench.report import write_report

        path = write_report(out, report_dir, stats_options=_stats_options(args))
        print(f"xorbench: report in {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    path: Path = args.results
    if not path.is_dir() or not is_results_dir(path):
        raise ResultsDirError(f"RESULTS must be an xorbench results directory; received {path}")

    from xorbench.report import write_report
    from xorbench.results import read_manifest

    if args.parity is not None and not args.parity.is_dir():
        raise ResultsDirError(f"--parity must be a directory; received {args.parity}")
    if args.parity is not None and not any(args.parity.glob("parity_summary-*.parquet")):
        raise ResultsDirError(f"--parity {args.parity} holds no parity tables; write them with "
                              f"xorbench parity --out {args.parity}")
    name = read_manifest(path).get("experiment", {}).get("name", path.name)
    out = args.out or Path("reports") / name
    _check_report_dir(out, "--out")
    report = write_report(path, out, bench=args.bench, parity=args.parity,
                          stats_options=_stats_options(args))
    print(f"xorbench: report in {report}")
    return 0


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def _parity_configs(args: argparse.Namespace) -> list[Any]:
    """One ParityConfig per float type, or ConfigError naming the bad setting."""
    from xorbench.parity import DEFAULT_EPOCHS_BY_DTYPE, ParityConfig, check_config

    impls = OPTIMIZER_IMPLS if args.optimizer_impl == "both" else (args.optimizer_impl,)
    configs = []
    for dtype in args.dtype:
        epochs = args.epochs or DEFAULT_EPOCHS_BY_DTYPE.get(dtype, 1)
        settings: dict[str, Any] = {"epochs": epochs, "dtype": dtype, "impls": impls,
                                    "tolerance": args.tolerance, "lr": args.lr,
                                    "seeds": args.seeds}
        if args.optimizer:
            settings["optimizers"] = args.optimizer
        if args.batch_size:
            settings["batch_sizes"] = args.batch_size
        config = ParityConfig(**settings)
        try:
            check_config(config)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        configs.append(config)
    return configs


def cmd_parity(args: argparse.Namespace) -> int:
    if args.dtype and any(d not in DTYPES for d in args.dtype):
        bad = next(d for d in args.dtype if d not in DTYPES)
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}; received {bad!r}")
    configs = _parity_configs(args)
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out must be a directory; {args.out} is a file")
    if args.out is not None:
        try:  # before any training, so an unusable --out costs nothing
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--out {args.out} cannot be created: {exc.strerror}") from None

    from xorbench.parity import comparisons, parity_markdown, run_parity, write_parity

    for config in configs:
        start = time.perf_counter()
        with _bar(len(comparisons(config)), "comparison", args.quiet, config.dtype) as bar:
            result = run_parity(config, on_comparison_done=lambda *_: bar.update())
        print(parity_markdown(result.summary, result.differences))
        print(f"\nxorbench parity: {len(result.summary)} comparisons in "
              f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
        if args.out is not None:
            print(f"xorbench parity: tables in {write_parity(result, args.out)}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    command = {"run": cmd_run, "report": cmd_report, "parity": cmd_parity}[args.command]
    # A service manager or `timeout` stops with SIGTERM: stop as on Ctrl-C, keeping every
    # finished cell, instead of dying mid-write.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return command(args)
    except (ConfigError, ResultsDirError, BenchFileError, ClusterError) as exc:
        print(f"xorbench {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        kept = "; finished cells are kept and a rerun resumes" if args.command == "run" else ""
        print(f"xorbench: interrupted{kept}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
