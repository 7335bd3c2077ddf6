"""The built-in demos: the situations people ask about, each with the outcome it expects.

Demos that need a framework import it only when they run.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..check import check
from ..plot import plot_report, step_curve
from .demo import Case, Demo, Outcome
from .output import Output
from .textbook import plain_loop

__all__ = ["DEMOS"]


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence C-level log lines (TensorFlow's start-up chatter) while importing.

    What was written is replayed if the import fails.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), fd)
        ok = False
        try:
            yield
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            if not ok:
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace"))


def _import_keras() -> Any:
    if "keras" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with _quiet_stderr():
            import keras

            # the first op initialises the backend (and logs); do it while quiet
            keras.ops.convert_to_numpy(keras.ops.add(1.0, 1.0))
    import keras

    return keras


def _keras_iris(out: Output) -> Outcome:
    from . import iris

    keras = _import_keras()
    W, Xb, Y = iris.problem()
    cce = keras.losses.CategoricalCrossentropy()
    J = iris.cost(cce, Xb, Y)
    grad = iris.gradient(Xb, Y)
    out.say(
        "Softmax regression on iris (150 x 5 inputs, W of shape (5, 3)) with the correct handwritten "
        "gradient Xb.T (softmax(Xb W) - Y) / m; the cost is Keras' CategoricalCrossentropy(), which "
        f"computes in {keras.backend.floatx()} (Keras backend: {keras.backend.backend()})."
    )
    diff, _ = plain_loop(J, W, grad(W), eps=1e-7)
    out.say(
        f"A plain central-difference loop with step 1e-7 says: difference = {diff:.3g}  "
        '("clearly wrong" - for a correct gradient).',
        style="bold",
    )
    out.say("gc.check(cost, W, grad):")
    ok = check(J, W, grad)
    out.report(ok)
    cce64 = keras.losses.CategoricalCrossentropy(dtype="float64", reduction=None)

    def J64(w: np.ndarray) -> float:
        with warnings.catch_warnings():  # JAX without x64 warns that it truncates to float32
            warnings.simplefilter("ignore", UserWarning)
            values = keras.ops.convert_to_numpy(cce64(Y, iris.softmax(Xb @ w)))
        return float(np.mean(values, dtype=np.float64))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dtype64 = str(keras.ops.convert_to_numpy(cce64(Y, iris.softmax(Xb @ W))).dtype)
    text = (
        "The check measured the loss's float32 noise, took its step and tolerance from it, and passed "
        "the correct gradient. To evaluate in float64, build the loss as "
        "CategoricalCrossentropy(dtype='float64', reduction=None) and average it yourself"
    )
    if dtype64 == "float64":
        diff64, _ = plain_loop(J64, W, grad(W), eps=1e-7)
        out.say(f"{text}: then the plain loop says {diff64:.1g} as well.")
    else:
        out.say(
            f"{text}; on the {keras.backend.backend()} backend that still gives {dtype64} until float64 is "
            "switched on (for JAX: JAX_ENABLE_X64=1 before the first import of jax)."
        )
    out.say("The same loss with a gradient 2% too large (gc.check(cost, W, 1.02 * grad)):")
    bad = check(J, W, iris.gradient(Xb, Y, factor=1.02))
    out.report(bad)

    def steps(path: str) -> None:
        label = "Keras dtype='float64'" + ("" if dtype64 == "float64" else f" (gives {dtype64} here)")
        step_curve({"Keras default (float32)": J, label: J64}, W, grad, path=path)

    return Outcome(
        [
            Case("correct gradient, float32 loss", ok, "pass", finding=("low_precision", None)),
            Case(
                "gradient 2% too large, float32 loss",
                bad,
                "fail",
                failed=("param",),
                finding=("scale", "param"),
            ),
        ],
        [("", lambda path: plot_report(bad, path)), ("-steps", steps)],
    )


def _three_layer(out: Output) -> Outcome:
    from . import three_layer

    params, X, Y = three_layer.problem()
    J = three_layer.cost(X, Y)
    grads = three_layer.backward(X, Y, buggy=True)
    out.say(
        "LINEAR-RELU-LINEAR-RELU-LINEAR-SIGMOID, parameters W1, b1, W2, b2, W3, b3; the backward pass "
        "returns a dict with dW1, db1, ... (and the cache entries dZ*, dA*), with two mistakes: "
        "dW2 = 1./m * np.dot(dZ2, A1.T) * 2 and db1 = 4./m * np.sum(dZ1, ...)."
    )
    from ..adapters import detect

    g = detect(params).flatten(params)
    vec = np.concatenate([grads(params)["d" + name].ravel() for name in g.names])
    diff, _ = plain_loop(J, params, vec, eps=1e-7)
    out.say(
        f"A plain central-difference loop with step 1e-7 says: difference = {diff:.3g} > 1e-7, "
        '"there is a mistake in the backward propagation" - but not where.',
        style="bold",
    )
    out.say("gc.check(cost, params, backward):")
    report = check(J, params, grads)
    out.report(report)
    out.say("Fixed (no factors):")
    fixed = check(J, params, three_layer.backward(X, Y, buggy=False))
    out.report(fixed)
    return Outcome(
        [
            Case("dW2 * 2 and db1 * 4", report, "fail", failed=("W2", "b1"), finding=("scale", "W2")),
            Case("fixed backward pass", fixed, "pass"),
        ],
        [("", lambda path: plot_report(report, path))],
    )


def _digits(out: Output) -> Outcome:
    from . import digits_l2

    lam = 0.5
    params, X, Y = digits_l2.problem()
    J = digits_l2.cost(X, Y, lam)
    buggy = digits_l2.backward(X, Y, lam, forget_l2_layer2=True)

    def flat_gradient(p: dict[str, np.ndarray]) -> np.ndarray:
        # the exercise's form: one vector, theta1's entries then theta2's
        g = buggy(p)
        return np.concatenate((g["dtheta1"].ravel(), g["dtheta2"].ravel()))

    t0 = time.perf_counter()
    J(params)
    t_eval = time.perf_counter() - t0
    n = sum(v.size for v in params.values())
    out.say(
        f"sklearn's digits, all {X.shape[0]} images: 64-100-10 with sigmoid units, cross-entropy and L2 "
        f"regularisation (lambda = {lam}); theta1 (65, 100) and theta2 (101, 10) hold the bias rows, "
        f"{n} parameters. The backward pass returns one flat vector and forgets + lambda/m * theta2."
    )
    out.say(
        f"A plain loop over all {n} coordinates costs 2 x {n} evaluations x {1000 * t_eval:.0f} ms = "
        f"about {2 * n * t_eval:.0f} s, and then gives one number. Here: 40 random entries of each parameter.",
        style="bold",
    )
    out.say("gc.check(cost, params, flat_gradient, mode='full', sample=40):")
    report = check(J, params, flat_gradient, mode="full", sample=40, seed=0)
    out.report(report)
    return Outcome(
        [
            Case(
                "theta2 without its regularisation term",
                report,
                "fail",
                failed=("theta2",),
                finding=("missing_term", "theta2"),
            )
        ],
        [("", lambda path: plot_report(report, path))],
    )


def _dropout(out: Output) -> Outcome:
    import torch

    from . import dropout

    model, loss = dropout.problem(correct=True)
    out.say(
        "A torch classifier Linear(4, 8) - Tanh - Dropout(0.5) - Linear(8, 3) in train mode: every "
        "forward pass draws a new dropout mask. The usual advice is to switch dropout off for the check."
    )
    # The plain loop: perturb in place, evaluate, no control over the random masks.
    names = [n for n, _ in model.named_parameters()]
    model.zero_grad()
    loss().backward()
    auto = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()
    model.zero_grad(set_to_none=True)
    approx = []
    with torch.no_grad():
        for p in model.parameters():
            flat = p.view(-1)
            for i in range(flat.numel()):
                keep = flat[i].item()
                flat[i] = keep + 1e-3
                fp = float(loss())
                flat[i] = keep - 1e-3
                fm = float(loss())
                flat[i] = keep
                approx.append((fp - fm) / 2e-3)
    a = np.array(approx)
    g = auto.numpy()
    diff = float(np.linalg.norm(g - a) / (np.linalg.norm(g) + np.linalg.norm(a)))
    out.say(
        f"A plain loop (step 1e-3) with dropout on says: difference = {diff:.3g} - every evaluation saw another mask.",
        style="bold",
    )
    out.say("gc.check(loss, model)  (torch's random state is replayed before every evaluation):")
    training = model.training
    ok = check(loss, model)
    out.report(ok)
    out.say(f"model.training afterwards: {model.training} (was {training}); parameters: {', '.join(names)}")
    out.say("A hand-written dropout (autograd.Function) whose backward forgets the 1/(1-p) factor:")
    model_bad, loss_bad = dropout.problem(correct=False)
    bad = check(loss_bad, model_bad)
    out.report(bad)
    out.say(
        "The factor 1/2 is 1 - p: the layers in front of the dropout get gradients without the 1/(1-p) "
        "that the forward pass applied; the layer behind it is right."
    )
    return Outcome(
        [
            Case("nn.Dropout, train mode", ok, "pass"),
            Case(
                "backward forgets 1/(1-p)",
                bad,
                "fail",
                failed=("0.weight", "0.bias"),
                finding=("scale", None),
            ),
        ],
        [("", lambda path: plot_report(bad, path))],
    )


def _tiny(out: Output) -> Outcome:
    from . import tiny

    params, fixed, X, Y = tiny.problem()
    J = tiny.cost(fixed, X, Y)
    right = tiny.backward(fixed, X, Y)
    wrong = tiny.backward(fixed, X, Y, factor=1.15)
    g_right, g_wrong = right(params)["dW1"], wrong(params)["dW1"]
    out.say(
        f"A ten-class net on a plateau: cost {J(params):.3f}, first-layer gradient entries around "
        f"{np.median(np.abs(g_right)):.1e} (largest {np.abs(g_right).max():.1e}). One backward pass is "
        "right, the other 15% too large in every entry."
    )
    for label, g in (("correct", g_right), ("15% off", g_wrong)):
        d7, _approx = plain_loop(J, params, g, eps=1e-7)
        d3, approx3 = plain_loop(J, params, g, eps=1e-3)
        out.say(
            f'  {label:8s} plain loop: max |grad - approx| = {np.abs(g.ravel() - approx3).max():.1e} ("tiny"), '
            f"difference at step 1e-7 = {d7:.2f}, at step 1e-3 = {d3:.2g}"
        )
    out.say(
        "Absolute differences call both fine; the textbook step 1e-7 calls both wrong (the loss's round-off, "
        "about 2.3 x 1e-16 / 1e-7, is larger than the gradient).",
        style="bold",
    )
    out.say("gc.check(cost, params, correct):")
    ok = check(J, params, right)
    out.report(ok)
    out.say("gc.check(cost, params, fifteen_percent_off):")
    bad = check(J, params, wrong)
    out.report(bad)
    return Outcome(
        [
            Case("correct, entries ~1e-11", ok, "pass"),
            Case("15% too large, entries ~1e-11", bad, "fail", failed=("W1",), finding=("scale", "W1")),
        ],
        [("", lambda path: plot_report(bad, path))],
    )


DEMOS: dict[str, Demo] = {
    d.name: d
    for d in (
        Demo(
            "keras-iris",
            "float32 Keras loss on iris: a correct gradient that a plain loop calls wrong",
            "Keras CategoricalCrossentropy (float32) on iris: plain loop 0.2-0.3, our verdict PASS",
            ("keras", "sklearn"),
            _keras_iris,
        ),
        Demo(
            "three-layer",
            "three-layer net with dW2 * 2 and db1 * 4",
            "the course assignment's net with dW2 * 2 and db1 * 4: which parameters, which factor",
            (),
            _three_layer,
        ),
        Demo(
            "digits",
            "digits net (64-100-10, L2) whose theta2 gradient forgets the regularisation",
            "sklearn digits, 64-100-10 sigmoid net, theta2 gradient without lambda/m * theta2",
            ("sklearn",),
            _digits,
        ),
        Demo(
            "dropout",
            "dropout in train mode (torch): checked with the random masks replayed",
            "torch net with Dropout(0.5) in train mode; a dropout backward that forgets 1/(1-p)",
            ("torch",),
            _dropout,
            adapter="torch",
        ),
        Demo(
            "tiny",
            "tiny gradients (~1e-11): correct passes, 15% off fails",
            "gradient entries around 1e-11 on a cost of 2.3: correct passes, 15% off fails",
            (),
            _tiny,
        ),
    )
}
