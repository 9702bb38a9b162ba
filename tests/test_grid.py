"""Presets, TOML files and flags become validated cells; bad values are refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from xorbench.grid import ConfigError, build_experiment


def test_notebook_preset_is_the_six_notebook_configurations_in_both_frameworks() -> None:
    experiment = build_experiment("notebook")

    pairs = {(c.optimizer, c.batch_size) for c in experiment.cells}
    assert pairs == {("sgd", 150), ("sgd", 1), ("sgd", 32), ("asgd", 32), ("rmsprop", 32),
                     ("adam", 32)}
    assert {c.framework for c in experiment.cells} == {"lightning", "keras"}
    assert {(c.lr, c.epochs) for c in experiment.cells} == {(0.05, 500)}
    assert len(experiment.cells) == 12


def test_grid_preset_is_the_full_product() -> None:
    experiment = build_experiment("grid")

    assert len(experiment.cells) == 4 * 4 * 2
    assert {c.batch_size for c in experiment.cells} == {1, 8, 32, 150}
    assert len({c.key for c in experiment.cells}) == len(experiment.cells)


def test_flags_override_axes_and_lists_become_axes() -> None:
    experiment = build_experiment(
        "smoke", overrides={"lr": (0.1, 0.2), "hidden": ((3, 4), (8,)), "seeds": 2}
    )

    assert {c.lr for c in experiment.cells} == {0.1, 0.2}
    assert {c.hidden for c in experiment.cells} == {(3, 4), (8,)}
    assert experiment.seeds == 2
    assert len(experiment.cells) == 2 * 2 * 2 * 2 * 2


def test_overriding_the_optimizer_of_the_notebook_keeps_its_batch_sizes() -> None:
    experiment = build_experiment("notebook", overrides={"optimizer": ("adam",)})

    assert {c.optimizer for c in experiment.cells} == {"adam"}
    assert {c.batch_size for c in experiment.cells} == {150, 1, 32}


def test_toml_file_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "x.toml"
    config.write_text(
        'preset = "smoke"\nname = "mine"\noptimizer = ["rmsprop"]\nbatch_size = [8]\n'
        "hidden = [[5, 5]]\nseeds = 4\ntarget = 0.95\n"
    )

    experiment = build_experiment(config=config, overrides={"seeds": 2})

    assert experiment.name == "mine"
    assert {(c.optimizer, c.batch_size, c.hidden) for c in experiment.cells} == {
        ("rmsprop", 8, (5, 5))
    }
    assert experiment.seeds == 2 and experiment.target == 0.95


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"framework": ("jax",)}, "framework must be one of lightning, keras; received 'jax'"),
        ({"optimizer": ("adagrad",)},
         "optimizer must be one of sgd, asgd, rmsprop, adam; received 'adagrad'"),
        ({"batch_size": (0,)}, "batch_size must be an integer from 1 to 150 (the training set); "
         "received 0"),
        ({"batch_size": (151,)}, "batch_size must be an integer from 1 to 150 (the training set); "
         "received 151"),
        ({"lr": (0.0,)}, "lr must be a finite number > 0; received 0.0"),
        ({"lr": (float("inf"),)}, "lr must be a finite number > 0; received inf"),
        ({"lr": (float("nan"),)}, "lr must be a finite number > 0; received nan"),
        ({"epochs": (0,)}, "epochs must be an integer from 1 to 100,000; received 0"),
        ({"epochs": (10**11,)}, "epochs must be an integer from 1 to 100,000; "
         "received 100000000000"),
        ({"seeds": 0}, "seeds must be an integer from 1 to 10,000; received 0"),
        ({"seeds": 10**8}, "seeds must be an integer from 1 to 10,000; received 100000000"),
        ({"seeds": 101, "seed_design": "factorial"}, "seeds must be from 2 to 100 with "
         "seed_design factorial (k init x k order seeds: one of each has no variance to "
         "split, and k x k runs per cell grow fast); received 101"),
        ({"target": 1.5}, "target must be a number in (0, 1]; received 1.5"),
        ({"hidden": ((3, 0),)}, "hidden must be 1 to 8 layer widths from 1 to 1024, such as "
         "3x4; received (3, 0)"),
        ({"hidden": ((100000, 100000),)}, "hidden must be 1 to 8 layer widths from 1 to "
         "1024, such as 3x4; received (100000, 100000)"),
        ({"hidden": ((3,) * 9,)}, "hidden must be 1 to 8 layer widths from 1 to 1024, "
         "such as 3x4; received (3, 3, 3, 3, 3, 3, 3, 3, 3)"),
        ({"batch_size": (32, 32)}, "batch_size lists 32 more than once; list each value "
         "once"),
        ({"hidden": ((3, 4), (3, 4))}, "hidden lists (3, 4) more than once; list each "
         "value once"),
        ({"name": ""}, "name must be 1 to 100 letters, digits, '.', '_' or '-', "
         "starting with a letter or digit (it names the results and report "
         "directories); received ''"),
    ],
)
def test_bad_values_name_the_option_the_allowed_values_and_what_was_given(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build_experiment("smoke", overrides=overrides)

    assert str(info.value) == message


def test_bad_preset_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="preset must be one of notebook, grid, smoke; "
                       "received 'huge'"):
        build_experiment("huge")

    broken = tmp_path / "broken.toml"
    broken.write_text("optimizer = [sgd")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        build_experiment(config=broken)

    unknown = tmp_path / "unknown.toml"
    unknown.write_text("optimiser = ['sgd']\n")
    with pytest.raises(ConfigError, match="unknown key 'optimiser'; allowed keys are preset"):
        build_experiment(config=unknown)

    wrong_type = tmp_path / "wrong.toml"
    wrong_type.write_text("batch_size = ['big']\n")
    with pytest.raises(ConfigError, match="batch_size must be an integer from 1 to 150"):
        build_experiment(config=wrong_type)


def test_no_options_is_the_grid_with_100_seeds_on_the_batched_engine() -> None:
    experiment = build_experiment()

    assert experiment.name == "grid"
    assert experiment.seeds == 100 and experiment.engine == "batched"


def test_data_per_run_trains_runs_one_by_one_unless_told_otherwise() -> None:
    assert build_experiment("smoke", overrides={"data_per_run": True}).engine == "per-run"

    with pytest.raises(ConfigError, match="data_per_run needs engine per-run; received engine "
                       "'batched'"):
        build_experiment("smoke", overrides={"data_per_run": True, "engine": "batched"})
