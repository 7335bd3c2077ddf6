"""The finite difference engine on its own."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcheck_core import differences as fd


def rosen(x: np.ndarray) -> float:
    return float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))


def rosen_grad(x: np.ndarray) -> np.ndarray:
    g = np.zeros_like(x)
    g[:-1] = -400 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
    g[1:] += 200 * (x[1:] - x[:-1] ** 2)
    return g


@given(st.floats(-1e8, 1e8, allow_nan=False), st.floats(1e-12, 1e-2))
def test_taken_steps_are_exactly_representable(x: float, rel: float) -> None:
    h = fd.taken_steps(np.array([x]), rel)[0]
    assert (x + h) - x == h
    assert abs(h) > 0


@pytest.mark.parametrize("method,bound", [("central", 1e-8), ("forward", 1e-5), ("richardson", 1e-10)])
def test_sweep_accuracy_on_rosenbrock(method: str, bound: float) -> None:
    x = np.random.default_rng(0).uniform(-1.5, 1.5, 20)
    f0 = rosen(x)
    value, roundoff, _trunc = fd.sweep(
        rosen, x, np.arange(20), f0, method=method, rel_step=fd.relative_step(method), noise=fd.EPS * abs(f0)
    )
    g = rosen_grad(x)
    assert np.linalg.norm(value - g) / np.linalg.norm(g) < bound
    assert np.all(roundoff > 0)


def test_noise_estimate_tells_float32_from_float64() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(30)
    f64 = lambda v: float(np.sum(np.sin(v) ** 2))  # noqa: E731
    f32 = lambda v: float(np.sum(np.sin(v.astype(np.float32)) ** 2, dtype=np.float32))  # noqa: E731
    n64, k = fd.estimate_noise(f64, x, f64(x), np.random.default_rng(1))
    n32, _ = fd.estimate_noise(f32, x, f32(x), np.random.default_rng(1))
    assert k == 8
    assert n64 / abs(f64(x)) < 1e-14
    assert 1e-9 < n32 / abs(f32(x)) < 1e-5


def test_refine_sees_a_kink_and_a_smooth_point() -> None:
    relu_sum = lambda v: float(np.sum(np.maximum(v, 0)))  # noqa: E731
    x = np.array([0.0, 1.0])
    kink = fd.refine(relu_sum, x, 0, relu_sum(x), rel_step=1e-3, noise=1e-16)
    smooth = fd.refine(relu_sum, x, 1, relu_sum(x), rel_step=1e-3, noise=1e-16)
    assert not kink.smooth and {round(kink.left, 6), round(kink.right, 6)} == {0.0, 1.0}
    assert smooth.smooth and smooth.value == pytest.approx(1.0, abs=1e-9)


def test_refine_error_covers_what_the_next_step_contradicts() -> None:
    """Two levels of the step ladder estimate one derivative: a disagreement widens the error."""

    def level(value: float, error: float, smooth: bool = True) -> fd.Refined:
        return fd.Refined(value, error, smooth, value, value, 4)

    # within the smaller step's own error: nothing to widen
    assert fd._checked_against(level(1.0, 1e-9), level(1.0 + 5e-9, 1e-8)) == 1e-9
    # beyond it: the part its error cannot explain
    assert fd._checked_against(level(1.0, 1e-9), level(1.0 + 3e-8, 1e-8)) == pytest.approx(2e-8)
    # a smaller step that looks rough is no independent check: the whole gap and its error
    assert fd._checked_against(level(1.0, 1e-9), level(1.0 + 3e-8, 1e-8, smooth=False)) == pytest.approx(4e-8)


def test_directional_derivative() -> None:
    x = np.random.default_rng(2).uniform(-1, 1, 50)
    v = np.random.default_rng(3).standard_normal(50)
    value, err, nfev = fd.directional(rosen, x, v, rel_step=1e-3, noise=1e-14, f0=rosen(x))
    exact = rosen_grad(x) @ v
    assert nfev == 6
    assert abs(value - exact) <= max(err, 1e-9 * abs(exact))
    assert abs(value - exact) / abs(exact) < 1e-11


@settings(max_examples=30, deadline=None)
@given(
    size=st.integers(0, 3 * fd._CHUNK + 17),
    where=st.lists(st.floats(0, 1, exclude_max=True), max_size=6),
    kinds=st.lists(st.sampled_from([np.nan, np.inf, -np.inf]), min_size=6, max_size=6),
)
def test_non_finite_names_every_nan_and_inf_in_a_long_vector(
    size: int, where: list[float], kinds: list[float]
) -> None:
    a = np.random.default_rng(size).standard_normal(size)
    for u, bad in zip(where if size else [], kinds):
        a[int(u * size)] = bad
    found = fd.non_finite(a)
    assert found.dtype.kind == "i"
    assert found.tolist() == np.flatnonzero(~np.isfinite(a)).tolist()


def test_long_directions_are_whole_numbers_in_int8_and_move_in_float64() -> None:
    rng = np.random.default_rng(4)
    assert fd.random_direction(rng, fd.LONG_DIRECTION - 1).dtype == np.float64
    w = fd.random_direction(rng, fd.LONG_DIRECTION)
    assert w.dtype == np.int8 and w.shape == (fd.LONG_DIRECTION,)
    assert int(np.abs(w.astype(np.int16)).max()) <= 127
    assert 0.99 < float(np.std(w, dtype=np.float64)) / fd.WHOLE_SCALE < 1.01
    one, other = (fd.random_direction(np.random.default_rng(4), fd.LONG_DIRECTION) for _ in range(2))
    assert one.tobytes() == other.tobytes()  # a seed gives the same direction
    s = 1e-3 / 3
    exact = w.astype(np.float64) * s
    assert fd.scaled(w, s).tobytes() == exact.tobytes()
    out = np.empty(w.size)
    assert fd.scaled(w, s, out=out) is out and out.tobytes() == exact.tobytes()
    # the sums a move takes, chunk by chunk through the buffer, are those of x + s * w
    x = np.random.default_rng(5).uniform(-2, 2, w.size)
    moved = x.copy()
    fd.add_scaled(moved, w, s)
    assert moved.tobytes() == (x + exact).tobytes()


def test_the_noise_probe_direction_stays_float32_when_long() -> None:
    x0 = np.random.default_rng(6).uniform(0.5, 2.0, fd.LONG_DIRECTION)
    v = fd._probe_direction(x0, np.random.default_rng(7))
    assert v.dtype == np.float32
    # each entry a normal draw scaled by its coordinate: v / x0 is standard normal
    ratio = v.astype(np.float64) / x0
    assert abs(float(ratio.std()) - 1) < 0.01


@settings(max_examples=15, deadline=None)
@given(size=st.integers(1, 3 * fd._CHUNK + 5), seed=st.integers(0, 2**32 - 1))
def test_direction_bounds_of_a_float32_direction_are_those_of_its_float64_values(
    size: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(size) * 10.0 ** rng.uniform(-3, 3, size)
    w = rng.standard_normal(size).astype(np.float32)
    got = fd.direction_bounds(g, w)
    want = (
        float(g @ w.astype(np.float64)),
        float(np.abs(w.astype(np.float64)).sum()),
        float(np.linalg.norm(g * w)),
    )
    for a, b in zip(got, want):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-12 * float(np.abs(g * w).sum()))


def test_a_directional_derivative_along_a_float32_direction_matches_its_float64_values() -> None:
    # the path without fun.along: the moved point is built as a vector
    x = np.random.default_rng(5).uniform(-1, 1, 40)
    w = np.random.default_rng(6).standard_normal(40).astype(np.float32)
    seen = []

    def f(p: np.ndarray) -> float:
        seen.append(p.copy())
        return rosen(p)

    got = fd.directional(f, x, w, rel_step=1e-3, noise=1e-14, f0=rosen(x))
    seen_32 = list(seen)
    seen.clear()
    want = fd.directional(f, x, w.astype(np.float64), rel_step=1e-3, noise=1e-14, f0=rosen(x))
    assert got == want
    assert all(a.tobytes() == b.tobytes() for a, b in zip(seen_32, seen))


@pytest.mark.parametrize("size", [fd.LONG_DIRECTION, fd.LONG_DIRECTION + 3 * fd._CHUNK // 2 + 1])
def test_a_long_direction_is_a_rounded_standard_normal(size: int) -> None:
    q = fd.random_direction(np.random.default_rng(size), size).astype(np.float64)
    n = q.size
    assert n == size and np.all(q == np.rint(q)) and float(np.abs(q).max()) <= 127
    w = q / fd.WHOLE_SCALE  # the standard normal draws, each to within half a unit of 1/24
    assert abs(float(w.mean())) < 5 / np.sqrt(n)
    # the variance of a normal rounded to steps h is about 1 + h^2 / 12 (Sheppard)
    assert abs(float(w.std()) - np.sqrt(1 + 1 / (12 * fd.WHOLE_SCALE**2))) < 0.005

    def below(z: float) -> float:  # P(normal < z)
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    # the rounded normal's quantiles: q <= k exactly where the draw lies below (k + 1/2) / 24
    for fraction, expected in (
        (np.mean(np.abs(q) <= 23), below(23.5 / 24) - below(-23.5 / 24)),  # about P(|w| < 1)
        (np.mean(q <= 47), below(47.5 / 24)),  # about P(w < 1.96)
        (np.mean(q <= -62), below(-61.5 / 24)),  # about P(w < -2.576)
        (np.mean(q > 0), 1 - below(0.5 / 24)),
        (np.mean(q == 0), below(0.5 / 24) - below(-0.5 / 24)),
    ):
        assert abs(float(fraction) - expected) < 5 * np.sqrt(expected * (1 - expected) / n)
    assert float(np.abs(w).max()) < 5.8
    # the two halves of each chunk (cosines and sines of one radius) are uncorrelated
    half = fd._CHUNK // 2
    assert abs(float(np.corrcoef(w[:half], w[half : 2 * half])[0, 1])) < 5 / np.sqrt(half)
    assert abs(float(np.corrcoef(w[:half] ** 2, w[half : 2 * half] ** 2)[0, 1])) < 5 / np.sqrt(half)
