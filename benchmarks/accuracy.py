"""Accuracy of the numerical gradient against exact gradients, per method.

For each smooth test function and each scheme, the relative error
``||n - g|| / ||g||`` of the numerical gradient ``n`` against the exact ``g``;
the table shows the median over the suite.  In the same run: the scheme of
``scipy.optimize.approx_fprime`` (forward differences, step sqrt(eps)), the
defaults of ``torch.autograd.gradcheck`` (central differences, fixed step
1e-6) and the classic hand-written loop (central, fixed step 1e-7).

Targets (float64): central <= 1e-9, richardson <= 1e-11, complex <= 1e-14.
Run: ``python benchmarks/accuracy.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import gradcheck_core as gc

Fn = Callable[[np.ndarray], object]


def rosenbrock() -> tuple[Fn, Fn, np.ndarray]:
    def f(x):
        return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

    def g(x):
        out = np.zeros_like(x)
        out[:-1] = -400 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
        out[1:] += 200 * (x[1:] - x[:-1] ** 2)
        return out

    return f, g, np.random.default_rng(0).uniform(-1.2, 1.2, 30)


def logsumexp() -> tuple[Fn, Fn, np.ndarray]:
    A = np.random.default_rng(1).standard_normal((40, 20))

    def f(x):
        return np.log(np.sum(np.exp(A @ x)))

    def g(x):
        z = A @ x
        p = np.exp(z - z.max())
        return A.T @ (p / p.sum())

    return f, g, np.random.default_rng(2).standard_normal(20) * 0.5


def sines() -> tuple[Fn, Fn, np.ndarray]:
    def f(x):
        return np.prod(np.sin(x)) + np.sum(np.cos(x) * np.sin(2 * x))

    def g(x):
        s = np.sin(x)
        prod_others = np.array([np.prod(np.delete(s, i)) for i in range(len(x))])
        return prod_others * np.cos(x) + (-np.sin(x) * np.sin(2 * x) + 2 * np.cos(x) * np.cos(2 * x))

    return f, g, np.random.default_rng(3).uniform(0.5, 2.5, 12)


def logistic() -> tuple[Fn, Fn, np.ndarray]:
    rng = np.random.default_rng(4)
    X = rng.standard_normal((100, 15))
    y = (rng.random(100) > 0.5).astype(float)

    def f(x):
        z = X @ x
        return np.mean(np.log(1 + np.exp(z)) - y * z) + 0.01 * np.sum(x**2)

    def g(x):
        z = X @ x
        return X.T @ (1 / (1 + np.exp(-z)) - y) / len(y) + 0.02 * x

    return f, g, rng.standard_normal(15)


def tanh_net() -> tuple[Fn, Fn, np.ndarray]:
    rng = np.random.default_rng(5)
    X = rng.standard_normal((50, 6))
    Y = rng.standard_normal((50, 2))

    def f(x):
        W1, W2 = x[:24].reshape(6, 4), x[24:].reshape(4, 2)
        return 0.5 * np.sum((np.tanh(X @ W1) @ W2 - Y) ** 2) / 50

    def g(x):
        W1, W2 = x[:24].reshape(6, 4), x[24:].reshape(4, 2)
        H = np.tanh(X @ W1)
        R = (H @ W2 - Y) / 50
        return np.concatenate([(X.T @ (R @ W2.T * (1 - H**2))).ravel(), (H.T @ R).ravel()])

    return f, g, rng.standard_normal(32) * 0.5


def quartic_exp() -> tuple[Fn, Fn, np.ndarray]:
    def f(x):
        return np.sum(x**4) / 4 + np.exp(np.sum(x) / len(x))

    def g(x):
        return x**3 + np.exp(np.sum(x) / len(x)) / len(x)

    return f, g, np.random.default_rng(6).uniform(-2, 2, 25)


SUITE = {
    "rosenbrock": rosenbrock,
    "log-sum-exp": logsumexp,
    "sines*cosines": sines,
    "logistic": logistic,
    "tanh net": tanh_net,
    "quartic+exp": quartic_exp,
}


def rel(n: np.ndarray, g: np.ndarray) -> float:
    return float(np.linalg.norm(n - g) / np.linalg.norm(g))


def ours(method: str) -> Callable[[Fn, Fn, np.ndarray], float]:
    def run(f: Fn, g: Fn, x: np.ndarray) -> float:
        report = gc.check(f, x, g(x), method=method, mode="full", progress=False)
        block = report.blocks[0]
        return rel(block.numeric, g(x)[block.indices])

    return run


def fixed_central(step: float) -> Callable[[Fn, Fn, np.ndarray], float]:
    def run(f: Fn, g: Fn, x: np.ndarray) -> float:
        n = np.empty_like(x)
        for i in range(len(x)):
            e = np.zeros_like(x)
            e[i] = step
            n[i] = (float(f(x + e)) - float(f(x - e))) / (2 * step)
        return rel(n, g(x))

    return run


def scipy_approx_fprime(f: Fn, g: Fn, x: np.ndarray) -> float:
    from scipy.optimize import approx_fprime

    return rel(approx_fprime(x, lambda v: float(f(v))), g(x))


def main() -> None:
    schemes = {
        "gradcheck-core central": (ours("central"), 1e-9),
        "gradcheck-core forward": (ours("forward"), None),
        "gradcheck-core richardson": (ours("richardson"), 1e-11),
        "gradcheck-core complex": (ours("complex"), 1e-14),
        "scipy approx_fprime (forward, sqrt(eps))": (scipy_approx_fprime, None),
        "torch gradcheck default (central, 1e-6)": (fixed_central(1e-6), None),
        "hand-written loop (central, 1e-7)": (fixed_central(1e-7), None),
    }
    names = list(SUITE)
    print("relative error ||n - g|| / ||g|| of the numerical gradient (float64)\n")
    print(f"{'scheme':44s} {'median':>9s} {'target':>8s}  " + " ".join(f"{n:>13s}" for n in names))
    for label, (run, target) in schemes.items():
        errs = []
        for name in names:
            f, g, x = SUITE[name]()
            errs.append(run(f, g, x))
        med = float(np.median(errs))
        mark = "" if target is None else ("ok" if med <= target else "MISSED")
        tgt = "-" if target is None else f"{target:.0e}"
        print(f"{label:44s} {med:9.1e} {tgt:>8s}  " + " ".join(f"{e:13.1e}" for e in errs) + f"  {mark}")


if __name__ == "__main__":
    main()
