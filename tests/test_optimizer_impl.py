"""optimizer_impl as a setting of `xorbench run`, and the name map the parity check reads by."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest

from xorbench import optimizers
from xorbench.adapters.lightning import optimizer_settings
from xorbench.cli import main
from xorbench.grid import ConfigError, build_experiment
from xorbench.optimizers import OPTIMIZERS, PARAM_NAMES, OptimizerSpec, keras_kwargs, torch_kwargs
from xorbench.results import ResultsDirError, check_target, write_json_atomic


def test_native_is_the_default_and_aligned_reaches_every_cell(tmp_path: Path) -> None:
    native = build_experiment("smoke")
    config = tmp_path / "a.toml"
    config.write_text('preset = "smoke"\noptimizer_impl = "aligned"\n')
    aligned = build_experiment(config=config)

    assert native.optimizer_impl == "native"
    assert {c.optimizer_impl for c in native.cells} == {"native"}
    assert {c.optimizer_impl for c in aligned.cells} == {"aligned"}
    # Native keys and manifests are those of results written before the setting existed.
    assert "optimizer_impl" not in native.to_dict()
    assert all(not c.key.endswith("aligned") for c in native.cells)
    assert aligned.to_dict()["optimizer_impl"] == "aligned"
    assert all(c.key.endswith("-aligned") for c in aligned.cells)


def test_resume_refuses_a_changed_optimizer_impl(tmp_path: Path) -> None:
    native = build_experiment("smoke")
    aligned = build_experiment("smoke", overrides={"optimizer_impl": "aligned"})
    write_json_atomic({"experiment": native.to_dict()}, tmp_path / "manifest.json")

    check_target(tmp_path, native)
    with pytest.raises(ResultsDirError, match="holds results of a different config"):
        check_target(tmp_path, aligned)


def test_bad_optimizer_impl_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        build_experiment("smoke", overrides={"optimizer_impl": "exact"})

    assert str(info.value) == "optimizer_impl must be one of native, aligned; received 'exact'"


def test_run_flag_refuses_an_unknown_impl(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "--optimizer-impl", "exact", "--out", str(tmp_path / "out")])

    assert info.value.code == 2
    assert "argument --optimizer-impl: invalid choice: 'exact'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_name_map_covers_both_kwargs_functions(name: str) -> None:
    spec = OptimizerSpec(name, 0.05)
    torch_keys = {k for k in torch_kwargs(spec) if k != "betas"}
    torch_keys |= {"betas[0]", "betas[1]"} if "betas" in torch_kwargs(spec) else set()

    assert {t for t, _ in PARAM_NAMES[name].values()} == torch_keys
    assert {k for _, k in PARAM_NAMES[name].values() if k is not None} == set(keras_kwargs(spec))


def test_torch_settings_are_read_from_the_live_object(monkeypatch: pytest.MonkeyPatch) -> None:
    before = optimizer_settings(OptimizerSpec("adam", 0.05))
    table = dict(optimizers.HYPERPARAMS)
    table["adam"] = MappingProxyType({**optimizers.HYPERPARAMS["adam"], "beta_2": 0.98})
    monkeypatch.setattr(optimizers, "HYPERPARAMS", MappingProxyType(table))

    after = optimizer_settings(OptimizerSpec("adam", 0.05))

    assert before["settings"]["betas"] == (0.9, 0.999)
    assert after["settings"]["betas"] == (0.9, 0.98)
    assert after["class"] == "torch.optim.adam.Adam"
    assert np.isclose(after["library_defaults"]["lr"], 1e-3)  # torch's default, read back
