"""Fast mode's moved points: evaluated in place on one block, exactly as the full vector would be."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradcheck_core as gc
from gradcheck_core.counted_loss import LossFunction, prepared
from gradcheck_core.options import Options

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch

X = torch.linspace(-1.0, 1.0, 15).reshape(5, 3)


def _direction(rng: np.random.Generator, size: int, dtype: Any) -> np.ndarray:
    """A random direction in ``dtype``; int8 as random_direction keeps a long one (normal draws times 24)."""
    z = rng.standard_normal(size)
    if dtype == np.int8:
        return np.clip(np.rint(z * 24), -127, 127).astype(np.int8)
    return z.astype(dtype)


def _net(dtype: torch.dtype = torch.float32) -> Any:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).to(dtype)


def _losses(net: Any) -> dict[str, Any]:
    def module_loss() -> Any:
        return net(X).pow(2).sum()

    def functional(p: Any) -> Any:
        return torch.func.functional_call(net, p, (X,)).pow(2).sum()

    def of_module(m: Any) -> Any:
        return m(X).pow(2).sum()

    return {"loss()": module_loss, "loss(p)": functional, "loss(m)": of_module}


def _params(net: Any, kind: str) -> Any:
    """What the loss is checked over: the module, or a dict of its tensors for ``loss(p)``."""
    return {name: p.detach() for name, p in net.named_parameters()} if kind == "loss(p)" else net


def _bits(net: Any) -> list[bytes]:
    return [p.detach().numpy().tobytes() for p in net.parameters()]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    kind=st.sampled_from(["loss()", "loss(p)", "loss(m)"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    data=st.data(),
)
def test_a_moved_point_is_the_full_vector_point(kind: str, dtype: torch.dtype, data: Any) -> None:
    net = _net(dtype)
    before = _bits(net)
    loss = _losses(net)[kind]
    with prepared(loss, _params(net, kind), Options()) as (_, _target, fun):
        assert fun.along is not None
        x0 = fun.flat.x0
        saved = x0.copy()
        n = fun.flat.n
        for _ in range(4):
            start = data.draw(st.integers(0, n - 1), label="start")
            stop = data.draw(st.integers(start + 1, n), label="stop")  # may span several parameters
            s = data.draw(st.floats(-1e-2, 1e-2, allow_nan=False), label="s")
            # a long direction is kept in int8 (random_direction), the noise probe's in float32:
            # moved in float64 all the same
            w_dtype = data.draw(st.sampled_from([np.float64, np.float32, np.int8]), label="w dtype")
            w = _direction(np.random.default_rng(start), stop - start, w_dtype)
            x = x0.copy()
            x[start:stop] = x[start:stop] + s * w.astype(np.float64)
            assert fun.along(slice(start, stop), w, s) == fun(x)
            assert x0.tobytes() == saved.tobytes()  # x0 is whole after every evaluation
        assert fun(x0) == fun(saved)
    assert _bits(net) == before


@pytest.mark.parametrize("kind", ["loss()", "loss(p)"])
def test_fast_mode_gives_the_same_numbers_with_and_without_moved_points(kind: str, monkeypatch: Any) -> None:
    net = _net()
    loss = _losses(net)[kind]
    fast = gc.check(loss, _params(net, kind), mode="fast", seed=3, progress=False)
    monkeypatch.setattr(LossFunction, "along", property(lambda self: None))
    plain = gc.check(loss, _params(net, kind), mode="fast", seed=3, progress=False)
    assert fast.verdict == plain.verdict == "pass"
    assert fast.nfev == plain.nfev
    for a, b in zip(fast.blocks, plain.blocks):
        assert a.name == b.name
        assert np.array_equal(a.directional_analytic, b.directional_analytic)
        assert np.array_equal(a.directional_numeric, b.directional_numeric)


def test_fast_mode_names_a_wrong_entry_through_moved_points() -> None:
    net = _net()

    def scale_one(g: Any) -> Any:
        g = g.clone()
        g.view(-1)[5] *= 1.5
        return g

    hook = net[2].weight.register_hook(scale_one)
    try:
        report = gc.check(lambda: net(X).pow(2).sum(), net, mode="fast", seed=0, progress=False)
    finally:
        hook.remove()
    failing = [b for b in report.blocks if b.verdict == "fail"]
    assert [b.name for b in failing] == ["2.weight"]
    assert tuple(failing[0].worst_index) == (1, 1)


@pytest.mark.parametrize("kind", ["loss()", "loss(p)"])
def test_a_loss_that_writes_into_its_parameters_starts_each_evaluation_from_x0(kind: str) -> None:
    net = _net(torch.float64)
    before = _bits(net)

    def module_loss() -> Any:
        out = net(X).pow(2).sum()
        with torch.no_grad():
            net[0].weight.mul_(2.0)  # written in place, after the value is taken
        return out

    def functional(p: Any) -> Any:
        out = torch.func.functional_call(net, p, (X,)).pow(2).sum()
        with torch.no_grad():
            p["0.weight"].mul_(2.0)
        return out

    loss = module_loss if kind == "loss()" else functional
    with prepared(loss, _params(net, kind), Options()) as (_, _target, fun):
        x0 = fun.flat.x0
        saved = x0.copy()
        w = np.ones(3)
        first = fun.along(slice(0, 3), w, 1e-3)
        again = fun.along(slice(0, 3), w, 1e-3)
        assert first == again
        assert fun(x0) == fun(x0)
        assert x0.tobytes() == saved.tobytes()
    assert _bits(net) == before


@pytest.mark.parametrize("kind", ["loss()", "loss(p)"])
def test_a_loss_that_raises_at_a_moved_point_leaves_x0_and_the_parameters_whole(kind: str) -> None:
    net = _net()
    before = _bits(net)
    calls = {"n": 0}
    base = _losses(net)[kind]

    def module_loss() -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise ValueError("at the third call")
        return base()

    def functional(p: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise ValueError("at the third call")
        return base(p)

    loss = module_loss if kind == "loss()" else functional
    with prepared(loss, _params(net, kind), Options()) as (_, _target, fun):
        x0 = fun.flat.x0
        saved = x0.copy()
        fun(x0)
        fun.along(slice(2, 9), np.ones(7), 0.5)
        with pytest.raises(ValueError, match="third call"):
            fun.along(slice(2, 9), np.ones(7), 0.5)
        assert x0.tobytes() == saved.tobytes()
    assert _bits(net) == before


@pytest.mark.parametrize("w_dtype", [np.float64, np.float32, np.int8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_long_block_moves_chunk_by_chunk_to_exactly_x0_plus_s_w(dtype: torch.dtype, w_dtype: Any) -> None:
    from gradcheck_core.adapters.torch import ADAPTER
    from gradcheck_core.adapters.torch.working import WorkingParameters
    from gradcheck_core.differences import _CHUNK

    g = torch.Generator().manual_seed(0)
    # a block of 2.5 chunks that starts inside the first tensor and ends inside the second
    tensors = [
        torch.randn(3 * _CHUNK // 2, generator=g, dtype=dtype),
        torch.randn(_CHUNK, 3, generator=g, dtype=dtype),
    ]
    before = [t.clone() for t in tensors]
    flat = ADAPTER.flatten(tensors)
    working = WorkingParameters(flat, [torch.float64, torch.float64], tensors)
    assert working.shares_x0
    saved = flat.x0.copy()
    start, stop = 7, 7 + 5 * _CHUNK // 2
    w = _direction(np.random.default_rng(1), stop - start, w_dtype)
    for s in (1e-3, -2.5e-7):
        expected = saved.copy()
        expected[start:stop] = w.astype(np.float64) * s + saved[start:stop]
        with working.moved(slice(start, stop), w, s) as values:
            inside = np.concatenate([v.detach().numpy().reshape(-1) for v in values])
        assert inside.tobytes() == expected.tobytes()
        assert flat.x0.tobytes() == saved.tobytes()
    assert all(torch.equal(t, b) for t, b in zip(tensors, before))
