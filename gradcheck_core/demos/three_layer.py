"""A three-layer net (LINEAR-RELU-LINEAR-RELU-LINEAR-SIGMOID) with a handwritten backward pass.

Column-major as in many course assignments: ``X`` is (features, samples).
``backward(..., buggy=True)`` carries the two classic mistakes
``dW2 = dW2 * 2`` and ``db1 = db1 * 4``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Params = dict[str, np.ndarray]


def problem(seed: int = 1) -> tuple[Params, np.ndarray, np.ndarray]:
    """Parameters (dict W1, b1, ..., b3) and a small data set."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((4, 3))
    Y = np.array([[1.0, 0.0, 1.0]])
    params = {
        "W1": rng.standard_normal((5, 4)),
        "b1": rng.standard_normal((5, 1)),
        "W2": rng.standard_normal((3, 5)),
        "b2": rng.standard_normal((3, 1)),
        "W3": rng.standard_normal((1, 3)),
        "b3": rng.standard_normal((1, 1)),
    }
    return params, X, Y


def _forward(p: Params, X: np.ndarray) -> dict[str, np.ndarray]:
    Z1 = p["W1"] @ X + p["b1"]
    A1 = np.maximum(Z1, 0)
    Z2 = p["W2"] @ A1 + p["b2"]
    A2 = np.maximum(Z2, 0)
    Z3 = p["W3"] @ A2 + p["b3"]
    A3 = 1 / (1 + np.exp(-Z3))
    return {"Z1": Z1, "A1": A1, "Z2": Z2, "A2": A2, "Z3": Z3, "A3": A3}


def cost(X: np.ndarray, Y: np.ndarray) -> Callable[[Params], float]:
    """The cross-entropy cost as a function of the parameters."""

    def J(p: Params) -> float:
        A3 = _forward(p, X)["A3"]
        m = X.shape[1]
        return float(-np.sum(Y * np.log(A3) + (1 - Y) * np.log(1 - A3)) / m)

    return J


def backward(X: np.ndarray, Y: np.ndarray, buggy: bool = False) -> Callable[[Params], dict[str, Any]]:
    """The handwritten gradient: a dict dW1, db1, ... with the cache entries dZ*, dA*."""

    def grads(p: Params) -> dict[str, Any]:
        c = _forward(p, X)
        m = X.shape[1]
        dZ3 = c["A3"] - Y
        dW3 = dZ3 @ c["A2"].T / m
        db3 = np.sum(dZ3, axis=1, keepdims=True) / m
        dA2 = p["W3"].T @ dZ3
        dZ2 = dA2 * (c["Z2"] > 0)
        dW2 = dZ2 @ c["A1"].T / m
        db2 = np.sum(dZ2, axis=1, keepdims=True) / m
        dA1 = p["W2"].T @ dZ2
        dZ1 = dA1 * (c["Z1"] > 0)
        dW1 = dZ1 @ X.T / m
        db1 = np.sum(dZ1, axis=1, keepdims=True) / m
        if buggy:
            dW2 = dW2 * 2
            db1 = db1 * 4
        return {
            "dZ3": dZ3,
            "dW3": dW3,
            "db3": db3,
            "dA2": dA2,
            "dZ2": dZ2,
            "dW2": dW2,
            "db2": db2,
            "dA1": dA1,
            "dZ1": dZ1,
            "dW1": dW1,
            "db1": db1,
        }

    return grads
