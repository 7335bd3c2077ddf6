"""A net whose first layer has vanishing gradients (entries around 1e-11).

The situation of a deep net on a plateau: the cost is about 2.3 (ten classes,
nothing learnt yet), but the last layer's weights are so small (1e-9) that the
gradient reaching the first layer is tiny.  Differences of 1e-11 look
negligible in absolute terms, yet a backward pass that is 15% off is as wrong
at this scale as at any other.

Only the first layer ``W1`` is checked (the rest of the net is held fixed in
the closure), as one checks a single layer while debugging.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Params = dict[str, np.ndarray]


def problem(seed: int = 3) -> tuple[Params, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """``({"W1"}, fixed, X, Y)``: the checked weights, the fixed rest of the net, data."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((40, 8))
    Y = np.eye(10)[rng.integers(0, 10, size=40)]
    params = {"W1": rng.standard_normal((8, 16)) * 0.5}
    fixed = {"W2": rng.standard_normal((16, 10)) * 1e-9, "b2": np.zeros(10)}
    return params, fixed, X, Y


def _forward(W1: np.ndarray, fixed: dict[str, np.ndarray], X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    H = np.tanh(X @ W1)
    Z = H @ fixed["W2"] + fixed["b2"]
    Z = Z - Z.max(axis=1, keepdims=True)
    P = np.exp(Z)
    P /= P.sum(axis=1, keepdims=True)
    return H, P


def cost(fixed: dict[str, np.ndarray], X: np.ndarray, Y: np.ndarray) -> Callable[[Params], float]:
    """Softmax cross-entropy, averaged over the samples, as a function of ``{"W1"}``."""

    def J(p: Params) -> float:
        _, P = _forward(p["W1"], fixed, X)
        return float(-np.sum(Y * np.log(P)) / X.shape[0])

    return J


def backward(
    fixed: dict[str, np.ndarray], X: np.ndarray, Y: np.ndarray, factor: float = 1.0
) -> Callable[[Params], dict[str, np.ndarray]]:
    """The handwritten ``{"dW1"}``; ``factor=1.15`` makes it 15% too large."""

    def grad(p: Params) -> dict[str, np.ndarray]:
        H, P = _forward(p["W1"], fixed, X)
        dZ = (P - Y) / X.shape[0]
        dH = dZ @ fixed["W2"].T
        dW1 = X.T @ (dH * (1 - H**2))
        return {"dW1": factor * dW1}

    return grad
