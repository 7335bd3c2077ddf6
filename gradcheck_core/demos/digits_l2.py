"""A two-layer sigmoid net on scikit-learn's digits with L2 regularisation.

Row-major, bias rows folded into the weight matrices as in many course
exercises: ``theta1`` is (65, hidden), ``theta2`` is (hidden + 1, 10); the
regularisation skips the bias rows.  ``backward(..., forget_l2_layer2=True)``
leaves the regularisation term out of the second layer's gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Params = dict[str, np.ndarray]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def problem(
    samples: int | None = None, hidden: int = 100, seed: int = 0
) -> tuple[Params, np.ndarray, np.ndarray]:
    """Parameters ``theta1``, ``theta2``, inputs (m, 64) scaled to [0, 1], one-hot targets (m, 10)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    X = data.data / 16.0
    y = data.target
    if samples is not None:
        X, y = X[:samples], y[:samples]
    Y = np.eye(10)[y]
    rng = np.random.default_rng(seed)
    params = {
        "theta1": rng.standard_normal((65, hidden)) * np.sqrt(1 / 65),
        "theta2": rng.standard_normal((hidden + 1, 10)) * np.sqrt(1 / (hidden + 1)),
    }
    return params, X, Y


def _forward(p: Params, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = X.shape[0]
    a1 = np.column_stack((np.ones(m), X))
    a2 = np.column_stack((np.ones(m), _sigmoid(a1 @ p["theta1"])))
    a3 = _sigmoid(a2 @ p["theta2"])
    return a1, a2, a3


def cost(X: np.ndarray, Y: np.ndarray, lam: float = 0.5) -> Callable[[Params], float]:
    """Cross-entropy plus ``lam / (2 m)`` times the squared non-bias weights."""

    def J(p: Params) -> float:
        m = X.shape[0]
        a3 = _forward(p, X)[2]
        data = -np.sum(Y * np.log(a3) + (1 - Y) * np.log(1 - a3)) / m
        reg = lam / (2 * m) * (np.sum(p["theta1"][1:] ** 2) + np.sum(p["theta2"][1:] ** 2))
        return float(data + reg)

    return J


def backward(
    X: np.ndarray, Y: np.ndarray, lam: float = 0.5, forget_l2_layer2: bool = False
) -> Callable[[Params], dict[str, np.ndarray]]:
    """The handwritten gradient ``{"dtheta1": ..., "dtheta2": ...}``."""

    def grads(p: Params) -> dict[str, np.ndarray]:
        m = X.shape[0]
        a1, a2, a3 = _forward(p, X)
        delta3 = a3 - Y
        delta2 = (delta3 @ p["theta2"].T) * a2 * (1 - a2)
        D1 = a1.T @ delta2[:, 1:] / m
        D1[1:] += lam / m * p["theta1"][1:]
        D2 = a2.T @ delta3 / m
        if not forget_l2_layer2:
            D2[1:] += lam / m * p["theta2"][1:]
        return {"dtheta1": D1, "dtheta2": D2}

    return grads
