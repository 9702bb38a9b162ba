"""The MLP in numpy: its shape, its initial weights and its forward pass.

Weights are a list of ``(kernel, bias)`` pairs, one per layer, in Keras layout: ``kernel`` has
shape (fan_in, fan_out). A torch ``Linear.weight`` is the transpose, ``kernel.T``; a reshape
instead of a transpose is wrong and raises no error, so the adapters convert with
:func:`to_torch_layout` / :func:`from_torch_layout` only.

The last layer outputs a logit; probabilities are ``sigmoid(logit)`` and the loss is binary
cross-entropy computed from the logit, which stays finite however saturated the logit is.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

Weights = list[tuple[np.ndarray, np.ndarray]]

N_INPUTS = 2
DEFAULT_HIDDEN: tuple[int, ...] = (3, 4)


def layer_sizes(hidden: Sequence[int]) -> list[int]:
    """[2, *hidden, 1]: the width of every layer, input and output included."""
    return [N_INPUTS, *hidden, 1]


def glorot_uniform(hidden: Sequence[int], init_seed: int) -> Weights:
    """Glorot-uniform kernels and zero biases, float32, drawn from ``init_seed``.

    The limit of each kernel is sqrt(6 / (fan_in + fan_out)), the default of Keras ``Dense``.
    """
    rng = np.random.default_rng(init_seed)
    sizes = layer_sizes(hidden)
    weights: Weights = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        kernel = rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)
        weights.append((kernel, np.zeros(fan_out, dtype=np.float32)))
    return weights


def forward_logits(weights: Weights, x: np.ndarray) -> np.ndarray:
    """Logits of shape (n,) for inputs ``x`` of shape (n, 2); ReLU between layers."""
    h = np.asarray(x, dtype=weights[0][0].dtype)
    for i, (kernel, bias) in enumerate(weights):
        h = h @ kernel + bias
        if i < len(weights) - 1:
            h = np.maximum(h, 0)
    return h[:, 0]


def hidden_activations(weights: Weights, x: np.ndarray) -> np.ndarray:
    """Pre-activations of the first hidden layer, shape (n, hidden[0])."""
    kernel, bias = weights[0]
    return np.asarray(x, dtype=kernel.dtype) @ kernel + bias


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow warnings for large |z|."""
    return np.exp(-np.logaddexp(0.0, -z))


def bce_with_logits(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-sample binary cross-entropy from logits: max(z, 0) - z*y + log(1 + exp(-|z|))."""
    z = np.asarray(logits)
    y = np.asarray(targets, dtype=z.dtype)
    return np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))


def accuracy(logits: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of samples whose predicted class (logit > 0) equals the target."""
    return float(np.mean((np.asarray(logits) > 0) == (np.asarray(targets) > 0.5)))


def evaluate(weights: Weights, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean loss, accuracy) of ``weights`` on ``x``, ``y``."""
    logits = forward_logits(weights, x)
    return float(np.mean(bce_with_logits(logits, y))), accuracy(logits, y)


def predict_classes(weights: Weights, x: np.ndarray) -> np.ndarray:
    """Class labels 0/1 as a 1-D int array, the ``predict`` that mlxtend expects."""
    return (forward_logits(weights, np.asarray(x, dtype=np.float64)) > 0).astype(int)


def to_torch_layout(weights: Weights) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight [out, in], bias) pairs for torch ``Linear`` layers: each kernel transposed."""
    return [(np.ascontiguousarray(kernel.T), bias) for kernel, bias in weights]


def from_torch_layout(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> Weights:
    """Inverse of :func:`to_torch_layout`."""
    return [(np.ascontiguousarray(weight.T), bias) for weight, bias in pairs]


def flatten(weights: Weights) -> np.ndarray:
    """All parameters as one float vector: kernel then bias, layer by layer."""
    return np.concatenate([np.concatenate([k.ravel(), b.ravel()]) for k, b in weights])


def unflatten(vector: np.ndarray, hidden: Sequence[int]) -> Weights:
    """Inverse of :func:`flatten` for a network with the given hidden sizes."""
    sizes = layer_sizes(hidden)
    expected = sum(i * o + o for i, o in itertools.pairwise(sizes))
    if len(vector) != expected:
        raise ValueError(
            f"a network with hidden={tuple(hidden)} has {expected} parameters; "
            f"received {len(vector)}"
        )
    weights: Weights = []
    at = 0
    for fan_in, fan_out in itertools.pairwise(sizes):
        kernel = np.asarray(vector[at : at + fan_in * fan_out]).reshape(fan_in, fan_out)
        at += fan_in * fan_out
        bias = np.asarray(vector[at : at + fan_out])
        at += fan_out
        weights.append((kernel, bias))
    return weights
