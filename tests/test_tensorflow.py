"""The TensorFlow adapter: variables, modules, closures, custom gradients, float64, state, RNG."""

from __future__ import annotations

import numpy as np
import pytest

import gradcheck_core as gc

tf = pytest.importorskip("tensorflow")

from gradcheck_core.adapters import get_adapter  # noqa: E402

pytestmark = pytest.mark.tensorflow

RNG = np.random.default_rng(7)
X = RNG.standard_normal((24, 4))
T = RNG.standard_normal((24, 3))


def bytes_of(variables):
    return [v.numpy().tobytes() for v in variables]


def mlp_loss(p, x=X):
    h = tf.tanh(x @ p["W1"] + p["b1"])
    return tf.reduce_mean((h @ p["W2"] - T) ** 2)


def fresh_variables(dtype=tf.float64):
    rng = np.random.default_rng(0)
    return {
        "W1": tf.Variable(rng.standard_normal((4, 5)) * 0.5, dtype=dtype, name="W1"),
        "b1": tf.Variable(rng.standard_normal(5) * 0.1, dtype=dtype, name="b1"),
        "W2": tf.Variable(rng.standard_normal((5, 3)) * 0.5, dtype=dtype, name="W2"),
    }


# -- variables, closures ------------------------------------------------------------
def test_zero_arg_closure_over_float64_variables_passes_and_restores_bits():
    params = fresh_variables()
    before = bytes_of(params.values())
    report = gc.check(lambda: mlp_loss(params), params)
    assert report.verdict == "pass"
    assert report.rel_error < 1e-8
    assert report.framework == "tensorflow"
    assert [b.name for b in report.blocks] == ["W1", "b1", "W2"]
    assert not any(f.kind == "low_precision" for f in report.findings)
    assert bytes_of(params.values()) == before


def test_functional_closure_gets_float64_tensors_even_for_float32_variables():
    params = fresh_variables(tf.float32)
    seen = []

    def loss(p):
        seen.append(p["W1"].dtype)
        return mlp_loss(p, tf.constant(X))

    report = gc.check(loss, params)
    assert report.verdict == "pass"
    assert report.rel_error < 1e-8
    assert set(seen) == {tf.float64}
    assert all(v.dtype == tf.float32 for v in params.values())


def test_float32_variables_read_in_place_are_low_precision_but_never_fail():
    params = fresh_variables(tf.float32)
    x32 = tf.constant(X, tf.float32)
    t32 = tf.constant(T, tf.float32)

    def loss():
        h = tf.tanh(x32 @ params["W1"] + params["b1"])
        return tf.reduce_mean((h @ params["W2"] - t32) ** 2)

    report = gc.check(loss, params)
    assert report.verdict in ("pass", "inconclusive")
    finding = next(f for f in report.findings if f.kind == "low_precision")
    assert "tf.float64" in finding.message and "loss(p)" in finding.message

    # the autodiff gradient, doubled: a factor 2 is still caught in float32
    with tf.GradientTape() as tape:
        value = loss()
    grads = tape.gradient(value, list(params.values()))
    doubled = {k: 2 * g for k, g in zip(params, grads)}
    wrong = gc.check(loss, params, doubled)
    assert wrong.verdict == "fail"
    assert any(f.kind == "scale" and abs(f.detail["factor"] - 2) < 0.05 for f in wrong.findings)


def test_dtype_clash_falls_back_to_the_parameters_dtype_and_leaves_rng_alone():
    params = fresh_variables(tf.float32)
    x32 = tf.constant(X, tf.float32)  # float32 data: a float64 W1 cannot meet it in tf

    def loss(p):
        np.random.standard_normal()  # consumes the global numpy stream
        return tf.reduce_sum(tf.tanh(x32 @ p["W1"] + p["b1"]) ** 2)

    np.random.seed(3)
    expected = np.random.standard_normal(4)
    np.random.seed(3)
    report = gc.check(loss, {"W1": params["W1"], "b1": params["b1"]})
    assert report.verdict in ("pass", "inconclusive")
    finding = next(f for f in report.findings if f.kind == "low_precision")
    assert "tf.float64" in finding.message
    assert np.array_equal(np.random.standard_normal(4), expected)


def test_handwritten_gradient_with_d_prefixed_keys():
    W = tf.Variable(RNG.standard_normal((4, 3)), name="W")

    def loss(p):
        return tf.reduce_sum((X @ p["W"] - T) ** 2) / len(X)

    def grad(p):
        W_ = p["W"].numpy()
        return {"dW": 2 * X.T @ (X @ W_ - T) / len(X), "dZ": None}

    assert gc.check(loss, {"W": W}, grad).verdict == "pass"
    wrong = gc.check(loss, {"W": W}, lambda p: {"dW": grad(p)["dW"].T.T * len(X)})
    assert wrong.verdict == "fail"
    assert any(f.kind == "scale" for f in wrong.findings)


def test_stop_gradient_in_the_wrong_place_fails():
    W = tf.Variable(RNG.standard_normal((4, 3)) * 0.3)

    def loss(p):
        z = X @ p
        return tf.reduce_mean(tf.stop_gradient(tf.tanh(z)) * z)

    report = gc.check(loss, W)
    assert report.verdict == "fail"


# -- modules ------------------------------------------------------------------------
class Net(tf.Module):
    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(1)
        self.w = tf.Variable(rng.standard_normal((4, 3)) * 0.4, name="w")
        self.layers = [
            tf.Variable(rng.standard_normal(3) * 0.1, name="a"),
            tf.Variable(0.5, dtype=tf.float64),
        ]
        self.d = {
            "x": tf.Variable(rng.standard_normal(3) * 0.2),
            "frozen": tf.Variable(1.0, dtype=tf.float64, trainable=False),
        }

    def __call__(self, x):
        return tf.tanh(x @ self.w + self.layers[0]) * self.layers[1] + self.d["x"] * self.d["frozen"]


def test_module_names_come_from_attribute_paths_and_frozen_variables_are_skipped():
    net = Net()
    before = bytes_of(net.variables)
    report = gc.check(lambda: tf.reduce_mean((net(X) - T) ** 2), net)
    assert report.verdict == "pass"
    assert sorted(b.name for b in report.blocks) == ["d.x", "layers[0]", "layers[1]", "w"]
    assert bytes_of(net.variables) == before


def test_module_without_trainable_variables_is_an_input_error():
    class Empty(tf.Module):
        pass

    with pytest.raises(gc.InputError, match="no trainable variables"):
        gc.check(lambda: tf.constant(1.0, tf.float64), Empty())


# -- state ----------------------------------------------------------------------------
class Boom(Exception):
    pass


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_variables_restored_bit_for_bit_after_an_error_in_the_loss(error):
    params = fresh_variables(tf.float32)
    before = bytes_of(params.values())
    calls = []

    def loss():
        calls.append(1)
        if len(calls) == 6:
            raise error()
        return tf.reduce_sum(params["W1"] ** 2)

    with pytest.raises(error):
        gc.check(loss, params)
    assert bytes_of(params.values()) == before
    assert all(v.dtype == tf.float32 for v in params.values())


def test_global_generator_is_replayed_and_left_where_it_was():
    gen = tf.random.get_global_generator()
    gen.reset_from_seed(11)
    W = tf.Variable(RNG.standard_normal((4, 3)))

    def loss():
        mask = tf.cast(gen.uniform((24, 3)) > 0.3, tf.float64)  # dropout-like, drawn every call
        return tf.reduce_mean(((X @ W) * mask) ** 2)

    state = gen.state.numpy().copy()
    report = gc.check(loss, W)
    assert report.verdict == "pass"
    assert not any(f.kind == "nondeterministic" for f in report.findings)
    assert np.array_equal(gen.state.numpy(), state)


def test_loss_leaving_tensorflow_cannot_be_differentiated():
    W = tf.Variable(RNG.standard_normal((4, 3)))
    with pytest.raises(gc.InputError, match="grad="):
        gc.check(lambda: float(tf.reduce_sum(W**2).numpy()), W)


def test_zero_arg_closure_needs_variables():
    with pytest.raises(gc.InputError, match=r"tf\.Variable"):
        gc.check(lambda: tf.constant(1.0, tf.float64), tf.constant([1.0, 2.0], tf.float64))


# -- check_function: vjp, jvp, custom gradients ----------------------------------------------
@tf.custom_gradient
def cubic(x):
    def grad(u):
        return u * (3 * x**2 + 2)

    return x**3 + 2 * x, grad


@tf.custom_gradient
def cubic_forgets_constant(x):
    def grad(u):
        return u * 3 * x**2

    return x**3 + 2 * x, grad


@tf.custom_gradient
def two_outputs(x, y):
    def grad(ua, ub):
        return ua * y + ub * 2 * x, ua * x

    return (x * y, x**2), grad


def test_custom_gradient_right_and_wrong():
    x = tf.constant(RNG.standard_normal(6))
    assert gc.check_function(cubic, x).verdict == "pass"
    wrong = gc.check_function(cubic_forgets_constant, x)
    assert wrong.verdict == "fail"


def test_custom_gradient_with_two_inputs_and_outputs():
    x = tf.constant(RNG.standard_normal(5))
    y = tf.constant(RNG.standard_normal(5))
    report = gc.check_function(two_outputs, x, y)
    assert report.verdict == "pass"
    names = {b.name for b in report.blocks}
    assert {"input0->output0", "input1->output0", "input0->output1", "input1->output1"} <= names
    assert "input0->output0 (jvp)" in names  # forward mode through ForwardAccumulator


def test_vjp_and_jvp_match_the_jacobian():
    adapter = get_adapter("tensorflow")
    A = RNG.standard_normal((3, 4))

    def fn(x):
        return tf.sin(tf.linalg.matvec(tf.constant(A), x))

    x = tf.constant(RNG.standard_normal(4), tf.float32)
    x64 = x.numpy().astype(np.float64)
    J = np.cos(A @ x64)[:, None] * A
    u = RNG.standard_normal(3)
    v = RNG.standard_normal(4)
    (vjp,) = adapter.vjp(fn, [x], [u])
    (jvp,) = adapter.jvp(fn, [x], [v])
    assert vjp.dtype == np.float64 and jvp.dtype == np.float64
    np.testing.assert_allclose(vjp, u @ J, rtol=1e-12)
    np.testing.assert_allclose(jvp, J @ v, rtol=1e-12)
    (custom,) = adapter.jvp(cubic, [tf.constant([1.0, 2.0], tf.float64)], [np.ones(2)])
    np.testing.assert_allclose(custom, [5.0, 14.0])


def test_compare_with_a_numpy_port():
    params = fresh_variables(tf.float32)
    before = bytes_of(params.values())

    def numpy_loss(p):
        h = np.tanh(X @ p["W1"] + p["b1"])
        return np.mean((h @ p["W2"] - T) ** 2)

    def numpy_grad(p):
        h = np.tanh(X @ p["W1"] + p["b1"])
        d_out = 2 * (h @ p["W2"] - T) / T.size
        d_h = d_out @ p["W2"].T * (1 - h**2)
        return {"W1": X.T @ d_h, "b1": d_h.sum(0), "W2": h.T @ d_out}

    start = {k: v.numpy().astype(np.float64) for k, v in params.items()}
    result = gc.compare(
        {
            "tf": (mlp_loss, params),  # float32 variables, evaluated in float64
            "numpy": (numpy_loss, start, numpy_grad),
        }
    )
    assert result.passed, str(result)
    assert bytes_of(params.values()) == before


def test_ctc_loss_named_as_the_float32_computation():
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.standard_normal((5, 2, 4)), dtype=tf.float32)  # time, batch, classes
    labels = tf.constant([[1, 2], [2, 3]], dtype=tf.int32)

    def loss(z):
        per_sample = tf.nn.ctc_loss(
            labels, z, label_length=[2, 2], logit_length=[5, 5], logits_time_major=True, blank_index=0
        )
        return tf.reduce_sum(per_sample)

    report = gc.check(loss, logits)
    assert report.verdict == "pass"
    (note,) = [f for f in report.findings if f.kind == "low_precision"]
    assert "tf.nn.ctc_loss" in note.message
