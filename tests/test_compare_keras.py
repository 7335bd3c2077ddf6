"""gc.compare: a Keras model ported to PyTorch (runs on every Keras backend)."""

from __future__ import annotations

import numpy as np
import pytest

import gradcheck_core as gc

pytestmark = [pytest.mark.keras, pytest.mark.torch]

X = np.random.default_rng(0).standard_normal((32, 4)).astype("float32")
LABELS = np.random.default_rng(1).integers(0, 3, 32)
Y = np.eye(3, dtype="float32")[LABELS]


def models(activation: str = "tanh"):
    keras = pytest.importorskip("keras")
    torch = pytest.importorskip("torch")
    if keras.backend.backend() == "numpy":
        pytest.skip("Keras's numpy backend has no autodiff to compare")
    keras_model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation=activation), keras.layers.Dense(3)]
    )
    torch.manual_seed(0)
    torch_model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    return keras, torch, keras_model, torch_model


def candidates(keras, torch, keras_model, torch_model, dtype=None):
    cce = keras.losses.CategoricalCrossentropy(from_logits=True, dtype=dtype)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(LABELS)
    return {
        "keras": (lambda m: cce(Y, m(X)), keras_model),
        "torch": (lambda: torch.nn.functional.cross_entropy(torch_model(Xt), yt), torch_model),
    }


def test_keras_model_ported_to_torch_agrees() -> None:
    keras, torch, km, tm = models()
    before = [np.array(w) for w in km.get_weights()]
    result = gc.compare(candidates(keras, torch, km, tm, dtype="float64"))
    assert result.passed, str(result)
    assert [r.layout for r in result.rows] == ["transposed", "same", "transposed", "same"]
    assert result.rows[0].name == "0.weight"
    if keras.backend.backend() == "tensorflow":  # float64 end to end there
        assert max(r.rel_error for r in result.rows) < 1e-10
    for w, b in zip(km.get_weights(), before):
        assert w.dtype == b.dtype and np.array_equal(w, b)


def test_float32_keras_loss_is_compared_at_float32_precision_and_said() -> None:
    keras, torch, km, tm = models()
    result = gc.compare(candidates(keras, torch, km, tm))
    assert result.passed, str(result)
    assert any("float32" in m for m in result.messages) or result.loss_rel_diff["torch"] < 1e-12


def test_port_with_another_activation_is_reported() -> None:
    keras, torch, km, tm = models(activation="relu")
    result = gc.compare(candidates(keras, torch, km, tm, dtype="float64"))
    assert not result.passed
    assert result.loss_rel_diff["torch"] > 1e-4
