"""The Keras adapter on the active backend (KERAS_BACKEND: tensorflow, jax, torch; numpy partly).

The nox sessions run this file once per backend, each in its own process.
Everything here reads the backend from ``keras.backend.backend()``.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradcheck_core as gc

keras = pytest.importorskip("keras")
from keras import layers, ops  # noqa: E402

from gradcheck_core.adapters import keras as keras_adapter  # noqa: E402

pytestmark = pytest.mark.keras

BACKEND = keras.backend.backend()
AUTODIFF = BACKEND in ("tensorflow", "jax", "torch")
needs_autodiff = pytest.mark.skipif(not AUTODIFF, reason=f"Keras's {BACKEND} backend has no autodiff")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny matmuls on a busy machine run far faster on one thread."""
    if BACKEND != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def settings_now():
    """Every global setting the adapter may touch, read without side effects."""
    from keras.src.backend.common import dtypes, global_state

    x64 = None
    if BACKEND == "jax":
        import jax

        x64 = bool(jax.config.jax_enable_x64)
    return (
        keras.backend.floatx(),
        global_state.get_global_attribute("dtype_policy", None),
        x64,
        dict(dtypes.BIT64_TO_BIT32_DTYPE),
    )


def state_bytes(model):
    return [(v.path, v.dtype, ops.convert_to_numpy(v.value).tobytes()) for v in model.variables]


# -- the seed case: numpy softmax regression with a default (float32) Keras loss --------------------
def iris():
    from sklearn.datasets import load_iris

    data = load_iris()
    X = np.c_[np.ones(len(data.data)), data.data]  # bias column, (150, 5)
    Y = np.eye(3)[data.target]  # one-hot, all three classes
    W = np.random.default_rng(0).standard_normal((5, 3)) * np.sqrt(1.0 / 5)
    return X, Y, W


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_seed_case_correct_gradient_never_fails_and_says_why():
    X, Y, W = iris()
    cce = keras.losses.CategoricalCrossentropy()  # float32, as created by default
    m = X.shape[0]

    def loss(w):
        return cce(Y, softmax(X @ w))

    def grad(w):
        return X.T @ (softmax(X @ w) - Y) / m

    before = settings_now()
    report = gc.check(loss, W, grad)
    assert report.verdict in ("pass", "inconclusive")  # never "fail" for a correct gradient
    finding = next(f for f in report.findings if f.kind == "low_precision")
    assert "float32" in finding.message
    assert f"backend {BACKEND}" in finding.message  # the precise reason, with the remedy
    assert "check_loss" in finding.message
    if BACKEND == "jax":
        assert "jax_enable_x64" in finding.message
    assert settings_now() == before


def test_seed_case_gradient_missing_its_one_over_m_fails():
    X, Y, W = iris()
    cce = keras.losses.CategoricalCrossentropy()
    report = gc.check(lambda w: cce(Y, softmax(X @ w)), W, lambda w: X.T @ (softmax(X @ w) - Y))
    assert report.verdict == "fail"
    scale = next(f for f in report.findings if f.kind == "scale")
    assert abs(scale.detail["factor"] - X.shape[0]) / X.shape[0] < 1e-2


def test_seed_case_plain_loop_is_fooled_where_the_check_is_not():
    """What the seed's author saw: a hand-written loop with step 1e-7 blames a correct gradient."""
    X, Y, W = iris()
    cce = keras.losses.CategoricalCrossentropy()
    f = lambda w: float(ops.convert_to_numpy(cce(Y, softmax(X @ w))))  # noqa: E731
    analytic = X.T @ (softmax(X @ W) - Y) / X.shape[0]
    numeric = np.zeros_like(W)
    for i in np.ndindex(W.shape):
        Wp, Wm = W.copy(), W.copy()
        Wp[i] += 1e-7
        Wm[i] -= 1e-7
        numeric[i] = (f(Wp) - f(Wm)) / 2e-7
    naive = np.linalg.norm(analytic - numeric) / (np.linalg.norm(analytic) + np.linalg.norm(numeric))
    assert naive > 1e-2  # 0.2-0.33 in the seed; a correct float64 loss gives ~1e-9
    assert (
        gc.check(lambda w: cce(Y, softmax(X @ w)), W, lambda w: X.T @ (softmax(X @ w) - Y) / 150).verdict
        != "fail"
    )


# -- check_loss: built-in and custom Keras losses --------------------------------------------------
def predictions(n=30, k=3, seed=1):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    probs = softmax(rng.standard_normal((n, k)))
    return labels, np.eye(k)[labels], probs


BUILT_IN = [
    lambda: keras.losses.CategoricalCrossentropy(),
    lambda: keras.losses.CategoricalCrossentropy(reduction="sum"),
    lambda: keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
    lambda: keras.losses.MeanSquaredError(),
    lambda: keras.losses.BinaryCrossentropy(),
    lambda: keras.losses.Huber(delta=0.3),
    lambda: keras.losses.KLDivergence(),
]


@needs_autodiff
@pytest.mark.parametrize("make", BUILT_IN, ids=["cce", "cce-sum", "cce-smooth", "mse", "bce", "huber", "kld"])
def test_built_in_losses_are_checked_in_float64(make):
    _, Y, P = predictions()
    loss = make()
    before = settings_now()
    report = gc.check_loss(loss, Y, P)
    assert report.verdict == "pass"
    assert report.rel_error < 1e-7
    assert not any(f.kind == "low_precision" for f in report.findings), report
    assert report.blocks[0].name == "y_pred"
    # the value is the loss's own (it was float32; ours is float64)
    assert report.loss_value == pytest.approx(float(ops.convert_to_numpy(loss(Y, P))), rel=1e-5)
    assert settings_now() == before


@needs_autodiff
def test_sparse_labels_and_backend_tensors_and_keras_functions():
    labels, Y, P = predictions()
    assert gc.check_loss(keras.losses.SparseCategoricalCrossentropy(), labels, P).verdict == "pass"
    report = gc.check_loss(
        keras.losses.CategoricalCrossentropy(), ops.convert_to_tensor(Y), ops.convert_to_tensor(P)
    )
    assert report.verdict == "pass" and report.rel_error < 1e-7
    report = gc.check_loss(keras.losses.categorical_crossentropy, Y, P)  # per-sample function: averaged
    assert report.verdict == "pass" and report.rel_error < 1e-7


def cce_gradient(Y):
    """d/dP of Keras's categorical crossentropy (mean over the batch).

    Keras divides the probabilities by their row sum first, hence the 1/S term.
    """

    def grad(P):
        return (-Y / P + Y.sum(axis=1, keepdims=True) / P.sum(axis=1, keepdims=True)) / len(Y)

    return grad


def test_handwritten_loss_gradient_right_and_missing_a_term():
    _, Y, P = predictions()
    good = gc.check_loss(keras.losses.CategoricalCrossentropy(), Y, P, grad=cce_gradient(Y))
    assert good.verdict == "pass"
    assert not any(f.kind == "low_precision" for f in good.findings)
    bad = gc.check_loss(keras.losses.CategoricalCrossentropy(), Y, P, grad=lambda P_: -Y / P_ / len(Y))
    assert bad.verdict == "fail"


class Focal(keras.losses.Loss):
    """A custom loss with a hyper-parameter and no get_config of its own."""

    def __init__(self, gamma=2.0, **kwargs):
        super().__init__(**kwargs)
        self.gamma = gamma

    def call(self, y_true, y_pred):
        p = ops.clip(y_pred, 1e-7, 1 - 1e-7)
        return -ops.sum(y_true * (1 - p) ** self.gamma * ops.log(p), axis=-1)


class FocalCut(Focal):
    """The same loss, but its author cut the modulating factor out of the graph."""

    def call(self, y_true, y_pred):
        p = ops.clip(y_pred, 1e-7, 1 - 1e-7)
        return -ops.sum(y_true * ops.stop_gradient((1 - p) ** self.gamma) * ops.log(p), axis=-1)


@needs_autodiff
def test_custom_loss_correct_passes_and_cut_graph_fails():
    _, Y, P = predictions()
    focal = Focal(gamma=3.0)
    report = gc.check_loss(focal, Y, P)
    assert report.verdict == "pass"
    assert report.rel_error < 1e-7
    # gamma=3 was kept: the float64 value is the user's loss value
    assert report.loss_value == pytest.approx(float(ops.convert_to_numpy(focal(Y, P))), rel=1e-5)
    assert report.loss_value != pytest.approx(float(ops.convert_to_numpy(Focal(gamma=2.0)(Y, P))), rel=1e-3)
    cut = gc.check_loss(FocalCut(gamma=3.0), Y, P)
    assert cut.verdict == "fail"
    assert cut.rel_error > 0.05


def test_loss_without_reduction_is_an_input_error():
    _, Y, P = predictions()
    with pytest.raises(gc.InputError, match="reduction"):
        gc.check_loss(keras.losses.CategoricalCrossentropy(reduction=None), Y, P)


def test_numpy_backend_asks_for_a_gradient():
    if AUTODIFF:
        pytest.skip("only Keras's numpy backend lacks autodiff")
    _, Y, P = predictions()
    with pytest.raises(gc.InputError, match="numpy backend"):
        gc.check_loss(keras.losses.CategoricalCrossentropy(), Y, P)


# -- models and layers --------------------------------------------------------------------
def small_data(n=30):
    from sklearn.datasets import load_iris

    data = load_iris()
    idx = np.arange(0, 150, 150 // n)[:n]
    X = (data.data[idx] - data.data.mean(0)) / data.data.std(0)
    return X, np.eye(3)[data.target[idx]]


def softmax_regression():
    model = keras.Sequential([keras.Input((4,)), layers.Dense(3, activation="softmax")])
    rng = np.random.default_rng(2)
    model.set_weights([rng.standard_normal((4, 3)).astype("float32") * 0.3, np.zeros(3, "float32")])
    return model


def dense_net(dropout=0.0):
    keras.utils.set_random_seed(3)
    parts = [keras.Input((4,)), layers.Dense(6, activation="tanh")]
    if dropout:
        parts.append(layers.Dropout(dropout))
    parts.append(layers.Dense(3, activation="softmax"))
    return keras.Sequential(parts)


@needs_autodiff
def test_model_as_argument_is_checked_on_a_float64_copy():
    X, Y = small_data()
    model = dense_net()
    before, settings = state_bytes(model), settings_now()
    seen = []

    def loss(m):
        seen.append(m.trainable_weights[0].dtype)
        return ops.mean(keras.losses.categorical_crossentropy(Y, m(X)))

    report = gc.check(loss, model)
    assert report.verdict == "pass"
    assert report.rel_error < 1e-7
    assert not any(f.kind == "low_precision" for f in report.findings), report
    assert [b.name for b in report.blocks] == [v.path for v in model.trainable_weights]
    assert set(seen) == {"float64"}
    assert state_bytes(model) == before
    assert settings_now() == settings


@needs_autodiff
def test_a_loss_object_made_inside_the_closure_is_float64_too():
    X, Y = small_data()
    model = dense_net()
    report = gc.check(lambda m: keras.losses.CategoricalCrossentropy()(Y, m(X)), model)
    assert report.verdict == "pass"
    assert not any(f.kind == "low_precision" for f in report.findings), report


@needs_autodiff
def test_zero_arg_closure_over_a_float32_model_is_low_precision_never_fail():
    X, Y = small_data()
    model = dense_net()
    cce = keras.losses.CategoricalCrossentropy()
    before, settings = state_bytes(model), settings_now()
    report = gc.check(lambda: cce(Y, model(X)), model)
    assert report.verdict in ("pass", "inconclusive")
    finding = next(f for f in report.findings if f.kind == "low_precision")
    assert "loss(model)" in finding.message and f"backend {BACKEND}" in finding.message
    assert state_bytes(model) == before
    assert settings_now() == settings


@pytest.mark.parametrize("style", ["argument", "zero-arg"])
def test_softmax_regression_model_handwritten_gradient_right_and_doubled(style):
    X, Y = small_data()
    model = softmax_regression()
    cce = keras.losses.CategoricalCrossentropy()
    m = len(X)

    def grads(factor):
        def grad(*_):
            W, b = (ops.convert_to_numpy(v.value).astype(np.float64) for v in model.trainable_weights)
            P = softmax(X @ W + b)
            return [factor * X.T @ (P - Y) / m, factor * (P - Y).sum(0) / m]  # trainable_weights order

        return grad

    loss = (lambda mm: cce(Y, mm(X))) if style == "argument" else (lambda: cce(Y, model(X)))
    before = state_bytes(model)
    right = gc.check(loss, model, grads(1.0))
    assert right.verdict in ("pass", "inconclusive")
    assert any(f.kind == "low_precision" for f in right.findings)  # the float32 loss object
    wrong = gc.check(loss, model, grads(2.0))
    assert wrong.verdict == "fail"
    assert any(f.kind == "scale" and abs(f.detail["factor"] - 2) < 0.05 for f in wrong.findings)
    assert state_bytes(model) == before


@needs_autodiff
def test_dropout_masks_are_replayed():
    X, Y = small_data()
    model = dense_net(dropout=0.4)
    before = state_bytes(model)  # seed generator state included
    report = gc.check(
        lambda m: ops.mean(keras.losses.categorical_crossentropy(Y, m(X, training=True))), model
    )
    assert report.verdict == "pass"
    assert not any(f.kind == "nondeterministic" for f in report.findings)
    zero_arg = gc.check(
        lambda: ops.mean(keras.losses.categorical_crossentropy(Y, model(X, training=True))), model
    )
    assert zero_arg.verdict in ("pass", "inconclusive")
    assert not any(f.kind == "nondeterministic" for f in zero_arg.findings)
    assert state_bytes(model) == before


@needs_autodiff
def test_functional_closure_over_variables_stays_float64():
    """ops.tanh would turn float64 into float32 on jax/torch without the adapter's promotion fix."""
    X, _ = small_data()
    w = keras.Variable(np.random.default_rng(4).standard_normal((4, 3)) * 0.3, name="w")
    b = keras.Variable(np.zeros(3), name="b")
    report = gc.check(lambda p: ops.sum(ops.tanh(ops.matmul(X, p["w"]) + p["b"]) ** 2), {"w": w, "b": b})
    assert report.verdict == "pass"
    assert report.rel_error < 1e-8
    assert not any(f.kind == "low_precision" for f in report.findings), report


class Boom(Exception):
    pass


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
@pytest.mark.parametrize("style", ["argument", "zero-arg"])
def test_weights_and_settings_restored_after_an_error(error, style):
    X, Y = small_data()
    model = dense_net(dropout=0.2)
    before, settings = state_bytes(model), settings_now()
    calls = []

    def forward(m):
        calls.append(1)
        if len(calls) == 5:
            raise error()
        return ops.mean(keras.losses.categorical_crossentropy(Y, m(X, training=True)))

    loss = forward if style == "argument" else (lambda: forward(model))
    grad = None if AUTODIFF else [np.zeros(v.shape) for v in model.trainable_weights]
    with pytest.raises(error):
        gc.check(loss, model, grad)
    assert state_bytes(model) == before
    assert settings_now() == settings


def test_unbuilt_model_is_an_input_error():
    model = keras.Sequential([layers.Dense(3)])
    with pytest.raises(gc.InputError, match="not built"):
        gc.check(lambda: ops.sum(model(np.ones((2, 4)))), model)


def test_numpy_backend_model_check_needs_grad():
    if AUTODIFF:
        pytest.skip("only Keras's numpy backend lacks autodiff")
    X, Y = small_data()
    with pytest.raises(gc.InputError, match="numpy backend"):
        gc.check(lambda m: ops.mean(keras.losses.categorical_crossentropy(Y, m(X))), softmax_regression())


def test_settings_helper_restores_everything():
    before = settings_now()
    with keras_adapter.float64_settings() as user:
        assert keras.backend.floatx() == "float64"
        assert user.floatx == before[0]
        if BACKEND == "jax":
            import jax

            assert jax.config.jax_enable_x64
    assert settings_now() == before


@needs_autodiff
def test_compare_model_with_its_port_to_variables():
    """gc.compare evaluates both at the model's values (the float64 copy and plain variables)."""
    X, Y = small_data()
    model = dense_net()
    before = state_bytes(model)
    ported = {
        "W1": keras.Variable(np.zeros((4, 6))),
        "b1": keras.Variable(np.zeros(6)),
        "W2": keras.Variable(np.zeros((6, 3))),
        "b2": keras.Variable(np.zeros(3)),
    }

    def port(p):
        h = ops.tanh(ops.matmul(X, p["W1"]) + p["b1"])
        return ops.mean(
            keras.losses.categorical_crossentropy(Y, ops.softmax(ops.matmul(h, p["W2"]) + p["b2"]))
        )

    result = gc.compare(
        {
            "model": (lambda m: ops.mean(keras.losses.categorical_crossentropy(Y, m(X))), model),
            "port": (port, ported),
        }
    )
    assert result.passed, str(result)
    assert max(r.rel_error for r in result.rows) < 1e-10
    assert state_bytes(model) == before


def test_keras_crossentropy_clip_is_named_when_an_unclipped_gradient_fails():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 4))
    Y = np.eye(3)[rng.integers(0, 3, 30)]
    W = rng.standard_normal((4, 3)) * 12  # large weights: some true-class probabilities < 1e-7
    cce = keras.losses.CategoricalCrossentropy()

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def loss(w):
        return cce(Y, softmax(X @ w))

    assert (softmax(X @ W)[Y.astype(bool)] < 1e-7).any()
    report = gc.check(loss, W, X.T @ (softmax(X @ W) - Y) / len(X))
    assert report.verdict == "fail"
    (finding,) = [f for f in report.findings if f.kind == "saturation"]
    assert "CategoricalCrossentropy" in finding.message and "1e-07" in finding.message
