"""Every finding kind, in full and fast mode where it applies, and fast mode's budget."""

from __future__ import annotations

import numpy as np
import pytest

import gradcheck_core as gc

RNG = np.random.default_rng(7)
A = RNG.standard_normal((30, 6))
T = RNG.standard_normal(30)
W0 = RNG.standard_normal((6, 4))
Z = RNG.standard_normal((30, 4))


def loss(p):
    r = np.tanh(A @ p["W"]) - Z
    return 0.5 * float(np.sum(r**2)) + 0.05 * float(np.sum(p["W"] ** 2))


def true_grad(W):
    h = np.tanh(A @ W)
    return A.T @ ((h - Z) * (1 - h**2)) + 0.1 * W


BUGS = {
    "scale": lambda W: 3.0 * true_grad(W),
    "sign": lambda W: -true_grad(W),
    "zero_gradient": lambda W: np.zeros_like(W),
    "missing_term": lambda W: true_grad(W) - 0.1 * W,
}


@pytest.mark.parametrize("mode", ["full", "fast"])
@pytest.mark.parametrize("kind", sorted(BUGS))
def test_bug_kinds_are_named(kind: str, mode: str) -> None:
    bug = BUGS[kind]
    report = gc.check(loss, {"W": W0}, lambda p: {"W": bug(p["W"])}, mode=mode)
    assert report.verdict == "fail"
    kinds = [f.kind for f in report.findings]
    assert kind in kinds, str(report)
    if kind == "scale":
        assert report.findings_of("scale")[0].detail["factor"] == pytest.approx(3.0, rel=1e-4)
    if kind == "missing_term":
        assert report.findings_of("missing_term")[0].detail["coefficient"] == pytest.approx(0.1, rel=1e-3)


def test_transpose_in_full_mode() -> None:
    Wsq = RNG.standard_normal((6, 6))
    B = RNG.standard_normal((6, 6))

    def f(p):
        return float(np.sum(np.sin(B @ p["W"])))

    def g(p):
        return {"W": (B.T @ np.cos(B @ p["W"])).T}

    report = gc.check(f, {"W": Wsq}, g, mode="full")
    assert [x.kind for x in report.findings] == ["transpose"]


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_correct_gradient_passes(mode: str) -> None:
    report = gc.check(loss, {"W": W0}, lambda p: {"W": true_grad(p["W"])}, mode=mode)
    assert report.passed and report.mode == mode


def test_kink_is_inconclusive_not_wrong() -> None:
    x = np.array([0.0, 1.5, -2.0, 0.0, 0.7])

    def f(v):
        return float(np.sum(np.abs(v)) + np.sum(np.maximum(v, 0) ** 1))

    def g(v):  # sign(0) = 0 and relu'(0) = 0: subgradients
        return np.sign(v) + (v > 0)

    report = gc.check(f, x, g, mode="full")
    assert report.verdict == "pass"
    assert report.blocks[0].n_kink == 2
    assert report.findings_of("kink")
    bad = gc.check(f, x, lambda v: 2 * (np.sign(v) + (v > 0)), mode="full")
    assert bad.verdict == "fail"


def test_relu_net_with_units_at_zero() -> None:
    X = RNG.standard_normal((5, 3))
    W = RNG.standard_normal((3, 4))
    W[:, 0] = 0.0  # every pre-activation of unit 0 is exactly 0

    def f(p):
        return float(np.sum(np.maximum(X @ p, 0) ** 2) + np.sum(np.maximum(X @ p, 0)))

    def g(p):
        h = X @ p
        return X.T @ (2 * np.maximum(h, 0) + (h > 0))

    report = gc.check(f, W, g, mode="full")
    assert report.verdict == "pass", str(report)


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_float32_loss_low_precision_never_fails_a_correct_gradient(mode: str) -> None:
    A32 = A.astype(np.float32)

    def f32(p):
        W = p["W"].astype(np.float32)
        r = np.tanh(A32 @ W) - Z.astype(np.float32)
        return np.float32(0.5) * np.sum(r * r) + np.float32(0.05) * np.sum(W * W)

    good = gc.check(f32, {"W": W0}, lambda p: {"W": true_grad(p["W"])}, mode=mode)
    assert good.verdict in ("pass", "inconclusive")
    low = good.findings_of("low_precision")
    assert low and "float32" in low[0].message
    assert 1e-9 < low[0].detail["noise_rel"] < 1e-5
    bad = gc.check(f32, {"W": W0}, lambda p: {"W": 2 * true_grad(p["W"])}, mode=mode)
    assert bad.verdict == "fail"


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_nondeterministic_is_reported(mode: str) -> None:
    outside = np.random.default_rng(0)

    def noisy(p):
        return loss(p) * (1 + 1e-3 * outside.standard_normal())

    report = gc.check(noisy, {"W": W0}, lambda p: {"W": 3 * true_grad(p["W"])}, mode=mode)
    assert report.verdict == "inconclusive"
    assert report.findings_of("nondeterministic")


def _big_problem(n: int = 100_000):
    rng = np.random.default_rng(0)
    c = rng.uniform(0.5, 1.5, n)
    x0 = rng.standard_normal(n)

    def f(x):
        return float(np.sum(c * np.sin(x)) + 0.1 * np.sum(x**2) ** 1.5 / n)

    def g(x):
        return c * np.cos(x) + 0.3 * np.sum(x**2) ** 0.5 * x / n

    return f, x0, g(x0)


def test_fast_mode_finds_one_wrong_entry_among_100000() -> None:
    f, x0, grad = _big_problem()
    wrong = grad.copy()
    wrong[31337] += 1e-3 * np.max(np.abs(grad))
    report = gc.check(f, x0, wrong, mode="fast")
    assert report.verdict == "fail"
    assert report.blocks[0].worst_index == (31337,)
    assert report.blocks[0].n_bad == 1
    assert report.nfev <= 2000  # a full sweep needs 200,000
    assert report.findings_of("sparse_error")


def test_fast_mode_passes_a_correct_100000_gradient_cheaply() -> None:
    f, x0, grad = _big_problem()
    report = gc.check(f, x0, grad)  # auto picks fast mode at this size
    assert report.mode == "fast"
    assert report.passed
    assert report.nfev <= 200


def test_fast_mode_locates_several_wrong_entries() -> None:
    f, x0, grad = _big_problem(20_000)
    wrong = grad.copy()
    spots = [17, 4242, 19999]
    wrong[spots] *= 1.5
    report = gc.check(f, x0, wrong, mode="fast")
    b = report.blocks[0]
    assert b.verdict == "fail" and b.n_bad == 3
    found = sorted(
        int(i) for i, a, n, t in zip(b.indices, b.analytic, b.numeric, b.tolerance) if abs(a - n) > t
    )
    assert found == spots


def test_float32_inside_a_float64_result_is_measured_as_low_precision() -> None:
    A32 = A.astype(np.float32)

    def hidden(p):  # computes in float32, returns a Python float
        return float(np.sum(np.tanh(A32 @ p["W"].astype(np.float32)) ** 2))

    def g(p):
        h = np.tanh(A @ p["W"])
        return {"W": A.T @ (2 * h * (1 - h**2))}

    report = gc.check(hidden, {"W": W0}, g)
    assert report.verdict in ("pass", "inconclusive")
    low = report.findings_of("low_precision")
    assert low and "times that of float64" in low[0].message


def test_probabilities_near_zero_are_differentiated_with_smaller_steps() -> None:
    # A log-loss on softmax outputs as small as 1e-9: a step of 1e-5 would leave
    # the domain. The check shrinks the step where it must and still judges.
    rng = np.random.default_rng(2)
    X = np.c_[np.ones(40), rng.standard_normal((40, 4)) * 4]
    Y = np.eye(3)[rng.integers(0, 3, 40)]
    Zs = X @ rng.standard_normal((5, 3))
    P = np.exp(Zs - Zs.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    assert P.min() < 1e-6

    def loss(p):
        return -np.mean(np.sum(Y * np.log(p), axis=1))

    report = gc.check_loss(lambda y, p: loss(p), Y, P, grad=lambda p: -Y / p / len(Y))
    assert report.verdict == "pass", str(report)
    assert report.blocks[0].name == "y_pred"
    wrong = gc.check_loss(lambda y, p: loss(p), Y, P, grad=lambda p: -Y / p)
    assert wrong.verdict == "fail"
    assert wrong.findings_of("scale")[0].block == "y_pred"


def test_kinks_along_every_parameter_are_not_read_as_low_precision() -> None:
    """A large float64 model whose units sit next to their kinks is not called low precision.

    120,000 ReLUs each within a relative 1e-7 of its kink: a noise probe moving
    every parameter crosses thousands of them and reads about 1e-4 of "noise";
    probed along single tensors the loss shows its float64 round-off.
    """
    rng = np.random.default_rng(0)
    w = rng.uniform(0.5, 1.5, 120_000)
    c = w * (1 + 1e-7 * rng.standard_normal(w.size))
    b = rng.standard_normal(10)

    def loss(p: dict[str, np.ndarray]) -> float:
        return float(np.sum(np.maximum(p["w"] - c, 0.0)) + 100 * np.sum(np.sin(p["b"])))

    def grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"w": (p["w"] - c > 0).astype(float), "b": 100 * np.cos(p["b"])}

    report = gc.check(loss, {"b": b, "w": w}, grad, mode="fast")
    assert report.verdict != "fail"
    assert not report.findings_of("low_precision"), report
    assert report.noise < 1e-10
