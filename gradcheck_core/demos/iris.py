"""Softmax regression on iris with a handwritten gradient (numpy weights).

Row-major: ``Xb`` is (150, 5) with a bias column, ``W`` is (5, 3), ``Y`` is
one-hot (150, 3).  The cost is whatever cross-entropy function is passed to
:func:`cost`, e.g. a Keras ``CategoricalCrossentropy()``, which computes in
float32 unless told otherwise.  The gradient ``Xb.T (softmax(Xb W) - Y) / m``
is correct for the mean cross-entropy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(W, Xb, Y)``: weights (5, 3), inputs with a bias column (150, 5), one-hot labels (150, 3)."""
    from sklearn.datasets import load_iris

    data = load_iris()
    Xb = np.c_[np.ones(len(data.data)), data.data]
    Y = np.eye(3)[data.target]
    W = np.random.default_rng(seed).standard_normal((5, 3)) * np.sqrt(1.0 / 5)
    return W, Xb, Y


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def cost(loss_fn: Callable[[Any, Any], Any], Xb: np.ndarray, Y: np.ndarray) -> Callable[[np.ndarray], Any]:
    """``J(W) = loss_fn(Y, softmax(Xb @ W))``, returned as ``loss_fn`` returns it."""

    def J(W: np.ndarray) -> Any:
        return loss_fn(Y, softmax(Xb @ W))

    return J


def gradient(Xb: np.ndarray, Y: np.ndarray, factor: float = 1.0) -> Callable[[np.ndarray], np.ndarray]:
    """The handwritten gradient of the mean cross-entropy (times ``factor``)."""

    def grad(W: np.ndarray) -> np.ndarray:
        return factor * Xb.T @ (softmax(Xb @ W) - Y) / Xb.shape[0]

    return grad
