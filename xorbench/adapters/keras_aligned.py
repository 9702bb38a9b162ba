"""Keras 3 optimizers that implement torch's exact RMSprop and Adam formulas.

Keras's own RMSprop and Adam differ from torch's in formula, not only in default values
(FRAMEWORK_FACTS.md), so equal hyperparameters still give different steps:

- RMSprop: torch divides by ``sqrt(v) + eps``, Keras by ``sqrt(v + eps)``;
- Adam: torch adds ``eps`` to the bias-corrected ``sqrt(v) / sqrt(1 - beta_2**t)``, Keras to the
  uncorrected ``sqrt(v)`` (and folds both corrections into the step size).

:class:`TorchRMSprop` and :class:`TorchAdam` keep Keras's constructor arguments (``rho`` is
torch's ``alpha``) and replace only ``update_step`` with torch's single-tensor update, so that
``xorbench run --optimizer-impl aligned`` and ``xorbench parity`` can show that, with the same
formula, the two frameworks train the same network. Bias corrections are computed in float64
from the step count, as torch computes them in Python. ASGD needs no aligned twin: Keras has
none, and xorbench's port (:mod:`xorbench.adapters.keras_asgd`) already follows torch.

Importing this module imports Keras; only the Keras adapters import it, inside a worker.
"""

# Known shortcoming: the momentum, centered and amsgrad branches follow torch's code but no test
# compares them with torch, because xorbench's settings keep them off. The note goes when
# tests/keras/test_keras_aligned.py steps them against torch as it steps the defaults.

from __future__ import annotations

from typing import Any

import keras
from keras import ops


def _const(value: float, dtype: Any) -> Any:
    """A Python float as a tensor of ``dtype``, exactly.

    ``ops.cast(0.99, "float64")`` would first make a float32 tensor and round 0.99 to
    0.9900000095..., a float32 error in every float64 step.
    """
    return ops.convert_to_tensor(value, dtype=dtype)


def _scaled_square(gradient: Any, weight: Any) -> Any:
    """``weight * g * g`` in torch's order, ``(weight * g) * g``, as its ``addcmul`` rounds.

    The update of the parameter likewise follows torch's ``addcdiv``: ``(lr * g) / denominator``.
    In float64 the order changes nothing measurable; in float32 it is one rounding less apart.
    """
    return ops.multiply(ops.multiply(gradient, weight), gradient)


@keras.saving.register_keras_serializable(package="xorbench")
class TorchRMSprop(keras.optimizers.RMSprop):
    """RMSprop with torch's formula: ``p -= lr * g / (sqrt(v) + eps)``.

    ``v = rho * v + (1 - rho) * g**2`` starts at zero, as torch's ``square_avg``. With
    ``centered`` the denominator is ``sqrt(v - mean_g**2) + eps``; with ``momentum`` the step is
    accumulated in a buffer ``b = momentum * b + g / denominator`` and ``p -= lr * b``, as torch.
    Arguments are those of :class:`keras.optimizers.RMSprop`.
    """

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """torch's ``RMSprop`` update of one variable."""
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        index = self._get_variable_index(variable)
        # 1 - rho in float64, then rounded, as torch computes it in Python: in float32,
        # 1 - float32(0.99) is 1e-6 off 0.01 in relative terms.
        rho, weight = _const(self.rho, dtype), _const(1.0 - self.rho, dtype)

        square_avg = self._velocities[index]
        self.assign(
            square_avg,
            ops.add(ops.multiply(square_avg, rho), _scaled_square(gradient, weight)),
        )
        if self.centered:
            grad_avg = self._average_gradients[index]
            self.assign(
                grad_avg, ops.add(ops.multiply(grad_avg, rho), ops.multiply(gradient, weight))
            )
            spread = ops.subtract(square_avg, ops.square(grad_avg))
        else:
            spread = square_avg
        # Epsilon outside the root: the one formula difference from Keras's RMSprop.
        denominator = ops.add(ops.sqrt(spread), _const(self.epsilon, dtype))

        if self.momentum > 0:
            buffer = self._momentums[index]
            momentum = _const(self.momentum, dtype)
            self.assign(
                buffer, ops.add(ops.multiply(buffer, momentum), ops.divide(gradient, denominator))
            )
            self.assign_sub(variable, ops.multiply(buffer, lr))
        else:
            self.assign_sub(variable, ops.divide(ops.multiply(gradient, lr), denominator))


@keras.saving.register_keras_serializable(package="xorbench")
class TorchAdam(keras.optimizers.Adam):
    """Adam with torch's formula and bias correction.

    At step ``t`` (from 1): ``m = m + (1 - beta_1) * (g - m)``,
    ``v = beta_2 * v + (1 - beta_2) * g**2``,
    ``p -= lr / (1 - beta_1**t) * m / (sqrt(v) / sqrt(1 - beta_2**t) + eps)``; with ``amsgrad``
    the running maximum of ``v`` replaces ``v`` in the denominator. Arguments are those of
    :class:`keras.optimizers.Adam`.
    """

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """torch's ``Adam`` update of one variable."""
        dtype = variable.dtype
        gradient = ops.cast(gradient, dtype)
        index = self._get_variable_index(variable)

        # torch computes the corrections in Python (float64) from the step count.
        step = ops.cast(self.iterations + 1, "float64")
        correction_1 = 1.0 - ops.power(_const(self.beta_1, "float64"), step)
        correction_2 = 1.0 - ops.power(_const(self.beta_2, "float64"), step)
        step_size = ops.cast(learning_rate, "float64") / correction_1
        root_correction_2 = ops.sqrt(correction_2)

        m = self._momentums[index]
        v = self._velocities[index]
        # 1 - beta in float64, then rounded, as torch (1 - float32(0.999) is 1e-5 off 0.001).
        weight_1, weight_2 = _const(1.0 - self.beta_1, dtype), _const(1.0 - self.beta_2, dtype)
        beta_2 = _const(self.beta_2, dtype)
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), weight_1))
        self.assign(
            v, ops.add(ops.multiply(v, beta_2), _scaled_square(gradient, weight_2))
        )
        if self.amsgrad:
            v_max = self._velocity_hats[index]
            self.assign(v_max, ops.maximum(v_max, v))
            v = v_max
        # Epsilon after the bias correction of sqrt(v), where torch adds it.
        denominator = ops.add(
            ops.divide(ops.sqrt(v), ops.cast(root_correction_2, dtype)),
            _const(self.epsilon, dtype),
        )
        self.assign_sub(
            variable, ops.divide(ops.multiply(m, ops.cast(step_size, dtype)), denominator)
        )


ALIGNED: dict[str, Any] = {"rmsprop": TorchRMSprop, "adam": TorchAdam}
