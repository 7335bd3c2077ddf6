"""One sweep for all outputs of check_function: evaluations, verdicts and findings."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import gradcheck_core as gc

torch = pytest.importorskip("torch")


class _Counted:
    """``fn`` with k outputs ``sin((j + 1) x)``; counts its calls."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.calls = 0

    def __call__(self, x: Any) -> tuple[Any, ...]:
        self.calls += 1
        return tuple(torch.sin((j + 1) * x) for j in range(self.k))


def test_k_outputs_cost_about_one_sweep() -> None:
    x = torch.linspace(-1.0, 1.0, 40, dtype=torch.float64)
    points, calls = {}, {}
    for k in (1, 4):
        fn = _Counted(k)
        report = gc.check_function(fn, x)
        assert report.verdict == "pass"
        assert len([b for b in report.blocks if "(jvp)" not in b.name]) == k
        points[k], calls[k] = report.nfev, fn.calls
    # one sweep of 2 x 40 points (plus the point, its repeats, the noise
    # probe and the JVP's directional differences) serves every output
    assert 80 <= points[1] <= 120
    assert points[4] == points[1]
    # 4 outputs cost what 1 costs, plus their VJPs and the undefined-gradient checks
    assert calls[4] <= calls[1] + 4 * 3, calls


def test_without_vectorising_k_outputs_still_cost_one_sweep() -> None:
    x = torch.linspace(-1.0, 1.0, 30, dtype=torch.float64)
    calls = {}
    for k in (1, 3):
        fn = _Counted(k)
        # forward differences evaluate point by point
        report = gc.check_function(fn, x, method="forward")
        assert report.verdict == "pass"
        calls[k] = fn.calls
        assert report.nfev <= fn.calls
    assert calls[1] >= 30
    assert calls[3] <= calls[1] + 3 * 3, calls


class _WrongSecondOutput(torch.autograd.Function):
    """Outputs ``sin(x)`` and ``x**2``; the backward of the second is 3x instead of 2x in entry 2."""

    @staticmethod
    def forward(ctx: Any, x: Any) -> Any:
        ctx.save_for_backward(x)
        return torch.sin(x), x * x

    @staticmethod
    def backward(ctx: Any, g1: Any, g2: Any) -> Any:
        (x,) = ctx.saved_tensors
        d2 = 2 * x
        d2[2] = 3 * x[2]
        return g1 * torch.cos(x) + g2 * d2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_wrong_output_is_named_and_the_others_pass(seed: int) -> None:
    x = torch.linspace(0.5, 1.5, 6, dtype=torch.float64)
    report = gc.check_function(_WrongSecondOutput.apply, x, seed=seed, check_undefined_grad=False)
    verdicts = {b.name: b.verdict for b in report.blocks if "(jvp)" not in b.name}
    assert verdicts == {"input0->output0": "pass", "input0->output1": "fail"}
    bad = next(b for b in report.blocks if b.name == "input0->output1")
    assert bad.worst_index == (2,)
    # the same verdict and findings as a check of that output alone
    alone = gc.check_function(lambda x: _WrongSecondOutput.apply(x)[1], x, seed=seed)
    assert [b.verdict for b in alone.blocks] == ["fail"]  # no forward mode: no JVP block
    kinds = sorted(f.kind for f in report.findings if f.block == "input0->output1")
    assert kinds == sorted(f.kind for f in alone.findings if f.block == "input0->output0")


def test_numpy_outputs_with_a_handwritten_vjp_share_the_sweep() -> None:
    calls = [0]

    def fn(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls[0] += 1
        return np.tanh(x), x**3

    def vjp(us: list[np.ndarray], x: np.ndarray) -> np.ndarray:
        return us[0] * (1 - np.tanh(x) ** 2) + us[1] * 3 * x**2

    x = np.linspace(-1.0, 1.0, 25)
    report = gc.check_function(fn, x, vjp=vjp)
    assert report.verdict == "pass"
    assert [b.name for b in report.blocks] == ["input0->output0", "input0->output1"]
    assert calls[0] < 2 * 2 * 25  # one sweep, not two


def test_a_function_that_draws_random_numbers_is_replayed_not_vectorised() -> None:
    x = torch.linspace(-1.0, 1.0, 20, dtype=torch.float64)

    def fn(x: Any) -> tuple[Any, Any]:
        y = torch.nn.functional.dropout(x, p=0.5, training=True)
        return y.sin(), y * y

    torch.manual_seed(3)
    state = torch.get_rng_state()
    report = gc.check_function(fn, x)
    assert report.verdict == "pass", report
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("wrong", [False, True])
def test_vectorised_and_looped_sweeps_agree(wrong: bool) -> None:
    x = torch.linspace(0.2, 1.2, 15, dtype=torch.float64)

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any) -> Any:
            ctx.save_for_backward(x)
            return torch.exp(x) * x

        @staticmethod
        def backward(ctx: Any, g: Any) -> Any:
            (x,) = ctx.saved_tensors
            d = torch.exp(x) * (1 + x)
            if wrong:
                d = d.clone()
                d[4] *= 1.001
            return g * d

    vectorised = gc.check_function(Fn.apply, x)

    def looped(x: Any) -> Any:
        if float(x.detach().sum()) > 1e9:  # a Python branch on a value: no vmap
            return x
        return Fn.apply(x)

    plain = gc.check_function(looped, x)
    assert vectorised.verdict == plain.verdict == ("fail" if wrong else "pass")
    assert [b.verdict for b in vectorised.blocks] == [b.verdict for b in plain.blocks]
    assert sorted(f.kind for f in vectorised.findings) == sorted(f.kind for f in plain.findings)


def _vectorised_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of every vectorised call check_function makes from now on."""
    import gradcheck_core.functions as functions

    sizes: list[int] = []
    real = functions._rows_of

    def counting(*args: Any, **kwargs: Any) -> Any:
        rows = real(*args, **kwargs)
        if rows is None:
            return None

        def counted(points: np.ndarray) -> np.ndarray:
            sizes.append(len(points))
            return rows(points)

        return counted

    monkeypatch.setattr(functions, "_rows_of", counting)
    return sizes


def _same_reports(a: gc.Report, b: gc.Report) -> None:
    assert (a.verdict, a.step, a.noise, len(a.blocks)) == (b.verdict, b.step, b.noise, len(b.blocks))
    for x, y in zip(a.blocks, b.blocks):
        assert x.name == y.name and x.verdict == y.verdict and x.worst_index == y.worst_index
        assert x.numeric.tobytes() == y.numeric.tobytes()
        assert x.directional_numeric.tobytes() == y.directional_numeric.tobytes()
    assert [(f.kind, f.block) for f in a.findings] == [(f.kind, f.block) for f in b.findings]


class _WrongEntry(torch.autograd.Function):
    """``sin(x)`` whose backward is 1.5 times too large in entry 3 (its jvp is right; vmap runs it)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Any) -> Any:
        return torch.sin(x)

    @staticmethod
    def backward(ctx: Any, grad: Any) -> Any:
        (x,) = ctx.saved_tensors
        out = grad * torch.cos(x)
        out[3] = out[3] * 1.5
        return out

    @staticmethod
    def jvp(ctx: Any, tangent: Any) -> Any:
        return tangent * torch.cos(ctx.point)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.point = x


@pytest.mark.parametrize(
    "case",
    ["one output", "three outputs", "two inputs", "richardson", "wrong backward"],
)
def test_a_small_checks_sweep_evaluated_with_the_noise_probe_gives_the_same_report(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gradcheck_core.functions as functions

    g = torch.Generator().manual_seed(0)  # (a point where the noise probe chooses float64's step)
    x = torch.randn(10, dtype=torch.float64, generator=g)
    inputs: tuple[Any, ...] = (x,)
    fn: Any = torch.sin
    options: dict[str, Any] = {}
    if case == "three outputs":
        fn = _Counted(3)
    elif case == "two inputs":
        a = torch.randn(3, 4, dtype=torch.float64, generator=g)
        fn, inputs = torch.matmul, (a, torch.randn(4, 2, dtype=torch.float64, generator=g))
    elif case == "richardson":
        options["method"] = "richardson"
    elif case == "wrong backward":
        fn = _WrongEntry.apply
    sizes = _vectorised_calls(monkeypatch)
    ahead = gc.check_function(fn, *inputs, **options)
    calls_ahead = list(sizes)
    sizes.clear()
    monkeypatch.setattr(functions, "AHEAD", 0)
    plain = gc.check_function(fn, *inputs, **options)
    # one vectorised call serves the noise probe and the sweep, where two (five for Richardson) did;
    # what comes after (a closer look at a failing entry) is as it was
    sweep = 4 if case == "richardson" else 1
    assert len(sizes) > sweep, sizes
    assert calls_ahead == [sum(sizes[: 1 + sweep]), *sizes[1 + sweep :]], (calls_ahead, sizes)
    assert ahead.nfev == plain.nfev
    _same_reports(ahead, plain)
    if case == "wrong backward":
        assert ahead.verdict == "fail"
        failing = [b for b in ahead.blocks if b.verdict == "fail"]
        assert failing[0].name == "input0->output0" and failing[0].worst_index == (3,)
    else:
        assert ahead.verdict == "pass"


def test_a_step_a_little_longer_than_float64s_takes_the_points_evaluated_ahead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gradcheck_core.functions as functions

    g = torch.Generator().manual_seed(3)  # a point where the noise probe finds about 3 ulps of noise
    x = torch.randn(10, dtype=torch.float64, generator=g)
    guess = gc.differences.relative_step("central", gc.differences.EPS)
    sizes = _vectorised_calls(monkeypatch)
    report = gc.check_function(torch.sin, x)
    assert report.verdict == "pass" and report.step == guess
    assert len(sizes) == 1
    monkeypatch.setattr(functions, "AHEAD", 0)
    plain = gc.check_function(torch.sin, x)
    # the probe's own choice: longer, by less than twice
    assert guess < plain.step <= 2 * guess
    assert plain.verdict == "pass" and plain.nfev == report.nfev
    for a, b in zip(report.blocks, plain.blocks):
        np.testing.assert_allclose(a.numeric, b.numeric, rtol=1e-8)


def test_points_evaluated_ahead_at_another_step_are_counted_and_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gradcheck_core.functions as functions

    x = torch.linspace(0.5, 2.0, 12, dtype=torch.float64)

    def noisy(v: Any) -> Any:
        # round-off far above float64's: the probe chooses a step several times longer
        return torch.sin(v) + 1e-10 * torch.sin(1e9 * v)

    sizes = _vectorised_calls(monkeypatch)
    ahead = gc.check_function(noisy, x)
    calls_ahead = list(sizes)
    sizes.clear()
    monkeypatch.setattr(functions, "AHEAD", 0)
    plain = gc.check_function(noisy, x)
    assert ahead.step > 2 * gc.differences.relative_step("central", gc.differences.EPS)
    assert len(calls_ahead) == len(sizes)  # the sweep needed a call of its own
    assert ahead.nfev == plain.nfev + 2 * x.numel()  # the points guessed ahead, evaluated for nothing
    _same_reports(ahead, plain)
