"""Cases of the bug suite: ``Case(name, loss, grad, x0, buggy, kind)``.

``loss(x) -> float`` and ``grad(x) -> array`` take one flat float64 vector.
``buggy`` says whether ``grad`` is wrong; ``kind`` names the bug (or the trap,
for correct cases: float32 loss, kink, dropout, tiny gradients).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Case:
    name: str
    loss: Callable[[np.ndarray], float]
    grad: Callable[[np.ndarray], np.ndarray]
    x0: np.ndarray
    buggy: bool
    kind: str


def _linear_regression(seed: int = 0):
    rng = np.random.default_rng(seed)
    m, d = 40, 5
    X = rng.standard_normal((m, d))
    Y = rng.standard_normal((m, d))
    lam = 0.3

    def unpack(x):
        return x[: d * d].reshape(d, d), x[d * d :]

    def loss(x):
        W, b = unpack(x)
        r = X @ W + b - Y
        return float(0.5 * np.sum(r**2) / m + 0.5 * lam * np.sum(W**2))

    def grad_of(bug: str | None):
        def grad(x):
            W, b = unpack(x)
            r = X @ W + b - Y
            dW = X.T @ r / m + lam * W
            db = r.sum(0) / m
            if bug == "scale":
                dW = 2 * dW
            elif bug == "sign":
                db = -db
            elif bug == "transpose":
                dW = dW.T
            elif bug == "missing_term":
                dW = dW - lam * W
            elif bug == "zero_block":
                db = np.zeros_like(db)
            elif bug == "wrong_reduction":
                dW = dW - X.T @ r / m + X.T @ r  # a sum where the loss takes a mean
            elif bug == "one_entry":
                dW = dW.copy()
                dW[2, 3] += 1e-3 * np.max(np.abs(dW))
            return np.concatenate([dW.ravel(), db])

        return grad

    x0 = rng.standard_normal(d * d + d)
    return loss, grad_of, x0


def _mlp(seed: int = 1):
    rng = np.random.default_rng(seed)
    m, d, h, k = 30, 6, 8, 3
    X = rng.standard_normal((m, d))
    T = np.eye(k)[rng.integers(0, k, m)]
    shapes = [(d, h), (h,), (h, k), (k,)]
    sizes = [int(np.prod(s)) for s in shapes]

    def unpack(x):
        out, o = [], 0
        for s, n in zip(shapes, sizes):
            out.append(x[o : o + n].reshape(s))
            o += n
        return out

    def loss(x):
        W1, b1, W2, b2 = unpack(x)
        H = np.tanh(X @ W1 + b1)
        Zs = H @ W2 + b2
        Zs = Zs - Zs.max(1, keepdims=True)
        logp = Zs - np.log(np.exp(Zs).sum(1, keepdims=True))
        return float(-np.sum(T * logp) / m)

    def grad_of(bug: str | None):
        def grad(x):
            W1, b1, W2, b2 = unpack(x)
            H = np.tanh(X @ W1 + b1)
            Zs = H @ W2 + b2
            P = np.exp(Zs - Zs.max(1, keepdims=True))
            P /= P.sum(1, keepdims=True)
            dZ = (P - T) / m
            dW2 = H.T @ dZ
            db2 = dZ.sum(0)
            dH = dZ @ W2.T * (1 - H**2)
            dW1 = X.T @ dH
            db1 = dH.sum(0)
            if bug == "scale":
                dW1 = 4 * dW1
            elif bug == "sign":
                dW2 = -dW2
            elif bug == "zero_block":
                db1 = 0 * db1
            elif bug == "wrong_reduction":
                db2 = db2 * m
            elif bug == "one_entry":
                dW1 = dW1.copy()
                dW1[1, 5] *= 1.01
            return np.concatenate([dW1.ravel(), db1, dW2.ravel(), db2])

        return grad

    return loss, grad_of, rng.standard_normal(sum(sizes)) * 0.5


def _softmax_float32(seed: int = 2):
    """Softmax regression whose loss is computed in float32 (the Keras trap)."""
    rng = np.random.default_rng(seed)
    m, d, k = 60, 4, 3
    X = rng.standard_normal((m, d))
    T = np.eye(k)[rng.integers(0, k, m)]

    def loss(x):
        W = x.reshape(d, k).astype(np.float32)
        Zs = X.astype(np.float32) @ W
        Zs = Zs - Zs.max(1, keepdims=True)
        P = np.exp(Zs) / np.exp(Zs).sum(1, keepdims=True)
        return float(-np.mean(np.sum(T.astype(np.float32) * np.log(P), axis=1)))

    def grad_of(bug: str | None):
        def grad(x):
            W = x.reshape(d, k)
            Zs = X @ W
            P = np.exp(Zs - Zs.max(1, keepdims=True))
            P /= P.sum(1, keepdims=True)
            g = X.T @ (P - T) / m
            if bug == "scale":
                g = 2 * g
            elif bug == "wrong_reduction":
                g = g * m  # the seed's missing 1/m
            return g.ravel()

        return grad

    return loss, grad_of, rng.standard_normal(d * k) * 0.3


def _relu_kinks(seed: int = 3):
    """A ReLU layer where some units sit exactly at their kink."""
    rng = np.random.default_rng(seed)
    m, d, h = 10, 4, 6
    X = rng.standard_normal((m, d))
    W0 = rng.standard_normal((d, h))
    W0[:, :2] = 0.0  # units 0 and 1: pre-activation exactly 0 for every sample
    y = rng.standard_normal(m)
    v = rng.standard_normal(h)

    def loss(x):
        W = x.reshape(d, h)
        return float(0.5 * np.sum((np.maximum(X @ W, 0) @ v - y) ** 2))

    def grad_of(bug: str | None):
        def grad(x):
            W = x.reshape(d, h)
            Zs = X @ W
            r = np.maximum(Zs, 0) @ v - y
            g = X.T @ (np.outer(r, v) * (Zs > 0))
            if bug == "scale":
                g = 3 * g
            return g.ravel()

        return grad

    return loss, grad_of, W0.ravel().copy()


def _dropout(seed: int = 4):
    """A loss that draws a dropout mask from numpy's global generator."""
    rng = np.random.default_rng(seed)
    m, d = 20, 8
    X = rng.standard_normal((m, d))
    y = rng.standard_normal(m)

    def loss(x):
        mask = (np.random.random(d) > 0.5) / 0.5
        return float(0.5 * np.mean((np.tanh(X @ (x * mask)) - y) ** 2))

    def grad_of(bug: str | None):
        def grad(x):
            mask = (np.random.random(d) > 0.5) / 0.5
            h = np.tanh(X @ (x * mask))
            g = X.T @ ((h - y) * (1 - h**2)) / m * mask
            if bug == "sign":
                g = -g
            return g

        return grad

    return loss, grad_of, rng.standard_normal(d)


def _tiny(seed: int = 5):
    """Gradients of size 1e-11 on a loss of size 2.86."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((10, 10))

    def loss(x):
        return float(2.86 + 1e-11 * np.sum(np.sin(A @ x)))

    def grad_of(bug: str | None):
        def grad(x):
            g = 1e-11 * A.T @ np.cos(A @ x)
            return 1.15 * g if bug == "scale" else g

        return grad

    return loss, grad_of, rng.standard_normal(10)


def _large_sparse(seed: int = 6, n: int = 3000):
    rng = np.random.default_rng(seed)
    c = rng.uniform(0.5, 1.5, n)

    def loss(x):
        return float(np.sum(c * np.sin(x)) + 0.5 * np.sum(x**2) ** 1.5 / n)

    def grad_of(bug: str | None):
        def grad(x):
            g = c * np.cos(x) + 1.5 * np.sum(x**2) ** 0.5 * x / n
            if bug == "one_entry":
                g = g.copy()
                g[n // 3] += 1e-3 * np.max(np.abs(g))
            return g

        return grad

    return loss, grad_of, rng.standard_normal(n)


FAMILIES = {
    "linreg": (
        _linear_regression,
        ["scale", "sign", "transpose", "missing_term", "zero_block", "wrong_reduction", "one_entry"],
    ),
    "mlp": (_mlp, ["scale", "sign", "zero_block", "wrong_reduction", "one_entry"]),
    "softmax_float32": (_softmax_float32, ["scale", "wrong_reduction"]),
    "relu_kinks": (_relu_kinks, ["scale"]),
    "dropout": (_dropout, ["sign"]),
    "tiny_gradients": (_tiny, ["scale"]),
    "large_sparse": (_large_sparse, ["one_entry"]),
}


def all_cases() -> list[Case]:
    """Every family's correct gradient and each of its bugs."""
    cases = []
    for family, (build, bugs) in FAMILIES.items():
        loss, grad_of, x0 = build()
        trap = {
            "softmax_float32": "float32",
            "relu_kinks": "kink",
            "dropout": "dropout",
            "tiny_gradients": "tiny",
        }.get(family, "smooth")
        cases.append(Case(f"{family}/correct", loss, grad_of(None), x0, False, trap))
        for bug in bugs:
            cases.append(Case(f"{family}/{bug}", loss, grad_of(bug), x0, True, bug))
    return cases
