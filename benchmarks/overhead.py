"""Overhead of a full central sweep: evaluations and time against the bare loss.

A full sweep of ``n`` coordinates needs ``2n`` loss evaluations plus a few
(the value at the point, two repeats for the nondeterminism test, the noise
probe).  Its time should be within 1.3x of (evaluations x the time of one loss
evaluation), both measured in the same run.
Run: ``python benchmarks/overhead.py``.
"""

from __future__ import annotations

import time

import numpy as np

import gradcheck_core as gc


def make(n_hidden: int, samples: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((samples, 20))
    Y = rng.standard_normal((samples, 5))
    params = {"W1": rng.standard_normal((20, n_hidden)) * 0.3, "W2": rng.standard_normal((n_hidden, 5)) * 0.3}

    def loss(p):
        return 0.5 * float(np.sum((np.tanh(X @ p["W1"]) @ p["W2"] - Y) ** 2)) / samples

    def grad(p):
        H = np.tanh(X @ p["W1"])
        R = (H @ p["W2"] - Y) / samples
        return {"W1": X.T @ (R @ p["W2"].T * (1 - H**2)), "W2": H.T @ R}

    return loss, params, grad


def time_one(loss, params, repeats: int = 200) -> float:
    x = {k: v.copy() for k, v in params.items()}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loss(x)
        times.append(time.perf_counter() - t0)
    return float(np.mean(times))  # the sweep is a sum, so compare with the mean


def main() -> None:
    try:  # one BLAS thread: steadier timings on a shared machine, the same for both figures
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    print(
        f"{'n':>6s} {'nfev':>7s} {'2n':>7s} {'extra':>6s} {'sweep s':>8s} {'nfev x t_eval':>14s} {'ratio':>6s}"
    )
    for hidden, samples in ((10, 400), (40, 400), (100, 400), (40, 4000)):
        loss, params, grad = make(hidden, samples)
        n = sum(v.size for v in params.values())
        before = time_one(loss, params)
        t0 = time.perf_counter()
        report = gc.check(loss, params, grad, mode="full", progress=False)
        seconds = time.perf_counter() - t0
        t_eval = (before + time_one(loss, params)) / 2  # measured around the sweep
        ideal = report.nfev * t_eval
        print(
            f"{n:6d} {report.nfev:7d} {2 * n:7d} {report.nfev - 2 * n:6d} {seconds:8.2f} {ideal:14.2f} "
            f"{seconds / ideal:6.2f}   ({report.verdict})"
        )


if __name__ == "__main__":
    main()
