"""The judgement on hard cases: staircases, non-finite gradients, underflowing tails.

And the rule that holds for every report: no "fail" or "inconclusive" without a
finding that explains it, as a hypothesis property over generated functions,
corruptions and modes.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradcheck_core as gc

MODES = ["full", "fast"]


def _explained(report: gc.Report) -> bool:
    """Every failing or inconclusive block is named by a finding (or a check-wide one explains it)."""
    named = {f.block for f in report.findings}
    for f in report.findings:
        if f.kind == "kink":
            named.update(f.detail.get("blocks", {}))
    general = any(f.block is None for f in report.findings)
    for b in report.blocks:
        if b.verdict == "fail" and b.name not in named:
            return False
        if b.verdict == "inconclusive" and b.name not in named and not general:
            return False
    return report.verdict == "pass" or bool(report.findings)


# ----------------------------------------------------------------------------- staircases


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["floor", "ceil", "trunc", "sign", "round3", "floor_divide", "masked_fill"])
def test_torch_staircases_pass(name: str, mode: str) -> None:
    torch = pytest.importorskip("torch")
    ops = {
        "floor": torch.floor,
        "ceil": torch.ceil,
        "trunc": torch.trunc,
        "sign": torch.sign,
        "round3": lambda t: torch.round(t, decimals=3),
        "floor_divide": lambda t: torch.div(t, 0.7, rounding_mode="floor"),
        "masked_fill": lambda t: t.masked_fill(t > 0, 2.5) * 0 + torch.floor(t),
    }
    x = torch.linspace(-2.3, 2.9, 12, dtype=torch.float64) * 1.37
    report = gc.check_function(ops[name], x, mode=mode)
    assert report.verdict == "pass", str(report)


@pytest.mark.parametrize("mode", MODES)
def test_torch_floor_of_a_loss_passes_with_gc_check(mode: str) -> None:
    torch = pytest.importorskip("torch")
    p = torch.linspace(-3.1, 2.2, 9, dtype=torch.float64).requires_grad_()
    report = gc.check(lambda v: (torch.floor(3 * v) * 1.7).sum(), p, mode=mode)
    assert report.verdict == "pass", str(report)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["floor", "round", "sign"])
def test_jax_staircases_pass(name: str, mode: str) -> None:
    jnp = pytest.importorskip("jax.numpy")
    op = {"floor": jnp.floor, "round": lambda v: jnp.round(v, 3), "sign": jnp.sign}[name]
    x = np.linspace(-2.3, 2.9, 10) * 1.37
    assert gc.check_function(op, jnp.asarray(x), mode=mode).verdict == "pass"
    report = gc.check(lambda v: jnp.sum(op(v) * 1.5), jnp.asarray(x), mode=mode)
    assert report.verdict == "pass", str(report)


@pytest.mark.parametrize("mode", MODES)
def test_a_step_right_under_the_point_is_a_kink_not_a_failure(mode: str) -> None:
    # floor at an integer: the left slope is infinite, the right one zero
    x = np.array([1.0, 2.0, 0.5, -0.25])

    def f(v: np.ndarray) -> float:
        return float(np.sum(np.floor(v)))

    report = gc.check(f, x, np.zeros(4), mode=mode)
    assert report.verdict != "fail", str(report)
    assert _explained(report)


@pytest.mark.parametrize("mode", MODES)
def test_nonzero_gradient_of_a_flat_function_fails_with_a_finding(mode: str) -> None:
    # clip saturated at every entry, but the gradient passes straight through
    x = np.array([3.0, -4.0, 5.5, 2.2, -3.3])
    report = gc.check(lambda v: float(np.sum(np.clip(v, -1, 1) ** 2)), x, 2 * np.clip(x, -1, 1), mode=mode)
    assert report.verdict == "fail"
    assert [f.kind for f in report.findings] == ["saturation"]


@pytest.mark.parametrize("mode", MODES)
def test_zeroed_gradient_of_a_tiny_smooth_function_still_fails(mode: str) -> None:
    # f moves by less than an ulp at the flatness probe's step: the larger steps see the slope
    rng = np.random.default_rng(3)
    A = rng.standard_normal((8, 8))
    report = gc.check(
        lambda v: 2.86 + 1e-11 * float(np.sum(np.sin(A @ v))), rng.standard_normal(8), np.zeros(8), mode=mode
    )
    assert report.verdict == "fail"
    assert report.findings_of("zero_gradient")


# ----------------------------------------------------------------------------- non-finite gradients


def _where_point() -> np.ndarray:
    return np.array([1.0, -1.0, 2.0])


@pytest.mark.parametrize("mode", MODES)
def test_torch_nan_gradient_of_where_fails_and_names_the_entry(mode: str) -> None:
    torch = pytest.importorskip("torch")
    p = torch.tensor(_where_point(), requires_grad=True)
    report = gc.check(lambda v: torch.where(v > -10, v**2, torch.sqrt(v)).sum(), p, mode=mode)
    assert report.verdict == "fail"
    (finding,) = report.findings_of("non_finite_gradient")
    assert finding.detail["entries"] == [(1,)]
    assert "double-where" in finding.message
    assert report.blocks[0].worst_index == (1,)


@pytest.mark.parametrize("mode", MODES)
def test_torch_nan_gradient_through_check_function(mode: str) -> None:
    torch = pytest.importorskip("torch")
    report = gc.check_function(
        lambda v: torch.where(v > -10, v**2, torch.sqrt(v)), torch.tensor(_where_point()), mode=mode
    )
    assert report.verdict == "fail"
    assert report.findings_of("non_finite_gradient")


@pytest.mark.parametrize("mode", MODES)
def test_jax_nan_gradient_of_where_fails(mode: str) -> None:
    jnp = pytest.importorskip("jax.numpy")
    report = gc.check(
        lambda v: jnp.sum(jnp.where(v > -10, v**2, jnp.sqrt(v))), jnp.asarray(_where_point()), mode=mode
    )
    assert report.verdict == "fail"
    assert report.findings_of("non_finite_gradient")[0].detail["entries"] == [(1,)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_numpy_handwritten_non_finite_gradient_fails(bad: float, mode: str) -> None:
    x = np.linspace(-1, 1, 30)
    g = 2 * x
    g[[4, 17]] = bad
    report = gc.check(lambda v: float(np.sum(v**2)), x, g, mode=mode)
    assert report.verdict == "fail"
    (finding,) = report.findings_of("non_finite_gradient")
    assert finding.detail["n_bad"] == 2 and finding.detail["entries"] == [(4,), (17,)]
    assert report.blocks[0].n_bad >= 2


# ----------------------------------------------------------------------------- float32 tails


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("float64", [True, False])
def test_ndtr_tail_is_not_a_failure(mode: str, float64: bool) -> None:
    torch = pytest.importorskip("torch")
    # torch's ndtr is exactly 0 at -8.5 (float32 and float64), its derivative 8e-17
    report = gc.check_function(torch.special.ndtr, torch.tensor([-8.5]), mode=mode, float64=float64)
    assert report.verdict == "inconclusive", str(report)
    assert any(f.kind == "low_precision" and f.block for f in report.findings)
    mixed = gc.check_function(torch.special.ndtr, torch.tensor([-8.5, 0.3, 1.0]), mode=mode, float64=float64)
    assert mixed.verdict != "fail"


# ----------------------------------------------------------------------------- the property


SHAPES = st.sampled_from([(5,), (4, 4), (2, 3, 3), (24,)])
FUNCS = st.sampled_from(["tanh", "quadratic", "floor", "clip", "abs", "tiny"])
CORRUPTIONS = st.sampled_from(["none", "scale", "sign", "zero", "entry", "nan", "noise", "transpose"])


def _problem(func: str, shape: tuple[int, ...], seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 2
    c = rng.standard_normal(shape)
    if func == "tanh":
        return x, (lambda v: float(np.sum(c * np.tanh(v)))), (lambda v: c * (1 - np.tanh(v) ** 2))
    if func == "quadratic":
        return x, (lambda v: float(np.sum(c * v**2))), (lambda v: 2 * c * v)
    if func == "floor":
        return x, (lambda v: float(np.sum(c * np.floor(v)))), (lambda v: np.zeros_like(v))
    if func == "clip":
        return x, (lambda v: float(np.sum(c * np.clip(v, -1, 1)))), (lambda v: c * (np.abs(v) < 1))
    if func == "abs":
        return x, (lambda v: float(np.sum(c * np.abs(v)))), (lambda v: c * np.sign(v))
    return x, (lambda v: 1.0 + 1e-13 * float(np.sum(c * v))), (lambda v: 1e-13 * c)


def _corrupt(kind: str, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    g = g.copy()
    if kind == "scale":
        return 1.3 * g
    if kind == "sign":
        return -g
    if kind == "zero":
        return np.zeros_like(g)
    if kind == "entry":
        g.reshape(-1)[int(rng.integers(g.size))] += 0.5 + np.max(np.abs(g))
        return g
    if kind == "nan":
        g.reshape(-1)[int(rng.integers(g.size))] = np.nan
        return g
    if kind == "noise":
        return g + 0.1 * rng.standard_normal(g.shape)
    if kind == "transpose" and g.ndim >= 2:
        return np.swapaxes(g, -1, -2)
    return g


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FUNCS, SHAPES, CORRUPTIONS, st.sampled_from(MODES), st.integers(0, 10_000))
def test_every_fail_or_inconclusive_is_explained(func, shape, corruption, mode, seed) -> None:
    x, f, g = _problem(func, shape, seed)
    grad = _corrupt(corruption, g(x), np.random.default_rng(seed))
    report = gc.check(f, x, grad, mode=mode)
    assert _explained(report), str(report)
    if corruption == "nan":
        assert report.verdict == "fail"
    if corruption == "none" and func in ("tanh", "quadratic", "floor"):
        assert report.verdict == "pass", str(report)
    if (
        corruption != "none"
        and func in ("tanh", "quadratic")
        and not (corruption == "transpose" and len(shape) == 1)
    ):
        assert report.verdict == "fail", str(report)
    if corruption in ("zero", "scale") and func == "tiny":  # never a silent pass
        assert report.verdict != "pass", str(report)


@pytest.mark.parametrize("mode", MODES)
def test_slogdet_sign_fill_and_floor_divide_pass(mode: str) -> None:
    torch = pytest.importorskip("torch")
    jnp = pytest.importorskip("jax.numpy")
    A = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = torch.linspace(-2.1, 1.9, 7, dtype=torch.float64)
    assert gc.check_function(lambda a: torch.linalg.slogdet(a)[0] * 1.0, A, mode=mode).verdict == "pass"
    assert gc.check_function(torch.linalg.slogdet, A, mode=mode).verdict == "pass"
    assert gc.check_function(lambda t: torch.fill(t, 1.5), x, mode=mode).verdict == "pass"
    xj = jnp.asarray(x.numpy())
    assert gc.check_function(lambda t: jnp.floor_divide(t, 0.7), xj, mode=mode).verdict == "pass"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("seed", "shape"), [(156, (4, 4)), (6397, (2, 3, 3))])
def test_zeroed_gradient_of_a_1e13_slope_is_never_a_pass(
    mode: str, seed: int, shape: tuple[int, ...]
) -> None:
    # f moves by mere ulps up to steps of 1e-2 along some directions, and only by ulps
    # up to the coordinates' own size: a slope may hide there, so nothing is confirmed
    rng = np.random.default_rng(seed)
    x, c = rng.standard_normal(shape) * 2, rng.standard_normal(shape)
    report = gc.check(lambda v: 1.0 + 1e-13 * float(np.sum(c * v)), x, np.zeros_like(x), mode=mode)
    assert report.verdict != "pass", str(report)
    assert report.findings


def _summary(report: gc.Report) -> tuple:
    blocks = [
        (
            b.name,
            b.verdict,
            b.n_bad,
            b.n_kink,
            b.rel_error,
            b.analytic.tobytes(),
            b.numeric.tobytes(),
            b.tolerance.tobytes(),
        )
        for b in report.blocks
    ]
    return report.verdict, report.nfev, blocks, [(f.kind, f.block, f.message) for f in report.findings]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FUNCS, SHAPES, CORRUPTIONS, st.integers(0, 10_000))
def test_a_sweep_settled_as_it_stands_is_judged_as_the_whole_rule_judges_it(
    func, shape, corruption, seed
) -> None:
    """The shortcut for settled coordinates gives the report the full judgement gives, bit for bit."""
    from unittest import mock

    from gradcheck_core import sweep

    x, f, g = _problem(func, shape, seed)
    grad = _corrupt(corruption, g(x), np.random.default_rng(seed))
    shortcut = gc.check(f, x, grad, mode="full")
    with mock.patch.object(sweep, "_all_clear", return_value=None):
        whole = gc.check(f, x, grad, mode="full")
    assert _summary(shortcut) == _summary(whole)


def test_the_shortcut_is_taken_for_a_clear_pass_and_not_for_a_flat_coordinate() -> None:
    from unittest import mock

    from gradcheck_core import sweep

    c = np.array([1.0, -2.0, 0.5])
    taken = []
    original = sweep._all_clear

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        taken.append(out is not None)
        return out

    with mock.patch.object(sweep, "_all_clear", spy):
        assert (
            gc.check(lambda v: float(np.sum(c * v**2)), c + 1, 2 * c * (c + 1), mode="full").verdict == "pass"
        )
        # the second coordinate does not move the loss: its zero derivative goes to the flat probes
        loss = lambda v: float(v[0] ** 2 + 0.0 * v[1])  # noqa: E731
        assert gc.check(loss, np.array([1.5, 2.0]), np.array([3.0, 0.0]), mode="full").verdict == "pass"
    assert taken == [True, False]
