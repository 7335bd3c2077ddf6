"""The counted loss's loop over one-coordinate moves gives what evaluating each point with ``fun(x)`` gives."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradcheck_core as gc
from gradcheck_core import differences as fd
from gradcheck_core import interrupts
from gradcheck_core.counted_loss import LossFunction, prepared
from gradcheck_core.errors import InputError
from gradcheck_core.options import Options

RNG = np.random.default_rng(3)
X = RNG.standard_normal((4, 5))


def _params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"W": rng.standard_normal((5, 3)), "b": rng.standard_normal(3)}


def _tanh_layer(x: np.ndarray) -> tuple[Any, Any]:
    """``sum(tanh(x W + b)^2)`` and its gradient, as functions of ``p = {"W", "b"}``."""

    def value(p: dict[str, np.ndarray]) -> float:
        return float(np.sum(np.tanh(x @ p["W"] + p["b"]) ** 2))

    def grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t = np.tanh(x @ p["W"] + p["b"])
        d = 2 * t * (1 - t * t)
        return {"W": x.T @ d, "b": d.sum(0)}

    return value, grad


_value, _grad = _tanh_layer(X)


def _moves(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every coordinate twice, moved up then down by steps of different sizes."""
    idx = np.concatenate([np.arange(n), np.arange(n)[::-1]])
    shift = np.concatenate([np.linspace(1e-6, 3e-3, n), -np.linspace(2e-5, 1e-2, n)])
    return idx, shift


def _one_by_one(fun: LossFunction, x0: np.ndarray, idx: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The plain loop: each point built as a vector and evaluated with ``fun(x)``."""
    out = np.empty(len(idx))
    for k, (i, s) in enumerate(zip(idx.tolist(), shift.tolist())):
        x = x0.copy()
        x[i] = x[i] + s
        out[k] = fun(x)
    return out


def _both(loss: Any, params: Any) -> tuple[np.ndarray, int, np.ndarray, int]:
    """``moves`` and the plain loop on the same loss: values and evaluations of each."""
    with prepared(loss, params, Options()) as (_, _target, fun):
        x0 = fun.flat.x0
        fun(x0)  # the first evaluation learns what the loss draws and returns
        idx, shift = _moves(fun.flat.n)
        before = fun.nfev
        fast = fun.moves(x0, idx, shift)
        assert fast is not None
        fast_nfev = fun.nfev - before
        before = fun.nfev
        plain = _one_by_one(fun, x0, idx, shift)
        return fast, fast_nfev, plain, fun.nfev - before


def test_moves_gives_the_plain_loops_values_bit_for_bit_and_counts_each_evaluation() -> None:
    fast, fast_nfev, plain, plain_nfev = _both(_value, _params())
    assert fast.tobytes() == plain.tobytes()
    assert fast_nfev == plain_nfev == len(fast)


@pytest.mark.parametrize(
    "params",
    [
        [np.linspace(-1, 1, 6).reshape(2, 3), np.array(0.5), np.array([0.1, -0.2])],
        (np.linspace(0, 1, 4), {"inner": np.ones((2, 2, 2))}),
        {"b": np.arange(3.0), "a": np.arange(6.0).reshape(3, 2)},
        np.linspace(-2, 2, 7).reshape(7, 1),
        {"w": np.array([0.3, 0.4]), "scale": 2.0},  # a Python float: not views of arrays
        {"w": np.linspace(0.1, 0.9, 5, dtype=np.float32)},
    ],
    ids=["list", "nested", "dict", "one array", "float leaf", "float32"],
)
def test_the_loss_sees_the_same_structure_and_numbers_as_through_evaluate(params: Any) -> None:
    seen: list[Any] = []

    def loss(p: Any) -> float:
        # what the loss receives, as plain data: types, shapes, dtypes and bytes
        seen.append(_describe(p))
        return float(sum(np.sum(np.asarray(v) ** 2) for v in _leaves(p)))

    with prepared(loss, params, Options()) as (_, target, fun):
        x0 = fun.flat.x0
        fun(x0)
        for i in range(fun.flat.n):
            v = float(x0[i] + 0.25)
            x = x0.copy()
            x[i] = v
            seen.clear()
            moved = target.evaluate_moved(i, v)
            plain = target.evaluate(x)
            assert seen[0] == seen[1]
            assert moved == plain
        idx, shift = _moves(fun.flat.n)
        fast = fun.moves(x0, idx, shift)
        assert fast is not None
        assert fast.tobytes() == _one_by_one(fun, x0, idx, shift).tobytes()


@pytest.mark.parametrize(
    "params",
    [
        {"b": np.arange(3.0), "a": np.arange(6.0).reshape(3, 2)},
        np.linspace(-2, 2, 7).reshape(7, 1),
        {"w": np.array([0.3, 0.4]), "scale": 2.0},
        {"w": np.linspace(0.1, 0.9, 5, dtype=np.float32)},
    ],
    ids=["dict", "one array", "float leaf", "float32"],
)
def test_a_move_along_a_block_is_the_point_evaluate_gets_and_leaves_x0_alone(params: Any) -> None:
    """evaluate_along builds the loss's own point, with the sums numpy's x0 + s * w gives."""
    seen: list[Any] = []

    def loss(p: Any) -> float:
        seen.append(_describe(p))
        value = float(sum(np.sum(np.asarray(v) ** 3) for v in _leaves(p)))
        for v in _leaves(p):  # a loss that writes into what it was given
            if isinstance(v, np.ndarray):
                v[...] = 7.0
        return value

    with prepared(loss, params, Options()) as (_, target, fun):
        x0 = fun.flat.x0
        before = x0.copy()
        rng = np.random.default_rng(3)
        for lo, hi in [(0, fun.flat.n), (1, fun.flat.n), (0, 1)]:
            for dtype in (np.float64, np.float32):
                w = rng.standard_normal(hi - lo).astype(dtype)
                x = x0.copy()
                x[lo:hi] = x0[lo:hi] + fd.scaled(w, 1e-3 / 3)
                seen.clear()
                along = target.evaluate_along(slice(lo, hi), w, 1e-3 / 3)
                plain = target.evaluate(x)
                assert seen[0] == seen[1]
                assert along == plain
                assert x0.tobytes() == before.tobytes()


@settings(max_examples=20, deadline=None)
@given(size=st.integers(1, 3 * fd._CHUNK + 7), seed=st.integers(0, 2**32 - 1), long=st.booleans())
def test_adding_a_scaled_direction_in_chunks_gives_the_bits_of_one_sum(
    size: int, seed: int, long: bool
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(size) * 10.0 ** rng.uniform(-3, 3, size)
    w = rng.standard_normal(size).astype(np.float32 if long else np.float64)
    s = float(10.0 ** rng.uniform(-8, 0))
    want = x + fd.scaled(w, s)
    buffer = fd.add_scaled(x, w, s)
    assert x.tobytes() == want.tobytes()
    assert buffer is None or buffer.size <= fd._CHUNK
    again = want - fd.scaled(w, s)  # a buffer handed back in is reused
    assert fd.add_scaled(again, w, s, buffer) is buffer
    assert again.tobytes() == (want - fd.scaled(w, s) + fd.scaled(w, s)).tobytes()


def _leaves(p: Any) -> list[Any]:
    if isinstance(p, dict):
        return [leaf for v in p.values() for leaf in _leaves(v)]
    if isinstance(p, (list, tuple)):
        return [leaf for v in p for leaf in _leaves(v)]
    return [p]


def _describe(p: Any) -> Any:
    if isinstance(p, dict):
        return ("dict", [(k, _describe(v)) for k, v in p.items()])
    if isinstance(p, (list, tuple)):
        return (type(p).__name__, [_describe(v) for v in p])
    if isinstance(p, np.ndarray):
        return ("array", p.shape, p.dtype.str, p.tobytes(), p.flags.writeable)
    return (type(p).__name__, repr(p))


def test_a_loss_that_writes_into_its_argument_does_not_change_the_next_point() -> None:
    def scribbling(p: dict[str, np.ndarray]) -> float:
        value = _value(p)
        p["W"][...] = 1e6
        p["b"] += 3.0
        return value

    fast, _, plain, _ = _both(scribbling, _params())
    clean, _, _, _ = _both(_value, _params())
    assert fast.tobytes() == plain.tobytes() == clean.tobytes()


def test_each_evaluation_gets_its_own_arrays() -> None:
    kept: list[dict[str, np.ndarray]] = []

    def keeping(p: dict[str, np.ndarray]) -> float:
        kept.append(p)
        return _value(p)

    with prepared(keeping, _params(), Options()) as (_, _target, fun):
        x0 = fun.flat.x0
        fun(x0)
        idx, shift = _moves(fun.flat.n)
        kept.clear()
        assert fun.moves(x0, idx, shift) is not None
        # every point the loss was given is still the point it was given
        for p, i, s in zip(kept, idx.tolist(), shift.tolist()):
            x = x0.copy()
            x[i] = x[i] + s
            assert np.concatenate([p["W"].ravel(), p["b"]]).tobytes() == x.tobytes()


def test_a_loss_that_draws_from_global_generators_sees_the_same_draws_every_time() -> None:
    def dropout(p: dict[str, np.ndarray]) -> float:
        mask = np.random.rand(3) > 0.4
        return float(np.sum((np.tanh(X @ p["W"] + p["b"]) * mask) ** 2)) + 1e-3 * random.random()

    np.random.seed(7)
    random.seed(7)
    fast, _, plain, _ = _both(dropout, _params())
    assert fast.tobytes() == plain.tobytes()
    # the draws were replayed: without them the values would differ from point to point
    with prepared(dropout, _params(), Options()) as (_, _target, fun):
        fun(fun.flat.x0)
        assert fun._active
        again = fun.moves(fun.flat.x0, np.zeros(3, dtype=np.int64), np.zeros(3))
        assert again is not None
        assert len(set(again.tolist())) == 1


@pytest.mark.parametrize("output", ["float32", "0-d array", "1-element array"])
def test_other_outputs_convert_as_they_do_one_by_one(output: str) -> None:
    def loss(p: dict[str, np.ndarray]) -> Any:
        value = _value(p)
        if output == "float32":
            return np.float32(value)
        if output == "0-d array":
            return np.array(value)
        return np.array([value])

    fast, fast_nfev, plain, plain_nfev = _both(loss, _params())
    assert fast.tobytes() == plain.tobytes()
    assert fast_nfev == plain_nfev


def test_a_loss_without_arguments_moves_its_arrays_in_place_and_puts_them_back() -> None:
    params = _params()
    saved = {k: v.copy() for k, v in params.items()}

    def loss() -> float:
        return _value(params)

    fast, fast_nfev, plain, plain_nfev = _both(loss, params)
    assert fast.tobytes() == plain.tobytes()
    assert fast_nfev == plain_nfev
    assert all(params[k].tobytes() == saved[k].tobytes() for k in params)


def _edge(limit: float, kind: Any = float) -> Any:
    """A loss that is infinite once ``W[1, 2]`` is above ``limit``."""

    def loss(p: dict[str, np.ndarray]) -> Any:
        if p["W"][1, 2] > limit:
            return kind("inf")
        return kind(_value(p))

    return loss


@pytest.mark.parametrize("kind", [float, np.float64, np.float32])
def test_a_non_finite_value_at_a_moved_coordinate_raises_the_same_error(kind: Any) -> None:
    params = _params()
    loss = _edge(float(params["W"][1, 2]), kind)
    idx = np.array([0, 5, 9])  # W[1, 2] is entry 5
    shift = np.array([1e-4, 1e-4, 1e-4])
    messages = []
    counts = []
    for fast in (True, False):
        with prepared(loss, params, Options()) as (_, _target, fun):
            fun(fun.flat.x0)
            before = fun.nfev
            with pytest.raises(InputError) as info:
                if fast:
                    fun.moves(fun.flat.x0, idx, shift)
                else:
                    _one_by_one(fun, fun.flat.x0, idx, shift)
            messages.append(str(info.value))
            counts.append(fun.nfev - before)
    assert messages[0] == messages[1]
    assert "W[1, 2] moved by 0.0001" in messages[0]
    assert counts == [2, 2]  # the evaluation that gave inf counts, the one after it never ran


def test_a_non_finite_value_is_nan_while_the_sweep_tolerates_it() -> None:
    params = _params()
    loss = _edge(float(params["W"][1, 2]))
    with prepared(loss, params, Options()) as (_, _target, fun):
        fun(fun.flat.x0)
        fun.tolerate = True
        values = fun.moves(fun.flat.x0, np.array([0, 5, 9]), np.array([1e-4, 1e-4, 1e-4]))
        assert values is not None
        assert np.isnan(values).tolist() == [False, True, False]
        assert fun.nfev == 4


def test_an_exception_of_the_loss_leaves_the_count_of_the_evaluations_that_returned() -> None:
    calls = [0]

    def failing(p: dict[str, np.ndarray]) -> float:
        calls[0] += 1
        if calls[0] == 5:
            raise ValueError("broken")
        return _value(p)

    with prepared(failing, _params(), Options()) as (_, _target, fun):
        fun(fun.flat.x0)
        with pytest.raises(ValueError, match="broken"):
            fun.moves(fun.flat.x0, np.arange(10), np.full(10, 1e-4))
        assert fun.nfev == 4  # the first value and three moves returned


def test_a_pending_interrupt_stops_the_loop_before_the_next_evaluation() -> None:
    calls = [0]

    def loss(p: dict[str, np.ndarray]) -> float:
        calls[0] += 1
        if calls[0] == 4:
            # what the check's SIGINT handler does when Ctrl-C lands in the library's code
            interrupts._state.pending = True
        return _value(p)

    with interrupts.interrupts_deferred(), prepared(loss, _params(), Options()) as (_, _target, fun):
        fun(fun.flat.x0)
        with pytest.raises(KeyboardInterrupt):
            fun.moves(fun.flat.x0, np.arange(18), np.full(18, 1e-4))
        assert calls[0] == 4
        assert fun.nfev == 4
    assert not interrupts._state.pending


@pytest.mark.parametrize("seconds", [1e-7, 1e-3, 0.05])
def test_progress_ticks_add_up_to_every_evaluation(seconds: float) -> None:
    ticks: list[int] = []
    with prepared(_value, _params(), Options()) as (_, _target, fun):
        fun(fun.flat.x0)
        fun.eval_seconds = seconds  # how long an evaluation is taken to be
        idx = np.arange(18).repeat(10)
        values = fun.moves(fun.flat.x0, idx, np.full(len(idx), 1e-4), ticks.append)
        assert values is not None
    assert sum(ticks) == len(idx)
    assert max(ticks) <= 64
    if seconds == 1e-3:  # a tick after about 10 ms of evaluations
        assert ticks == [10] * 18
    if seconds == 0.05:  # slow evaluations: a tick after each one
        assert ticks == [1] * len(idx)


def test_before_the_first_evaluation_moves_leaves_the_points_to_the_plain_loop() -> None:
    with prepared(_value, _params(), Options()) as (_, _target, fun):
        assert fun.moves(fun.flat.x0, np.arange(3), np.full(3, 1e-4)) is None
        assert fun.nfev == 0


def test_moves_from_another_point_builds_the_points_from_that_point() -> None:
    with prepared(_value, _params(), Options()) as (_, _target, fun):
        fun(fun.flat.x0)
        other = fun.flat.x0 + 0.5
        idx, shift = _moves(fun.flat.n)
        fast = fun.moves(other, idx, shift)
        assert fast is not None
        assert fast.tobytes() == _one_by_one(fun, other, idx, shift).tobytes()


@pytest.mark.parametrize("method", ["central", "forward", "richardson"])
def test_a_full_check_gives_the_same_report_with_and_without_the_loop(method: str, monkeypatch: Any) -> None:
    rng = np.random.default_rng(1)
    # 300 parameters: central differences take one side at a time, with progress ticks
    params = {"W": rng.standard_normal((60, 5)), "b": rng.standard_normal(5)}
    x = rng.standard_normal((3, 60))

    def loss(p: dict[str, np.ndarray]) -> float:
        return float(np.sum(np.tanh(x @ p["W"] + p["b"]) ** 2))

    def grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t = np.tanh(x @ p["W"] + p["b"])
        d = 2 * t * (1 - t * t)
        g = {"W": x.T @ d, "b": d.sum(0)}
        g["W"][7, 2] *= 1.01  # one wrong entry, for the refinement too
        return g

    fast = gc.check(loss, params, grad, mode="full", method=method)
    monkeypatch.setattr(LossFunction, "moves", lambda self, *args: None)
    plain = gc.check(loss, params, grad, mode="full", method=method)
    assert fast.verdict == plain.verdict == "fail"
    assert fast.nfev == plain.nfev
    for a, b in zip(fast.blocks, plain.blocks):
        assert a.numeric.tobytes() == b.numeric.tobytes()
        assert a.tolerance.tobytes() == b.tolerance.tobytes()
        assert a.n_bad == b.n_bad


def test_the_sweep_uses_the_loop_where_the_loss_offers_it(monkeypatch: Any) -> None:
    used = []
    original = LossFunction.moves

    def spy(self: LossFunction, *args: Any) -> Any:
        values = original(self, *args)
        used.append(values is not None)
        return values

    monkeypatch.setattr(LossFunction, "moves", spy)
    report = gc.check(_value, _params(), _grad, mode="full")
    assert used and all(used)
    assert report.verdict == "pass"
    assert report.nfev > 2 * 18


def test_a_plain_function_still_takes_the_plain_loop() -> None:
    x0 = np.linspace(-1.0, 1.0, 8)
    idx = np.arange(8)
    shift = np.full(8, 1e-3)
    values = fd._evaluate_shifted(lambda x: float(np.sum(np.sin(x))), None, x0, idx, shift, None)
    expected = [float(np.sum(np.sin(np.where(np.arange(8) == i, x0[i] + 1e-3, x0)))) for i in range(8)]
    assert values.tolist() == expected


def test_the_progress_bar_of_a_full_check_reaches_its_total(capsys: Any) -> None:
    rng = np.random.default_rng(2)
    params = {"W": rng.standard_normal((60, 5)), "b": rng.standard_normal(5)}  # > 256: one side at a time
    loss, grad = _tanh_layer(rng.standard_normal((3, 60)))

    assert gc.check(loss, params, grad, mode="full", progress=True).verdict == "pass"
    frames = capsys.readouterr().err.split("\r")
    assert "305/305 coordinates" in frames[-1]
