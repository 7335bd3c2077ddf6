"""The seed case on every Keras backend: a correct gradient against a float32 Keras loss.

Softmax regression on iris (150 samples, 4 features plus a bias column, all
three classes, one-hot labels), the gradient written by hand in numpy:
``X.T @ (softmax(X W) - Y) / m``, which is correct.  The loss is a default
``keras.losses.CategoricalCrossentropy()`` applied to the numpy softmax
probabilities in a closure, as in the seed question.  For each backend (each
in its own process, ``KERAS_BACKEND`` set before Keras is imported):

* ``plain f32``: the relative error ``||a - n|| / (||a|| + ||n||)`` of the
  classic hand-written central-difference loop (step 1e-7) against the correct
  gradient, with the default float32 loss;
* ``plain set_floatx``: the same after ``keras.backend.set_floatx("float64")``
  (the loss created afterwards), the fix suggested in the seed's answer;
* ``gc.check``: our verdict and relative error on the same float32 closure;
* ``gc.check_loss``: verdicts and relative error when the loss itself is
  checked against the predictions (rebuilt in float64 by the Keras adapter;
  on the numpy backend against the handwritten gradient of the loss).  Some
  weight draws push probabilities below 1e-6, next to the loss's clipping at
  1e-7 and the pole of log; ``--json`` lists the smallest probability per draw.

Each figure is the median over five random weight matrices (the seed's
``np.random.randn(5, 3) * sqrt(1/5)``); the range is shown for the plain loop.
Run: ``python benchmarks/keras_float32.py`` (``--json`` for the raw figures).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

BACKENDS = ("tensorflow", "jax", "torch", "numpy")
DRAWS = 5
STEP = 1e-7


def _child() -> dict[str, Any]:
    """Measure on the backend this process was started with."""
    import keras
    import numpy as np
    from sklearn.datasets import load_iris

    import gradcheck_core as gc

    data = load_iris()
    X = np.c_[np.ones(len(data.data)), data.data]
    Y = np.eye(3)[data.target]
    m = len(X)

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def gradient(W: np.ndarray) -> np.ndarray:
        return X.T @ (softmax(X @ W) - Y) / m

    def rel(a: np.ndarray, n: np.ndarray) -> float:
        return float(np.linalg.norm(a - n) / (np.linalg.norm(a) + np.linalg.norm(n)))

    def plain_loop(loss: Any, W: np.ndarray) -> float:
        value = lambda w: float(keras.ops.convert_to_numpy(loss(Y, softmax(X @ w))))  # noqa: E731
        numeric = np.zeros_like(W)
        for i in np.ndindex(W.shape):
            Wp, Wm = W.copy(), W.copy()
            Wp[i] += STEP
            Wm[i] -= STEP
            numeric[i] = (value(Wp) - value(Wm)) / (2 * STEP)
        return rel(gradient(W), numeric)

    def loss_gradient(P: np.ndarray) -> np.ndarray:
        return (-Y / P + 1.0 / P.sum(axis=1, keepdims=True)) / m

    weights = [
        np.random.default_rng(seed).standard_normal((5, 3)) * np.sqrt(1.0 / 5) for seed in range(DRAWS)
    ]
    cce = keras.losses.CategoricalCrossentropy()
    plain32 = [plain_loop(cce, W) for W in weights]
    verdicts, ours, seconds, loss_verdicts, loss_errors = [], [], [], [], []
    for W in weights:
        start = time.perf_counter()
        report = gc.check(lambda w: cce(Y, softmax(X @ w)), W, gradient)
        seconds.append(time.perf_counter() - start)
        verdicts.append(report.verdict)
        ours.append(report.rel_error)
        grad = loss_gradient if keras.backend.backend() == "numpy" else None
        loss_report = gc.check_loss(cce, Y, softmax(X @ W), grad=grad)
        loss_verdicts.append(loss_report.verdict)
        loss_errors.append(loss_report.rel_error)
    keras.backend.set_floatx("float64")
    plain64 = [plain_loop(keras.losses.CategoricalCrossentropy(), W) for W in weights]
    return {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "plain_float32": plain32,
        "plain_set_floatx": plain64,
        "verdicts": verdicts,
        "check_rel_error": ours,
        "check_seconds": seconds,
        "check_loss_verdicts": loss_verdicts,
        "check_loss_rel_error": loss_errors,
        "min_probability": [float(softmax(X @ W).min()) for W in weights],
    }


def run(backend: str) -> dict[str, Any]:
    """One backend in a fresh process."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child"], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        return {"backend": backend, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _verdicts(values: list[str]) -> str:
    counts = {v: values.count(v) for v in dict.fromkeys(values)}
    return ", ".join(f"{n} {v}" for v, n in counts.items())


def table(rows: list[dict[str, Any]]) -> str:
    """The figures as a plain text table (medians over the weight draws)."""
    import numpy as np

    head = (
        f"{'backend':<11} {'plain f32':>9} {'(range)':<13} {'set_floatx':>10}  "
        f"{'gc.check':<8} {'rel_error':>9}  {'gc.check_loss':<26} {'rel_error':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['backend']:<11} failed: {r['error']}")
            continue
        p32 = r["plain_float32"]
        span = f"({min(p32):.2f}-{max(p32):.2f})"
        lines.append(
            f"{r['backend']:<11} {np.median(p32):>9.2f} {span:<13} {np.median(r['plain_set_floatx']):>10.2g}  "
            f"{_verdicts(r['verdicts']):<8} {np.median(r['check_rel_error']):>9.1e}  "
            f"{_verdicts(r['check_loss_verdicts']):<26} {np.median(r['check_loss_rel_error']):>9.1e}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if "--child" in argv:
        print(json.dumps(_child()))
        return
    rows = [run(b) for b in BACKENDS]
    if "--json" in argv:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"Seed case (iris softmax regression, default CategoricalCrossentropy), median of {DRAWS} weight draws"
    )
    print(table(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
