"""The digits net: 64-100-10 sigmoid layers, cross-entropy, L2 regularisation.

Row-major as in the classic course exercise: ``X`` is (samples, features), a
bias column of ones is prepended at each layer, so the weights are
``theta1`` (65, 100) and ``theta2`` (101, 10); the bias rows are not
regularised.  :func:`backward` returns the gradient the way that exercise
does, as one flat vector (``theta1`` then ``theta2``), which is one of the
forms :func:`gradcheck_core.check` accepts.  With ``buggy=True`` the
second-layer gradient leaves out the regularisation term
``lam / m * theta2``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Params = dict[str, np.ndarray]

LAMBDA = 0.5


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def problem(seed: int = 0, n_samples: int | None = None) -> tuple[Params, np.ndarray, np.ndarray]:
    """Parameters ``{"theta1", "theta2"}``, inputs ``X`` (m, 64) and one-hot targets ``Y`` (m, 10).

    Parameters
    ----------
    seed : int
        Seed of the weight initialisation (uniform in +-0.12).
    n_samples : int, optional
        Use only the first ``n_samples`` images (default: all 1,797).

    Returns
    -------
    params, X, Y
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    X = data.data[:n_samples] / 16.0
    Y = np.eye(10)[data.target[:n_samples]]
    rng = np.random.default_rng(seed)
    params = {
        "theta1": rng.uniform(-0.12, 0.12, size=(65, 100)),
        "theta2": rng.uniform(-0.12, 0.12, size=(101, 10)),
    }
    return params, X, Y


def _forward(p: Params, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = X.shape[0]
    a1 = np.column_stack((np.ones(m), X))
    a2 = np.column_stack((np.ones(m), _sigmoid(a1 @ p["theta1"])))
    a3 = _sigmoid(a2 @ p["theta2"])
    return a1, a2, a3


def cost(X: np.ndarray, Y: np.ndarray, lam: float = LAMBDA) -> Callable[[Params], float]:
    """The regularised cross-entropy cost as a function of ``{"theta1", "theta2"}``."""
    m = X.shape[0]

    def J(p: Params) -> float:
        _, _, a3 = _forward(p, X)
        data = -np.sum(Y * np.log(a3) + (1 - Y) * np.log1p(-a3)) / m
        reg = lam / (2 * m) * (np.sum(p["theta1"][1:] ** 2) + np.sum(p["theta2"][1:] ** 2))
        return float(data + reg)

    return J


def backward(X: np.ndarray, Y: np.ndarray, lam: float = LAMBDA, buggy: bool = False) -> Callable[[Params], np.ndarray]:
    """The handwritten gradient as one flat vector (``theta1`` entries, then ``theta2``).

    ``buggy=True`` drops the regularisation term from the ``theta2`` gradient.
    """
    m = X.shape[0]

    def grad(p: Params) -> np.ndarray:
        a1, a2, a3 = _forward(p, X)
        delta3 = a3 - Y
        delta2 = (delta3 @ p["theta2"].T) * a2 * (1 - a2)
        D1 = a1.T @ delta2[:, 1:] / m
        D1[1:] += lam / m * p["theta1"][1:]
        D2 = a2.T @ delta3 / m
        if not buggy:
            D2[1:] += lam / m * p["theta2"][1:]
        return np.concatenate((D1.ravel(), D2.ravel()))

    return grad
