"""Decision regions of a stored network, drawn by mlxtend without any framework.

mlxtend's ``plot_decision_regions`` has three sharp edges with network models (field case F8):

- ``y`` must be a 1-D integer array; float labels or shape (n, 1) raise.
- ``clf.predict`` must return 1-D class labels, not probabilities or logits.
- the evaluation grid is cast to ``X.dtype`` before ``predict`` sees it, so with integer ``X``
  (the four corners of the textbook XOR) the grid collapses to a few integers and a blocky,
  wrong map is drawn without any error.

:func:`plot_regions` removes all three: it casts ``X`` to float64, ``y`` to 1-D int, and wraps
``predict`` so that mlxtend always gets 1-D integer labels back. :class:`WeightsClassifier` is the
``predict`` of stored weights, through the numpy forward pass of :mod:`xorbench.model`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from matplotlib.axes import Axes
from numpy.typing import ArrayLike

from xorbench.model import Weights, predict_classes

# How far the drawn map reaches beyond the data on each side, in data units.
DEFAULT_PAD = 0.25


class Classifier(Protocol):
    """Anything with the ``predict`` that mlxtend calls."""

    def predict(self, X: np.ndarray) -> ArrayLike:
        """Class labels for the rows of ``X``."""
        ...


Predict = Callable[[np.ndarray], ArrayLike] | Classifier


class WeightsClassifier:
    """A network's stored weights, seen as a classifier with ``predict(X) -> labels``.

    Parameters
    ----------
    weights
        (kernel, bias) pairs in Keras layout, as returned by :func:`xorbench.results.run_weights`.
    """

    def __init__(self, weights: Weights) -> None:
        self.weights = weights

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Class labels 0/1 of the rows of ``X`` (shape (n, 2)), as a 1-D int array."""
        return predict_classes(self.weights, np.asarray(X, dtype=np.float64))


class LabelPredictor:
    """Wrap a ``predict`` so that it receives float64 and returns a 1-D int array.

    Parameters
    ----------
    predict
        A callable ``predict(X)`` or an object with a ``predict`` method. It may return labels of
        shape (n,) or (n, 1), as ints, bools or integral floats.
    classes
        The labels ``predict`` may return; any when None. mlxtend colours only the classes
        present in ``y`` and fails obscurely on any other label.
    """

    def __init__(self, predict: Predict, classes: ArrayLike | None = None) -> None:
        self._predict: Callable[[np.ndarray], ArrayLike] = (
            predict if callable(predict) else predict.predict
        )
        self._classes = None if classes is None else np.unique(np.asarray(classes))

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Class labels of the rows of ``X`` as a 1-D int array of length len(X)."""
        X = np.asarray(X, dtype=np.float64)
        labels = np.asarray(self._predict(X))
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.shape != (len(X),):
            raise ValueError(
                f"predict must return one label per row, shape ({len(X)},) or ({len(X)}, 1); "
                f"received shape {labels.shape}"
            )
        labels = as_labels(labels, name="predict's output")
        if self._classes is not None:
            unknown = np.setdiff1d(labels, self._classes)
            if unknown.size:
                raise ValueError(
                    f"predict returned class {unknown[0].item()}, which is not among the "
                    f"classes of y ({', '.join(map(str, self._classes.tolist()))})"
                )
        return labels


def as_features(X: ArrayLike) -> np.ndarray:
    """``X`` as a float64 array of shape (n, 2), whatever its dtype (int X is the F8 trap)."""
    features = np.asarray(X, dtype=np.float64)
    if features.ndim != 2 or features.shape[1] != 2:
        raise ValueError(f"X must have shape (n, 2); received shape {features.shape}")
    return features


def as_labels(y: ArrayLike, *, name: str = "y") -> np.ndarray:
    """``y`` as a 1-D int array; accepts shape (n,) or (n, 1) and integral floats or bools."""
    labels = np.asarray(y)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"{name} must have shape (n,) or (n, 1); received shape {labels.shape}")
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        raise ValueError(f"{name} must hold class labels such as 0 and 1; received NaN or inf")
    as_int = labels.astype(np.int64)
    # Probabilities or logits would silently truncate to 0 here; refuse them instead.
    if not np.array_equal(as_int, labels):
        raise ValueError(
            f"{name} must hold class labels such as 0 and 1; received non-integral values "
            f"such as {labels[as_int != labels][0].item()!r} (threshold probabilities first)"
        )
    return as_int


def _make_current(ax: Axes) -> None:
    """Make ``ax``'s figure pyplot's current one: mlxtend sizes its grid from ``plt.gcf()``."""
    import matplotlib.pyplot as plt

    if getattr(ax.figure.canvas, "manager", None) is None:
        raise ValueError(
            "ax must belong to a figure made by pyplot (plt.subplots or plt.figure), because "
            "mlxtend takes its grid resolution from plt.gcf(); received an unmanaged figure"
        )
    plt.sca(ax)


def plot_regions(
    X: ArrayLike,
    y: ArrayLike,
    predict: Predict,
    *,
    ax: Axes | None = None,
    pad: float = DEFAULT_PAD,
    legend: bool = True,
    **kwargs: Any,
) -> Axes:
    """Draw the decision regions of ``predict`` over the points ``X`` with labels ``y``.

    Parameters
    ----------
    X
        Points, shape (n, 2); any numeric dtype, integer included.
    y
        Labels, shape (n,) or (n, 1); ints, bools or integral floats.
    predict
        A callable ``predict(X)`` or an object with a ``predict`` method, such as
        :class:`WeightsClassifier`. It receives float64 arrays of shape (m, 2).
    ax
        Axes of a pyplot figure to draw on; the current axes when None. mlxtend evaluates
        ``predict`` on a grid with as many points per axis as the figure has pixels.
    pad
        How far the map reaches beyond the points on each side, in data units (> 0).
    legend
        Whether to draw mlxtend's class legend.
    **kwargs
        Passed on to ``mlxtend.plotting.plot_decision_regions``.

    Returns
    -------
    Axes
        The axes drawn on.
    """
    import matplotlib.pyplot as plt
    from mlxtend.plotting import plot_decision_regions

    if not pad > 0:
        raise ValueError(f"pad must be > 0; received pad={pad!r}")
    features = as_features(X)
    labels = as_labels(y)
    if len(labels) != len(features):
        raise ValueError(
            f"X and y must have as many rows; received {len(features)} points and "
            f"{len(labels)} labels"
        )
    if ax is None:
        ax = plt.gca()
    _make_current(ax)
    return plot_decision_regions(
        features,
        labels,
        clf=LabelPredictor(predict, classes=labels),
        ax=ax,
        zoom_factor=1.0 / pad,  # mlxtend pads each side by 1 / zoom_factor
        legend=1 if legend else 0,
        **kwargs,
    )
