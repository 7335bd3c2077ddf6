"""Fast mode's directions on functions with kinks near (not at) the point: smaller steps get past them."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import gradcheck_core as gc
from gradcheck_core import differences as fd


def _relu_loss(a: np.ndarray, c: np.ndarray):
    def f(x: np.ndarray) -> float:
        return float(np.sum(c * np.maximum(x - a, 0.0)) + 0.5 * np.sum(x**2))

    def g(x: np.ndarray) -> np.ndarray:
        return c * (x > a) + x

    return f, g


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(0, 10_000), st.floats(1e-7, 1e-4))
def test_a_kink_near_the_point_is_left_behind_by_smaller_steps(seed: int, offset: float) -> None:
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal(20)
    a = x0 + rng.choice([-1.0, 1.0], 20) * (0.1 + rng.random(20))
    a[3] = x0[3] - offset  # one unit switches within the usual step
    c = rng.standard_normal(20)
    f, g = _relu_loss(a, c)
    v = rng.standard_normal(20)
    f0 = f(x0)
    _, err, nfev = fd.directional(f, x0, v, rel_step=1e-2, noise=1e-16, f0=f0)
    value, err_past, nfev_past = fd.directional(f, x0, v, rel_step=1e-2, noise=1e-16, f0=f0, kink_shrinks=2)
    assert nfev == 6 and nfev_past in (6, 12, 18)
    t = 1e-2 * max(1.0, float(np.max(np.abs(x0)))) / float(np.max(np.abs(v)))
    if offset < t / 4 * abs(v[3]) and abs(c[3]) > 0.1:  # every step crosses the kink
        assert not np.isfinite(err)
    if np.isfinite(err_past):  # decided: then it is right within its error bound
        assert abs(value - float(g(x0) @ v)) <= 8 * err_past + 1e-9 * abs(value)
    if offset > 1.01 * t / 256 * abs(v[3]):  # outside the smallest segment: decided
        assert np.isfinite(err_past)


def test_a_kink_at_the_point_stays_undecided() -> None:
    x0 = np.array([0.0, 1.0, -2.0])
    f = lambda x: float(np.abs(x[0]) + np.sum(x[1:] ** 2))  # noqa: E731
    v = np.array([1.0, 0.5, -0.25])
    _, err, nfev = fd.directional(f, x0, v, rel_step=1e-3, noise=1e-16, f0=f(x0), kink_shrinks=2)
    assert not np.isfinite(err)
    assert nfev == 18


def test_fast_mode_judges_a_relu_layer_along_directions_and_names_a_wrong_entry() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 30))
    W0 = rng.standard_normal((30, 40)) / 5
    v = rng.standard_normal(40)

    def loss(p: dict) -> float:
        return float(np.sum(np.tanh(np.maximum(X @ p["W"], 0.0) @ v)))

    def grad(p: dict) -> dict:
        h = X @ p["W"]
        t = np.tanh(np.maximum(h, 0.0) @ v)
        return {"W": X.T @ (((1 - t**2)[:, None] * v[None, :]) * (h > 0))}

    good = gc.check(loss, {"W": W0}, grad, mode="fast", seed=0)
    assert good.verdict == "pass"
    assert good.blocks[0].checked_by == "directions"

    def wrong(p: dict) -> dict:
        out = grad(p)
        out["W"] = out["W"].copy()
        out["W"][2, 5] *= 1.5
        return out

    bad = gc.check(loss, {"W": W0}, wrong, mode="fast", seed=0)
    assert bad.verdict == "fail"
    assert tuple(bad.blocks[0].worst_index) == (2, 5)
