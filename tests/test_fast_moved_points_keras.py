"""Fast mode's moved points on a Keras loss() that reads its model's variables in place."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

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


def test_moved_points_are_the_full_vector_points_and_put_everything_back() -> None:
    model = _model()
    before = _values(model)

    def loss() -> Any:
        return keras.ops.sum(model(X) ** 2)

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
def test_fast_mode_gives_the_same_numbers_with_and_without_moved_points(monkeypatch: Any) -> None:
    model = _model()

    def loss() -> Any:
        return keras.ops.sum(model(X) ** 2)

    fast = gc.check(loss, model, mode="fast", seed=1, progress=False)
    monkeypatch.setattr(LossFunction, "along", property(lambda self: None))
    plain = gc.check(loss, model, mode="fast", seed=1, progress=False)
    assert fast.verdict == plain.verdict
    assert fast.nfev == plain.nfev
    for a, b in zip(fast.blocks, plain.blocks):
        assert np.array_equal(a.directional_numeric, b.directional_numeric)
