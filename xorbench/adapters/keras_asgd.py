"""Averaged SGD for Keras 3: a port of ``torch.optim.ASGD``, step for step.

Keras has no ASGD (``use_ema`` is an exponential average that overwrites the weights at the end of
``fit``, a different algorithm), so xorbench ships this port. Update ``k`` (counting from 1) of a
parameter ``p`` with gradient ``g``, as in torch's single-tensor implementation::

    g = g + weight_decay * p            # only when weight_decay != 0 (L2, as in torch)
    p = p * (1 - lambd * eta)           # decay term
    p = p - eta * g                     # SGD step
    ax = p if mu == 1 else ax + mu * (p - ax)
    eta = lr / (1 + lambd * lr * k) ** alpha
    mu = 1 / max(1, k - t0)

``eta`` starts at ``lr`` and ``mu`` at 1; both are shared by all parameters. The average ``ax``
is kept in the optimizer (one slot per parameter, :meth:`ASGD.averaged_variables`) and never
written into the model, as in torch. With ``t0 = 0`` the average after ``k >= 2`` steps is the
mean of iterates 2..k: step 2 still copies (its ``mu`` was set by step 1 to ``1/max(1, 1)``).
In general averaging starts at step ``t0 + 2`` and ``ax`` differs from the weights from step
``t0 + 3`` on (:func:`xorbench.optimizers.asgd_averaging_active`).

Importing this module imports Keras; it is only imported by the Keras adapter, inside a worker.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="xorbench")
class ASGD(keras.optimizers.Optimizer):
    """Averaged stochastic gradient descent, the algorithm of ``torch.optim.ASGD``.

    Parameters
    ----------
    learning_rate
        The base learning rate ``lr`` (a Python float or a schedule); eta decays from it.
    lambd
        Decay term: each step first scales the weights by ``1 - lambd * eta``. torch's default
        is 1e-4.
    alpha
        Power of the eta decay, ``eta = lr / (1 + lambd * lr * k) ** alpha``. torch: 0.75.
    t0
        Step after which averaging starts. torch: 1e6, i.e. no averaging in any short run.
    weight_decay
        L2 penalty added to the gradient, ``g + weight_decay * p``, as torch does. This is not
        Keras's decoupled ``weight_decay`` of the base class, which is never used here.
    name
        The optimizer's name.
    **kwargs
        Other arguments of :class:`keras.optimizers.Optimizer` (clipping, ``use_ema``, ...).
        ``gradient_accumulation_steps`` is refused: eta and mu count optimizer updates.
    """

    def __init__(
        self,
        learning_rate: Any = 0.01,
        lambd: float = 1e-4,
        alpha: float = 0.75,
        t0: float = 1e6,
        weight_decay: float | None = 0.0,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("gradient_accumulation_steps"):
            raise NotImplementedError(
                "ASGD does not support gradient_accumulation_steps: its eta and mu follow the "
                "optimizer's update count; received gradient_accumulation_steps="
                f"{kwargs['gradient_accumulation_steps']}"
            )
        # The base class's weight_decay is decoupled (p -= p * wd * lr); ours is torch's L2 term,
        # so the base class must never see it.
        super().__init__(learning_rate=learning_rate, weight_decay=None, name=name, **kwargs)
        for key, value in (("lambd", lambd), ("alpha", alpha), ("t0", t0)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(
                    f"expected a number for {key}; received {key}={value!r} ({type(value)})"
                )
        if lambd < 0 or alpha < 0 or t0 < 0:
            raise ValueError(
                "lambd, alpha and t0 must be >= 0; "
                f"received lambd={lambd!r}, alpha={alpha!r}, t0={t0!r}"
            )
        self.lambd = float(lambd)
        self.alpha = float(alpha)
        self.t0 = float(t0)
        self.l2 = float(weight_decay or 0.0)
        # A constant, so that the eta variable can be created inside a traced step; a schedule's
        # first value is only known at the first step, which sets eta in every case.
        self._initial_eta = learning_rate if isinstance(learning_rate, float) else 0.0

    def build(self, variables: list[Any]) -> None:
        """Create the shared ``eta`` and ``mu`` scalars and one average ``ax`` per variable.

        Keras may build the optimizer while tracing an XLA-compiled step, where only variables
        with constant initial values can be lifted out; so, as torch does, ``ax`` starts at zero
        (the first step overwrites it, mu being 1), and the first step sets ``eta`` to the
        current learning rate.
        """
        if self.built:
            return
        super().build(variables)
        initial_eta = keras.initializers.Constant(self._initial_eta)
        # float32 whatever Keras's floatx, as torch keeps them (its scalar dtype is float32
        # unless torch's default dtype is float64, which Lightning sets only around forward).
        self._eta = self.add_variable((), initializer=initial_eta, dtype="float32", name="eta")
        self._mu = self.add_variable((), initializer="ones", dtype="float32", name="mu")
        self._averages = self.add_optimizer_variables(variables, "ax")

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """Decay, step and average one variable with this step's shared ``eta`` and ``mu``.

        ``learning_rate`` is unused: ASGD steps by ``eta``, which :meth:`apply` derives from it.
        """
        dtype = variable.dtype
        gradient = ops.cast(gradient, dtype)
        eta = ops.cast(self._eta, dtype)
        mu = ops.cast(self._mu, dtype)
        if self.l2 != 0:
            gradient = ops.add(gradient, ops.multiply(variable, self.l2))

        # torch computes 1 - lambd * eta in double from the float32 eta, then scales in float32.
        if self.lambd != 0:
            decay = 1.0 - self.lambd * ops.cast(self._eta, "float64")
            self.assign(variable, ops.multiply(variable, ops.cast(decay, dtype)))
        self.assign_sub(variable, ops.multiply(gradient, eta))

        # mu == 1 copies exactly, so ax equals the weights bit for bit until averaging starts.
        ax = self._averages[self._get_variable_index(variable)]
        averaged = ops.add(ax, ops.multiply(ops.subtract(variable, ax), mu))
        self.assign(ax, ops.where(ops.equal(mu, 1.0), variable, averaged))

    def apply(self, grads: Any, trainable_variables: Any = None) -> None:
        """Update every variable, then set the shared ``eta`` and ``mu`` for the next step.

        ``eta`` and ``mu`` are computed once per step from the step count, in float64 as torch
        does in Python, and stored as float32 scalars like torch's state.
        """
        if not self.built and trainable_variables is not None:
            with keras.name_scope(self.name, caller=self):
                self.build(list(trainable_variables))
        lr = ops.cast(self._get_current_learning_rate(), "float64")
        first = ops.equal(self._iterations, 0)
        self._eta.assign(ops.where(first, ops.cast(lr, self._eta.dtype), self._eta))
        super().apply(grads, trainable_variables)

        step = ops.cast(self._iterations, "float64")
        eta = lr / ops.power(1.0 + self.lambd * lr * step, self.alpha)
        mu = 1.0 / ops.maximum(1.0, step - self.t0)
        self._eta.assign(ops.cast(eta, self._eta.dtype))
        self._mu.assign(ops.cast(mu, self._mu.dtype))

    def averaged_variables(self) -> list[Any]:
        """The averages ``ax``, one per trainable variable and in the same order."""
        return list(self._averages)

    @property
    def eta(self) -> Any:
        """The step size of the next update (a scalar variable; lr before the first step)."""
        return self._eta

    @property
    def mu(self) -> Any:
        """The averaging weight of the next update (a scalar variable)."""
        return self._mu

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments, for ``keras.optimizers.deserialize``."""
        config: dict[str, Any] = super().get_config()
        config.update(
            {"lambd": self.lambd, "alpha": self.alpha, "t0": self.t0, "weight_decay": self.l2}
        )
        return config
