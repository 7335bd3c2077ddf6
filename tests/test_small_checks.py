"""The fixed cost of a small check: what is computed once, or more cheaply, gives the same results."""

from __future__ import annotations

import functools
import inspect
import random
from math import factorial
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradcheck_core as gc
from gradcheck_core.adapters.base import python_rng_states, takes_argument
from gradcheck_core.counted_loss import _same_state
from gradcheck_core.differences import _difference_levels, estimate_noise
from gradcheck_core.shared_outputs import SharedOutputs
from gradcheck_core.tolerance import rel_error


def _levels_by_numpy(values: np.ndarray) -> tuple[list[float], list[bool]]:
    """The difference table as numpy builds it, one order at a time."""
    table = values.copy()
    sigmas, signs = [], []
    for k in range(1, len(values)):
        table = np.diff(table)
        gamma = factorial(k) ** 2 / factorial(2 * k)
        sigmas.append(float(np.sqrt(gamma * np.mean(table**2))))
        signs.append(bool(np.any(table > 0) and np.any(table < 0)))
    return sigmas, signs


@pytest.mark.parametrize("points", [3, 8, 9, 12, 20])
def test_difference_levels_match_numpys_table_bit_for_bit(points: int) -> None:
    rng = np.random.default_rng(points)
    for trial in range(400):
        base = rng.standard_normal() * 10.0 ** int(rng.integers(-8, 8))
        kind = trial % 4
        if kind == 0:  # round-off noise on a constant
            values = base + rng.standard_normal(points + 1) * 1e-16 * abs(base)
        elif kind == 1:  # a smooth function along a short segment
            values = np.sin(base + np.arange(points + 1) * 1e-6)
        elif kind == 2:
            values = rng.standard_normal(points + 1)
        else:  # quantised values
            values = np.round(base + rng.standard_normal(points + 1) * 1e-3, 3)
        assert _difference_levels(values) == _levels_by_numpy(values)


def test_difference_levels_of_non_finite_values_match_numpys() -> None:
    for values in (
        np.array([1.0, np.nan, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]),
        np.full(9, np.inf),
        np.zeros(9),
    ):
        with np.errstate(all="ignore"):
            want = _levels_by_numpy(values)
        got = _difference_levels(values)
        np.testing.assert_array_equal(got[0], want[0])
        assert got[1] == want[1]


def test_noise_estimate_is_unchanged_on_a_float32_like_function() -> None:
    x0 = np.linspace(-1.0, 1.0, 7)
    fun = lambda x: float(np.float32(np.sum(np.sin(x), dtype=np.float32)))  # noqa: E731
    noise, nfev = estimate_noise(fun, x0, fun(x0), np.random.default_rng(0))
    assert nfev > 0
    assert 1e-9 < noise < 1e-5  # float32 round-off of a value near 0..7, not float64's


def test_rel_error_is_the_norm_ratio_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    for _ in range(500):
        k = int(rng.integers(0, 30))
        a = rng.standard_normal(k) * 10.0 ** int(rng.integers(-100, 100))
        n = a * (1 + rng.standard_normal(k) * 1e-8)
        denom = np.linalg.norm(a) + np.linalg.norm(n)
        want = float(np.linalg.norm(a - n) / denom) if denom > 0 else 0.0
        assert rel_error(a, n) == want
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert rel_error(np.zeros((2, 2)), np.ones((2, 2))) == 1.0
    assert rel_error(np.array([1.0, np.nan]), np.array([1.0, 2.0])) == 0.0  # a NaN norm, as before


def test_numpy_legacy_states_compare_by_key_and_position() -> None:
    np.random.seed(7)
    a = np.random.get_state()
    assert _same_state(a, np.random.get_state())
    np.random.random()
    assert not _same_state(a, np.random.get_state())
    np.random.seed(7)
    np.random.standard_normal()  # leaves a cached Gaussian: only has_gauss and the cache differ
    b = np.random.get_state()
    np.random.seed(7)
    np.random.standard_normal(2)
    c = np.random.get_state()
    assert (b[1] == c[1]).all() and b[2] == c[2]
    assert not _same_state(b, c)
    assert _same_state(random.getstate(), random.getstate())


# what a loss may do to numpy's global generator between two looks at it
_NUMPY_DRAWS = st.sampled_from(
    ["nothing", "random", "normal", "normals", "seed0", "seed7", "state", "bit_generator"]
)


@settings(max_examples=80, deadline=None)
@given(st.lists(_NUMPY_DRAWS, max_size=4), st.lists(_NUMPY_DRAWS, min_size=1, max_size=4))
def test_numpy_generator_told_unchanged_only_when_it_is(before: list[str], between: list[str]) -> None:
    """The MT19937 bytes never call a changed state unchanged, and tell an untouched one cheaply."""
    numpy_rng = python_rng_states()[0]
    outer = np.random.get_state()
    bit_generator = np.random.get_bit_generator()
    other = np.random.RandomState(3).get_state()

    def act(what: str) -> None:
        if what == "random":
            np.random.random()
        elif what == "normal":
            np.random.standard_normal()  # draws two, keeps one
        elif what == "normals":
            np.random.standard_normal(3)
        elif what in ("seed0", "seed7"):
            np.random.seed(int(what[4:]))
        elif what == "state":
            np.random.set_state(other)
        elif what == "bit_generator":
            np.random.set_bit_generator(np.random.MT19937(11))

    try:
        np.random.seed(5)
        for what in before:
            act(what)
        saved = numpy_rng.get()
        assert numpy_rng.unchanged(saved) == (not saved["has_gauss"])  # untouched: told without a read
        for what in between:
            act(what)
        if numpy_rng.unchanged(saved):
            assert _same_state(np.random.get_state(legacy=False), saved), (before, between)
        if between == ["nothing"] and not saved["has_gauss"]:
            assert numpy_rng.unchanged(saved)
        numpy_rng.set(saved)
        assert _same_state(np.random.get_state(legacy=False), saved)
    finally:
        np.random.set_bit_generator(bit_generator)
        np.random.set_state(outer)


def _plain(x: Any) -> Any:
    return x


def _no_args() -> None:
    return None


def _star(*a: Any) -> Any:
    return a


def _keywords(**k: Any) -> Any:
    return k


def _keyword_only(*, k: Any) -> Any:
    return k


def _defaulted(x: Any = 1) -> Any:
    return x


def _positional_only(x: Any, /) -> Any:
    return x


@functools.wraps(_plain)
def _wrapped_nothing() -> None:
    return None


class _Holder:
    def method(self) -> None:
        return None

    def method_of_one(self, x: Any) -> Any:
        return x


def _by_signature(fn: Any) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY)
    return any(p.kind in (*kinds, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in sig.parameters.values())


@pytest.mark.parametrize(
    "fn",
    [
        _plain,
        _no_args,
        _star,
        _keywords,
        _keyword_only,
        _defaulted,
        _positional_only,
        _wrapped_nothing,
        lambda: 0,
        lambda p: p,
        _Holder().method,
        _Holder().method_of_one,
        functools.partial(_plain, 1),
        print,
    ],
)
def test_takes_argument_agrees_with_the_signature(fn: Any) -> None:
    assert takes_argument(fn) == _by_signature(fn)


class _OneOutputTarget:
    """A target of one projection, ``sum(x)``, counting its evaluations."""

    def __init__(self, x0: np.ndarray) -> None:
        from gradcheck_core.adapters import get_adapter

        self.flat = get_adapter("numpy").flatten({"x": x0})
        self.rngs: list[Any] = []
        self.calls = 0

    def evaluate(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.array([float(np.sum(x)) + self.calls * 1e-3])  # each call tells itself apart


def test_one_output_evaluates_every_call_and_reads_prefetched_points() -> None:
    x0 = np.arange(3.0)
    target = _OneOutputTarget(x0)
    shared = SharedOutputs(target, 1, draws=False)
    first, again = shared.value(0, x0), shared.value(0, x0)
    assert target.calls == 2 and first != again  # a repeat is a new evaluation
    moved = x0 + np.array([1.0, 0.0, 0.0])
    shared.prefetch(moved[None, :])
    assert target.calls == 3
    assert shared.value(0, moved) == pytest.approx(4.0 + 3e-3)  # the prefetched value, read
    assert target.calls == 3
    assert shared.value(0, moved) == pytest.approx(4.0 + 4e-3)  # a repeat there: evaluated
    assert shared.value(0, x0) == pytest.approx(3.0 + 5e-3)
    assert target.calls == 5 and shared.evaluations == 5


@pytest.mark.parametrize("agree", [True, False])
def test_the_first_vectorised_rows_are_tried_against_the_value_at_x0(agree: bool) -> None:
    x0 = np.arange(3.0)
    target = _OneOutputTarget(x0)
    batches: list[np.ndarray] = []

    def rows(points: np.ndarray) -> np.ndarray:
        batches.append(points.copy())
        out = points.sum(axis=1, keepdims=True) + (0.0 if agree else 0.5)
        if agree:  # the value the plain evaluation at x0 gave, with its own call's mark
            out[0] = 3.0 + 1e-3
        return out

    shared = SharedOutputs(target, 1, rows=rows, draws=False)
    assert shared.value(0, x0) == pytest.approx(3.0 + 1e-3)
    points = x0 + np.eye(3)
    values = shared.batch(0, points)
    np.testing.assert_array_equal(batches[0][0], x0)  # x0 went first, beside the rows asked for
    np.testing.assert_array_equal(batches[0][1:], points)
    if agree:
        assert shared.rows_work is True and target.calls == 1  # no plain evaluation of a row
        np.testing.assert_allclose(values, points.sum(axis=1))
        assert shared.evaluations == 1 + 3 + 1  # x0, the rows, and x0 again as a row
    else:
        assert shared.rows_work is False and target.calls == 4  # the rows evaluated one by one
        np.testing.assert_allclose(values, points.sum(axis=1) + 1e-3 * np.arange(2, 5))
    shared.batch(0, points)
    assert len(batches) == (2 if agree else 1)


class _TwoOutputTarget(_OneOutputTarget):
    def evaluate(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.array([float(np.sum(x)), float(np.sum(x**2))]) + self.calls * 1e-3


@pytest.mark.parametrize("k", [1, 2])
def test_values_known_at_x0_are_read_in_order_before_fn_is_called_again(k: int) -> None:
    """A value from a call made before, then the agreeing vectorised row at x0, then new calls."""
    x0 = np.arange(3.0)
    target = _OneOutputTarget(x0) if k == 1 else _TwoOutputTarget(x0)
    marks = np.array([0.25, 0.5][:k])

    def plain(x: np.ndarray) -> np.ndarray:
        return np.array([float(np.sum(x)), float(np.sum(x**2))])[:k]

    def rows(points: np.ndarray) -> np.ndarray:
        out = np.array([plain(p) for p in points])
        out[0] += marks  # x0's row: the seeded value, to round-off
        return out

    shared = SharedOutputs(target, k, rows=rows, draws=False)
    shared.seed_x0(plain(x0) + marks)
    for j in range(k):
        assert shared.value(j, x0) == pytest.approx(plain(x0)[j] + marks[j])  # the seeded value
    assert target.calls == 0 and shared.evaluations == 1
    points = x0 + np.eye(3)
    np.testing.assert_allclose(shared.batch(0, points), [plain(p)[0] for p in points])
    assert shared.rows_work is True
    for j in range(k):  # a repeat: x0's vectorised row
        assert shared.value(j, x0) == pytest.approx(plain(x0)[j] + marks[j])
    assert target.calls == 0
    for j in range(k):  # the next repeat: a new call (each output reads the same one)
        assert shared.value(j, x0) == pytest.approx(plain(x0)[j] + 1e-3)
    assert target.calls == 1
    assert shared.evaluations == 1 + 1 + 3 + 1  # the seeded value, x0 and the rows, the repeat


def test_values_known_at_x0_move_to_the_store_when_points_are_prefetched() -> None:
    x0 = np.arange(3.0)
    target = _OneOutputTarget(x0)
    shared = SharedOutputs(target, 1, draws=False)
    shared.seed_x0(np.array([7.0]))
    shared.prefetch((x0 + np.eye(3))[:1])
    assert target.calls == 1
    assert shared.value(0, x0) == 7.0  # read from the store now
    assert shared.value(0, x0) == pytest.approx(3.0 + 2e-3)  # then a new call
    assert target.calls == 2


# -- torch ------------------------------------------------------------------------


def _torch() -> Any:
    return pytest.importorskip("torch")


def test_torch_outputs_and_reasons_come_from_one_call() -> None:
    torch = _torch()
    from gradcheck_core.adapters.torch.adapter import ADAPTER

    calls = []

    def fn(x: Any) -> Any:
        calls.append(1)
        return torch.sin(x), x.detach() * 2, (x > 0).long()

    x = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    memo: dict[str, Any] = {}
    outputs, reasons = ADAPTER.call_and_reasons(fn, [x], memo=memo)
    assert len(calls) == 1
    assert reasons == ADAPTER.nondifferentiable_outputs(fn, [x])
    assert reasons[0] is None and reasons[1] is not None and reasons[2] is not None
    for got, want in zip(outputs, ADAPTER.call(fn, [x])):
        np.testing.assert_array_equal(got, want)
    assert memo["promotion"].needed is False  # nothing narrow met: the mode is not needed


def test_torch_vjps_are_taken_through_the_first_calls_graph() -> None:
    torch = _torch()
    from gradcheck_core.adapters.base import FIRST_CALL
    from gradcheck_core.adapters.torch.adapter import ADAPTER

    calls = []

    def fn(x: Any) -> Any:
        calls.append(1)
        return torch.sin(x), x**2

    x = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    u = [np.arange(5.0), np.ones(5)]
    plain = ADAPTER.vjp(fn, [x], u)
    memo: dict[str, Any] = {}
    ADAPTER.call_and_reasons(fn, [x], memo=memo)
    calls.clear()
    for cotangents in (u, [u[0], None], u):  # the graph is kept for the next product
        got = ADAPTER.vjp(fn, [x], cotangents, memo=memo)
        want = plain if cotangents is u else ADAPTER.vjp(fn, [x], cotangents)
        np.testing.assert_array_equal(got[0], want[0])
    assert len(calls) == 1  # only the VJP without the memo called fn
    memo.pop(FIRST_CALL)
    ADAPTER.vjp(fn, [x], u, memo=memo)
    assert len(calls) == 2  # without the first call's graph, fn is called again


def test_a_small_torch_check_calls_fn_at_x0_once_more_than_its_first_call() -> None:
    """The first call is the first evaluation and the JVP, the vectorised row at x0 the first repeat."""
    torch = _torch()
    from torch._C._functorch import is_batchedtensor

    x = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64)
    at_x0 = []  # whether each unbatched call at x0 carried a forward-mode tangent

    def fn(v: Any) -> Any:
        if not is_batchedtensor(v) and torch.equal(v.detach(), x):
            at_x0.append(torch.autograd.forward_ad.unpack_dual(v).tangent is not None)
        return torch.sin(v)

    report = gc.check_function(fn, x)
    assert report.verdict == "pass"
    assert at_x0 == [True, False]


def test_a_random_torch_function_without_forward_mode_is_called_again_from_the_same_draws() -> None:
    """The first call tries forward mode; where fn has none, the plain call sees the same random draws."""
    torch = _torch()

    class Noisy(torch.autograd.Function):  # scales by a random draw; no jvp staticmethod
        @staticmethod
        def forward(ctx: Any, v: Any) -> Any:
            s = 1 + torch.rand(())
            ctx.save_for_backward(s)
            return v * s

        @staticmethod
        def backward(ctx: Any, g: Any) -> Any:
            (s,) = ctx.saved_tensors
            return g * s

    before = _states()
    report = gc.check_function(Noisy.apply, torch.linspace(-1.0, 1.0, 6, dtype=torch.float64))
    kinds = {f.kind for f in report.findings}
    assert report.verdict == "pass", report.findings
    assert "no_forward_mode" in kinds and "nondeterministic" not in kinds
    assert _same_states(before, _states())


@pytest.mark.parametrize("outputs", [1, 2])
def test_a_torch_function_that_changes_between_calls_is_still_found_nondeterministic(outputs: int) -> None:
    torch = _torch()
    calls = [0]

    def fn(v: Any) -> Any:
        calls[0] += 1
        y = torch.sin(v) * (1 + 1e-7 * calls[0])
        return y if outputs == 1 else (y, v.sum() * (1 + 1e-7 * calls[0]))

    report = gc.check_function(fn, torch.linspace(-1.0, 1.0, 6, dtype=torch.float64))
    assert report.verdict == "inconclusive"
    assert "nondeterministic" in {f.kind for f in report.findings}


def _states() -> tuple[Any, Any, Any]:
    torch = _torch()
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _same_states(a: tuple[Any, Any, Any], b: tuple[Any, Any, Any]) -> bool:
    torch = _torch()
    return bool(torch.equal(a[0], b[0])) and _same_state(a[1], b[1]) and a[2] == b[2]


@pytest.mark.parametrize("draws", [False, True])
def test_check_function_leaves_every_generator_as_it_found_it(draws: bool) -> None:
    torch = _torch()

    def fn(x: Any) -> Any:
        if draws:
            np.random.random()
            random.random()
            return torch.nn.functional.dropout(x, 0.5, training=True) + torch.sin(x)
        return torch.sin(x)

    x = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64)
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    before = _states()
    report = gc.check_function(fn, x)
    assert report.verdict == "pass"
    assert _same_states(before, _states())


def test_generators_are_put_back_after_fn_raises_mid_check() -> None:
    torch = _torch()
    calls = []

    def fn(x: Any) -> Any:
        calls.append(1)
        torch.rand(3)
        np.random.random()
        if len(calls) > 4:  # inside the sweep
            raise ValueError("boom")
        return torch.sin(x)

    x = torch.linspace(-1.0, 1.0, 4, dtype=torch.float64)
    before = _states()
    depth = torch._C._len_torch_function_stack()
    with pytest.raises(ValueError, match="boom"):
        gc.check_function(fn, x)
    assert _same_states(before, _states())
    assert torch._C._len_torch_function_stack() == depth
    assert torch.get_default_dtype() == torch.float32


def test_torch_target_replays_and_restores_the_states_it_is_given() -> None:
    torch = _torch()
    from gradcheck_core.adapters.torch.adapter import ADAPTER

    torch.manual_seed(5)
    start = torch.get_rng_state()
    torch.rand(4)  # the generator moves on before the target opens
    values = {"torch": start, "numpy.random": np.random.get_state(), "random": random.getstate()}
    x = torch.zeros(3, dtype=torch.float64)
    with ADAPTER.target(lambda p: p["x"].sum(), {"x": x}, rng_values=values) as target:
        assert target.worker.states[0] is start
        torch.rand(2)
    assert torch.equal(torch.get_rng_state(), start)  # put back to the given state, not the one at open


def test_a_captured_float32_tensor_is_still_widened_in_every_evaluation() -> None:
    torch = _torch()
    w = torch.linspace(0.1, 0.9, 6, dtype=torch.float32)

    def fn(x: Any) -> Any:
        return torch.sin(x * w) + torch.tensor(0.1) * x  # a float32 constant and a default-dtype one

    x = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64)
    report = gc.check_function(fn, x)
    assert report.verdict == "pass"
    assert not [f for f in report.findings if f.kind == "low_precision"]
    assert report.noise < 1e-12  # float64 round-off: every evaluation ran in float64


def test_a_wrong_backward_still_fails_on_a_small_input() -> None:
    torch = _torch()

    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any) -> Any:
            ctx.save_for_backward(x)
            return torch.sin(x)

        @staticmethod
        def backward(ctx: Any, g: Any) -> Any:
            (x,) = ctx.saved_tensors
            return g * torch.cos(x) * 1.01

    x = torch.linspace(-1.0, 1.0, 10, dtype=torch.float64)
    report = gc.check_function(Wrong.apply, x)
    assert report.verdict == "fail"
    assert any(f.block == "input0->output0" for f in report.findings)
    assert any(b.name == "input0->output0 (jvp)" for b in report.blocks) or any(
        f.kind == "no_forward_mode" for f in report.findings
    )


def test_a_backward_that_makes_a_float32_constant_still_passes() -> None:
    torch = _torch()
    dtypes = []

    class Scaled(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any) -> Any:
            ctx.save_for_backward(x)
            return 0.1 * x + torch.sin(x)

        @staticmethod
        def backward(ctx: Any, g: Any) -> Any:
            (x,) = ctx.saved_tensors
            c = torch.tensor(0.1)  # no dtype: the default one, as under any function mode
            dtypes.append(c.dtype)
            return g * (c + torch.cos(x))

    x = torch.linspace(-1.0, 1.0, 8, dtype=torch.float64)
    report = gc.check_function(Scaled.apply, x)
    assert dtypes and set(dtypes) == {torch.float32}  # the backward ran outside the float64 mode
    assert report.verdict == "pass", report
    vjp_block = next(b for b in report.blocks if b.name == "input0->output0")
    assert 0 < vjp_block.rel_error < 1e-7  # float32 rounding of 0.1, far inside rtol
