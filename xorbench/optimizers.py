"""Optimizer names -> every hyperparameter written out -> each framework's constructor arguments.

This module is the only place that knows an optimizer's hyperparameters. The adapters never rely
on a library default: they build their optimizer objects from :func:`torch_kwargs` and
:func:`keras_kwargs`, which translate the same values into each library's argument names.

The values are torch's defaults, so that the notebook's PyTorch half reproduces. With them the
Keras optimizers still differ in formula, not in value: RMSprop and Adam place epsilon differently
(``xorbench parity`` shows the framework-differences table, read from the live objects; the
"aligned" optimizer_impl uses Keras ports of torch's formulas), and Keras has no ASGD, so
xorbench ships a port of torch's algorithm (``xorbench.adapters.keras_asgd``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

# Hyperparameters in xorbench's own vocabulary; the learning rate is a grid axis, not listed here.
HYPERPARAMS: MappingProxyType[str, MappingProxyType[str, Any]] = MappingProxyType(
    {
        "sgd": MappingProxyType({"momentum": 0.0, "nesterov": False, "weight_decay": 0.0}),
        "asgd": MappingProxyType({"lambd": 1e-4, "alpha": 0.75, "t0": 1e6, "weight_decay": 0.0}),
        "rmsprop": MappingProxyType(
            {"rho": 0.99, "eps": 1e-8, "momentum": 0.0, "centered": False}
        ),
        "adam": MappingProxyType(
            {"beta_1": 0.9, "beta_2": 0.999, "eps": 1e-8, "amsgrad": False}
        ),
    }
)

OPTIMIZERS: tuple[str, ...] = tuple(HYPERPARAMS)

# Where each argument of torch_kwargs and keras_kwargs sits in the live objects: name ->
# (key in torch's optimizer.defaults, key in Keras's get_config()), None where the library has no
# such setting. "betas[1]" is an item of torch's betas. The parity check reads hyperparameters
# back through this map; tests check that it covers both kwargs functions.
_Names = MappingProxyType[str, tuple[str, str | None]]
PARAM_NAMES: MappingProxyType[str, _Names] = MappingProxyType(
    {
        "sgd": MappingProxyType({
            "lr": ("lr", "learning_rate"),
            "momentum": ("momentum", "momentum"),
            "nesterov": ("nesterov", "nesterov"),
            "dampening": ("dampening", None),
            "weight_decay": ("weight_decay", None),
        }),
        "asgd": MappingProxyType({
            "lr": ("lr", "learning_rate"),
            "lambd": ("lambd", "lambd"),
            "alpha": ("alpha", "alpha"),
            "t0": ("t0", "t0"),
            "weight_decay": ("weight_decay", "weight_decay"),
        }),
        "rmsprop": MappingProxyType({
            "lr": ("lr", "learning_rate"),
            "rho": ("alpha", "rho"),
            "eps": ("eps", "epsilon"),
            "momentum": ("momentum", "momentum"),
            "centered": ("centered", "centered"),
            "weight_decay": ("weight_decay", None),
        }),
        "adam": MappingProxyType({
            "lr": ("lr", "learning_rate"),
            "beta_1": ("betas[0]", "beta_1"),
            "beta_2": ("betas[1]", "beta_2"),
            "eps": ("eps", "epsilon"),
            "amsgrad": ("amsgrad", "amsgrad"),
            "weight_decay": ("weight_decay", None),
        }),
    }
)


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer with its learning rate and every other hyperparameter."""

    name: str
    lr: float

    def __post_init__(self) -> None:
        if self.name not in HYPERPARAMS:
            raise ValueError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}; received {self.name!r}"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0; received lr={self.lr!r}")

    @property
    def hyperparams(self) -> dict[str, Any]:
        """Every hyperparameter, learning rate included."""
        return {"lr": self.lr, **HYPERPARAMS[self.name]}


def torch_kwargs(spec: OptimizerSpec) -> dict[str, Any]:
    """Keyword arguments of ``torch.optim.<SGD|ASGD|RMSprop|Adam>`` for ``spec``."""
    h = spec.hyperparams
    if spec.name == "sgd":
        return {
            "lr": h["lr"],
            "momentum": h["momentum"],
            "dampening": 0.0,
            "nesterov": h["nesterov"],
            "weight_decay": h["weight_decay"],
        }
    if spec.name == "asgd":
        return {
            "lr": h["lr"],
            "lambd": h["lambd"],
            "alpha": h["alpha"],
            "t0": h["t0"],
            "weight_decay": h["weight_decay"],
        }
    if spec.name == "rmsprop":
        return {
            "lr": h["lr"],
            "alpha": h["rho"],
            "eps": h["eps"],
            "momentum": h["momentum"],
            "centered": h["centered"],
            "weight_decay": 0.0,
        }
    return {
        "lr": h["lr"],
        "betas": (h["beta_1"], h["beta_2"]),
        "eps": h["eps"],
        "amsgrad": h["amsgrad"],
        "weight_decay": 0.0,
    }


def keras_kwargs(spec: OptimizerSpec) -> dict[str, Any]:
    """Keyword arguments of the Keras optimizer for ``spec`` (xorbench's ASGD for ``asgd``).

    Keras rejects integers for its float arguments, so every number is cast to ``float``.
    Keras's ``weight_decay`` is decoupled (p -= p * wd * lr), unlike torch's L2 term, so it is
    left unset; every preset uses zero weight decay.
    """
    h = spec.hyperparams
    lr = float(h["lr"])
    if spec.name == "sgd":
        return {"learning_rate": lr, "momentum": float(h["momentum"]), "nesterov": h["nesterov"]}
    if spec.name == "asgd":
        return {
            "learning_rate": lr,
            "lambd": float(h["lambd"]),
            "alpha": float(h["alpha"]),
            "t0": float(h["t0"]),
            # xorbench's ASGD takes torch's L2 weight decay, so the value goes to both.
            "weight_decay": float(h["weight_decay"]),
        }
    if spec.name == "rmsprop":
        return {
            "learning_rate": lr,
            "rho": float(h["rho"]),
            "epsilon": float(h["eps"]),
            "momentum": float(h["momentum"]),
            "centered": h["centered"],
        }
    return {
        "learning_rate": lr,
        "beta_1": float(h["beta_1"]),
        "beta_2": float(h["beta_2"]),
        "epsilon": float(h["eps"]),
        "amsgrad": h["amsgrad"],
    }


def asgd_averaging_active(steps: int, t0: float) -> bool:
    """Whether torch's ASGD averaged any iterates in ``steps`` updates.

    Step k (from 1) averages with mu_k = 1 / max(1, k - 1 - t0); the average differs from a copy
    of the weights only once k - 1 - t0 > 1, i.e. from step t0 + 3 on.
    """
    return steps - 1 - t0 > 1
