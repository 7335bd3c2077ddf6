"""Fast mode's moved points on Keras models: loss() in place, and loss(model) on the float64 copy.

Both write each point into Keras variables and assign only the variables
that change; these tests compare every such evaluation with the one that
builds the whole point.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradcheck_core as gc
from gradcheck_core.counted_loss import LossFunction, prepared
from gradcheck_core.options import Options

keras = pytest.importorskip("keras")

pytestmark = pytest.mark.keras

X = np.linspace(-1.0, 1.0, 15).reshape(5, 3).astype("float32")


def _model() -> Any:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(2)]
    )
    model(X)
    return model


def _values(model: Any) -> list[bytes]:
    return [np.asarray(keras.ops.convert_to_numpy(v.value)).tobytes() for v in model.variables]


def _in_place(model: Any) -> Any:
    return lambda: keras.ops.sum(model(X) ** 2)


def _on_copy(model: Any) -> Any:
    return lambda m: keras.ops.sum(m(X) ** 2)


@pytest.mark.parametrize("style", [_in_place, _on_copy], ids=["loss()", "loss(model)"])
def test_moved_points_are_the_full_vector_points_and_put_everything_back(style: Any) -> None:
    model = _model()
    before = _values(model)
    loss = style(model)

    with prepared(loss, model, Options()) as (_, _target, fun):
        assert fun.along is not None
        x0 = fun.flat.x0
        rng = np.random.default_rng(0)
        blocks = [slice(0, 12), slice(10, 20), slice(3, 4), slice(0, fun.flat.n), slice(20, fun.flat.n)]
        for block in blocks:
            w = rng.standard_normal(block.stop - block.start)
            for s in (1e-3, -2e-4):
                x = x0.copy()
                x[block] = x[block] + s * w
                assert fun.along(block, w, s) == fun(x)
                assert fun(x) == fun.along(block, w, s)  # a full point between moved ones
        assert fun(x0) == fun.along(slice(0, 0), np.zeros(0), 1.0)
    assert _values(model) == before


@pytest.mark.skipif(keras.backend.backend() == "numpy", reason="Keras's numpy backend has no autodiff")
@pytest.mark.parametrize("style", [_in_place, _on_copy], ids=["loss()", "loss(model)"])
def test_fast_mode_gives_the_same_numbers_with_and_without_moved_points(monkeypatch: Any, style: Any) -> None:
    model = _model()
    loss = style(model)

    fast = gc.check(loss, model, mode="fast", seed=1, progress=False)
    monkeypatch.setattr(LossFunction, "along", property(lambda self: None))
    plain = gc.check(loss, model, mode="fast", seed=1, progress=False)
    assert fast.verdict == plain.verdict
    assert fast.nfev == plain.nfev
    for a, b in zip(fast.blocks, plain.blocks):
        assert np.array_equal(a.directional_numeric, b.directional_numeric)


# One step of a sequence of evaluations: a moved block (leaf-aligned or not,
# within a leaf or across leaves), a whole point, or x0 itself.
_STEPS = st.one_of(
    st.tuples(st.just("along"), st.integers(0, 25), st.integers(0, 26), st.sampled_from([1e-3, -2e-4, 0.5])),
    st.tuples(st.just("point"), st.integers(0, 25), st.integers(0, 26), st.sampled_from([1e-3, -0.25])),
    st.tuples(st.just("x0"), st.just(0), st.just(0), st.just(0.0)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_STEPS, min_size=1, max_size=8), seed=st.integers(0, 2**16))
def test_the_copy_holds_exactly_each_point_after_any_sequence_of_evaluations(steps: Any, seed: int) -> None:
    # The float64 copy assigns only the variables a point changes: after any
    # sequence of moved blocks and whole points, the copy's weights the loss
    # reads are exactly that point (as if every variable had been assigned),
    # and the user's model is untouched.
    model = _model()
    before = _values(model)
    seen: list[np.ndarray] = []

    def loss(m: Any) -> Any:
        seen.append(
            np.concatenate(
                [np.asarray(keras.ops.convert_to_numpy(v.value)).ravel() for v in m.trainable_weights]
            )
        )
        assert all(v.dtype == "float64" for v in m.trainable_weights)
        return keras.ops.sum(m(X) ** 2)

    rng = np.random.default_rng(seed)
    with prepared(loss, model, Options()) as (_, _target, fun):
        x0 = fun.flat.x0.copy()
        n = fun.flat.n
        assert n == 26 and fun.along is not None
        for kind, a, b, s in steps:
            lo, hi = min(a, b), max(a, b) + (a == b)
            block = slice(lo, min(hi, n))
            w = rng.standard_normal(block.stop - block.start)
            x = x0.copy()
            x[block] = x[block] + s * w
            if kind == "along":
                fun.along(block, w, s)
            elif kind == "point":
                fun(x)
            else:
                x = x0
                fun(x0)
            assert np.array_equal(seen[-1], x)
        assert np.array_equal(fun.flat.x0, x0)
    assert _values(model) == before
