"""The cheaper evaluation paths give the same points, values and verdicts as the plain ones."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradcheck_core as gc
from gradcheck_core.shared_outputs import _keys

torch = pytest.importorskip("torch")


class _Calls:
    """``sin(x) * x``, counting its calls (one call under vmap evaluates many points)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: Any) -> Any:
        self.calls += 1
        return torch.sin(x) * x


def test_check_function_on_torch_vectorises_the_sweep() -> None:
    fn = _Calls()
    report = gc.check_function(fn, torch.linspace(-2.0, 2.0, 200, dtype=torch.float64))
    assert report.verdict == "pass"
    assert report.nfev >= 400  # every coordinate, both sides
    assert fn.calls < report.nfev / 10, (fn.calls, report.nfev)


class _CubicWrongJvp(torch.autograd.Function):
    """``x**3`` with a right backward and a forward-mode rule that is 1.5 times too large."""

    @staticmethod
    def forward(x: Any) -> Any:
        return x**3

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.x = x

    @staticmethod
    def backward(ctx: Any, g: Any) -> Any:
        (x,) = ctx.saved_tensors
        return 3 * g * x**2

    @staticmethod
    def jvp(ctx: Any, t: Any) -> Any:
        return 4.5 * t * ctx.x**2


@pytest.mark.parametrize("options", [{}, {"sample": 3}, {"method": "richardson"}])
def test_a_wrong_forward_mode_rule_is_caught_from_the_sweep_or_by_its_own_differences(
    options: dict[str, Any],
) -> None:
    # a full sweep gives <u, J v> from its entries; a sampled one leaves it to directional differences
    x = torch.linspace(-1.0, 1.0, 8, dtype=torch.float64)
    report = gc.check_function(_CubicWrongJvp.apply, x, **options)
    verdicts = {b.name: b.verdict for b in report.blocks}
    assert verdicts == {"input0->output0": "pass", "input0->output0 (jvp)": "fail"}
    assert report.findings_of("forward_mode")


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 12),
    moves=st.lists(
        st.tuples(st.integers(0, 11), st.sampled_from([1e-6, -1e-6, 0.5, -0.0, float("nan")])),
        max_size=6,
    ),
)
def test_shared_keys_follow_the_bits_of_the_point(n: int, moves: list[tuple[int, float]]) -> None:
    x0 = np.linspace(-1.0, 1.0, n)
    x0[n // 2] = 0.0
    x = x0.copy()
    for i, value in moves:
        x[i % n] = value
    bits = x0.copy().view(np.int64)
    rows = np.stack([x0, x, x.copy()])
    k0, k1, k2 = _keys(rows, bits)
    assert k1 == k2  # the same point, the same key
    assert (k1 == k0) == bool(np.array_equal(x.view(np.int64), x0.view(np.int64)))
    # one key per point whichever way it is asked for
    assert _keys(x[None, :], bits)[0] == k1


def _net() -> Any:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()


def test_a_module_holds_its_own_tensors_after_a_sweep_and_after_an_exception() -> None:
    net = _net()
    x = torch.randn(3, 5, dtype=torch.float64)
    data = [p.data for p in net.parameters()]
    values = [p.detach().clone() for p in net.parameters()]
    calls = {"n": 0, "of": 10**9}

    def breaks_late() -> Any:
        calls["n"] += 1
        if calls["n"] > calls["of"]:
            raise ValueError("the loss's own error")
        return (net(x) ** 2).sum()

    report = gc.check(breaks_late, net, mode="full", progress=False)
    assert report.verdict == "pass"
    # (calls, not evaluations: under vmap one call evaluates many points)
    calls.update(of=calls["n"] // 2, n=0)
    with pytest.raises(ValueError, match="the loss's own error"):
        gc.check(breaks_late, net, mode="full", progress=False)
    for p, d, v in zip(net.parameters(), data, values):
        assert p.data.data_ptr() == d.data_ptr()
        assert torch.equal(p.detach(), v)


def test_a_functional_loss_gives_the_same_estimates_serially_and_in_threads() -> None:
    net = _net()
    x = torch.randn(3, 5, dtype=torch.float64)
    params = {name: p.detach() for name, p in net.named_parameters()}

    def loss(p: dict[str, Any]) -> Any:
        out = torch.func.functional_call(net, p, (x,))
        scale = 1.0 if float(out.detach().sum()) < 1e9 else 2.0  # a Python branch: no vmap
        return scale * (out**2).sum()

    serial = gc.check(loss, params, mode="full", progress=False)
    threads = gc.check(loss, params, mode="full", progress=False, executor="threads")
    assert serial.verdict == threads.verdict == "pass"
    # Threads may take the copying path where the serial check moves entries in place; torch can
    # round a product of differently laid-out tensors differently in the last bit, which a
    # difference quotient turns into about 1e-11: the estimates agree to that, not bit for bit.
    for a, b in zip(serial.blocks, threads.blocks):
        np.testing.assert_allclose(a.numeric, b.numeric, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("shape", ["dict", "list", "tuple", "nested", "array"])
def test_numpy_losses_get_their_structure_and_a_copy_of_their_own(shape: str) -> None:
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((3, 2)), rng.standard_normal(2)
    params: Any = {
        "dict": {"w": w, "b": b},
        "list": [w, b],
        "tuple": (w, b),
        "nested": {"layer": [w, {"bias": b}]},
        "array": w,
    }[shape]
    seen: list[type] = []

    def parts(p: Any) -> tuple[np.ndarray, np.ndarray]:
        if shape == "dict":
            return p["w"], p["b"]
        if shape == "nested":
            return p["layer"][0], p["layer"][1]["bias"]
        if shape == "array":
            return p, b
        return p[0], p[1]

    def loss(p: Any) -> float:
        seen.append(type(p))
        pw, pb = parts(p)
        value = float(np.sum(np.tanh(pw) @ pb))
        pw *= 3.0  # writes into its own copy: no later evaluation may see it
        return value

    def grad(p: Any) -> Any:
        pw, pb = parts(p)
        gw, gb = (1 - np.tanh(pw) ** 2) * pb, np.tanh(pw).sum(0)
        return {
            "dict": {"w": gw, "b": gb},
            "list": [gw, gb],
            "tuple": (gw, gb),
            "nested": {"layer": [gw, {"bias": gb}]},
            "array": gw,
        }[shape]

    report = gc.check(loss, params, grad, mode="full", progress=False)
    assert report.verdict == "pass"
    assert set(seen) == {type(params)}
    assert np.array_equal(w, np.random.default_rng(0).standard_normal((3, 2)))


@given(
    rows=st.integers(1, 2000),
    eval_seconds=st.one_of(st.none(), st.floats(1e-6, 10.0)),
    workers=st.one_of(st.none(), st.integers(1, 64)),
)
def test_parts_for_other_processes_keep_every_worker_busy(rows, eval_seconds, workers) -> None:
    from gradcheck_core.counted_loss import _part_count

    parts = _part_count(rows, eval_seconds, workers)
    assert 1 <= parts <= rows
    if workers is not None:
        # every worker gets as many parts as the others: none idles at the end
        assert parts == rows or parts in (workers, 2 * workers)
    else:
        assert parts <= 64


def test_parts_for_other_processes_examples() -> None:
    from gradcheck_core.counted_loss import _part_count

    assert _part_count(8, 0.015, 2) == 2  # a noise probe: one part per worker, not three parts
    assert _part_count(80, 0.0093, 2) == 2  # a short sweep: one part per worker
    assert _part_count(800, 0.0093, 2) == 4  # two parts of 1.9 s per worker: balance between them
    assert _part_count(80, 0.0093, None) == 15  # no worker count: parts of PART_SECONDS each
    assert _part_count(3, 1.0, 8) == 3
