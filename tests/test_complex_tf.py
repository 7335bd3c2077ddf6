"""TensorFlow: complex values as (real, imaginary) pairs, empty inputs, undefined and integer outputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

tf = pytest.importorskip("tensorflow")

import gradcheck_core as gc  # noqa: E402
from gradcheck_core.adapters import get_adapter  # noqa: E402

pytestmark = pytest.mark.tensorflow

_complex = st.complex_numbers(max_magnitude=3.0, allow_nan=False, allow_infinity=False)


def _c(values: object) -> tf.Tensor:
    return tf.constant(np.asarray(values, dtype=np.complex128))


# -- the convention: TensorFlow's gradients are already the pair ---------------------------


@settings(max_examples=15, deadline=None)
@given(_complex, _complex, _complex, _complex)
def test_vjp_of_a_linear_map_is_the_pair(a: complex, b: complex, u: complex, z: complex) -> None:
    # phi(z) = Re(conj(u) (a z + b conj(z))): dphi/dRe + 1j dphi/dIm = u conj(a) + conj(u) b
    adapter = get_adapter("tensorflow")
    (g,) = adapter.vjp(lambda w: a * w + b * tf.math.conj(w), [_c([z])], [np.array([u])])
    np.testing.assert_allclose(g, [u * np.conj(a) + np.conj(u) * b], rtol=1e-12, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(_complex, _complex, _complex, _complex)
def test_jvp_along_a_complex_tangent(a: complex, b: complex, v: complex, z: complex) -> None:
    adapter = get_adapter("tensorflow")
    (t,) = adapter.jvp(lambda w: a * w + b * tf.math.conj(w), [_c([z])], [np.array([v])])
    np.testing.assert_allclose(t, [a * v + b * np.conj(v)], rtol=1e-12, atol=1e-12)


# -- gc.check: complex parameters of a real loss ----------------------------------------------

_WEIGHTS = tf.constant(np.arange(1.0, 5.0))


def _loss_of(z: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    return (
        tf.reduce_sum(tf.abs(z) ** 2 * _WEIGHTS)
        + tf.math.real(tf.reduce_sum(z * w))
        + tf.reduce_sum(tf.math.imag(w) ** 3)
    )


def _pair_gradient(p: dict) -> dict:
    z, w = p["z"], p["w"]
    three = tf.constant(3.0, tf.float64)
    return {
        "z": 2 * tf.cast(_WEIGHTS, tf.complex128) * z + tf.math.conj(w),
        "w": tf.math.conj(z) + tf.complex(tf.zeros_like(tf.math.real(w)), three * tf.math.imag(w) ** 2),
    }


def _values() -> dict:
    rng = np.random.default_rng(5)
    return {k: rng.standard_normal(4) + 1j * rng.standard_normal(4) for k in ("z", "w")}


def test_complex_tensors_with_the_tape_pass() -> None:
    params = {k: tf.constant(v, dtype=tf.complex64) for k, v in _values().items()}
    report = gc.check(lambda p: _loss_of(p["z"], p["w"]), params)
    assert report.verdict == "pass", report
    assert [b.name for b in report.blocks] == ["z.real", "z.imag", "w.real", "w.imag"]


def test_complex_variables_read_in_place_pass() -> None:
    values = _values()
    z, w = tf.Variable(values["z"]), tf.Variable(values["w"])
    report = gc.check(lambda: _loss_of(z, w), [z, w])
    assert report.verdict == "pass", report
    np.testing.assert_array_equal(z.numpy(), values["z"])


def test_handwritten_pair_passes_and_wrong_imaginary_part_fails() -> None:
    params = {k: tf.constant(v) for k, v in _values().items()}
    loss = lambda p: _loss_of(p["z"], p["w"])  # noqa: E731
    assert gc.check(loss, params, grad=_pair_gradient).verdict == "pass"

    def wrong(p: dict) -> dict:
        g = _pair_gradient(p)
        g["w"] = tf.complex(tf.math.real(g["w"]), 2 * tf.math.imag(g["w"]))
        return g

    report = gc.check(loss, params, grad=wrong)
    assert report.verdict == "fail"
    assert report.failed_blocks == ["w.imag"]


# -- check_function: complex inputs and outputs ------------------------------------------------

_Z = _c([0.3 - 1.0j, 2.0 + 0.5j, -0.7 + 0.2j])
_X = tf.constant([0.2, -0.4, 1.1], tf.float64)


@pytest.mark.parametrize(
    ("fn", "inputs"),
    [
        (tf.signal.fft, (_Z,)),
        (tf.abs, (_Z,)),
        (tf.complex, (_X, 2 * _X)),
        (lambda z: tf.exp(z) * tf.math.conj(z), (_Z,)),
        (tf.signal.rfft, (_X,)),
    ],
    ids=["fft", "abs", "tf.complex", "nonholomorphic", "rfft"],
)
def test_correct_complex_functions_pass(fn: object, inputs: tuple) -> None:
    report = gc.check_function(fn, *inputs)
    assert report.verdict == "pass", report
    assert report.skipped == []


def _with_complex_output(factor: float) -> object:
    @tf.custom_gradient
    def f(x: tf.Tensor) -> tuple:
        y = tf.exp(tf.complex(tf.zeros_like(x), x))

        def grad(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
            # TensorFlow's convention: Re(b * conj(dy/dx)) for a real x
            return a * tf.cos(x) + factor * tf.math.real(b * tf.math.conj(1j * y))

        return (tf.sin(x), y), grad

    return f


def test_doubled_complex_backward_fails_naming_the_complex_output() -> None:
    report = gc.check_function(_with_complex_output(2.0), _X)
    assert report.verdict == "fail"
    assert report.failed_blocks == ["input0->output1"]
    assert any(f.kind == "scale" and f.block == "input0->output1" for f in report.findings)


def test_correct_complex_backward_passes() -> None:
    report = gc.check_function(_with_complex_output(1.0), _X)
    assert report.verdict == "pass", report


# -- the other causes ----------------------------------------------------------------------


def test_only_empty_inputs_is_a_pass_that_says_so() -> None:
    report = gc.check_function(lambda x: tf.reduce_sum(tf.sin(x)), tf.zeros((0, 3), tf.float64))
    assert report.verdict == "pass"
    assert report.skipped[0][0] == "input0" and "empty" in report.skipped[0][1]
    assert [f.kind for f in report.findings] == ["nothing_checked"]


def test_integer_and_unconnected_outputs_are_skipped_and_listed() -> None:
    def fn(x: tf.Tensor) -> tuple:
        return tf.sin(x), tf.argmax(x), tf.stop_gradient(x) * 2, x > 0

    report = gc.check_function(fn, _X)
    assert report.verdict == "pass"
    reasons = dict(report.skipped)
    assert list(reasons) == ["output1", "output2", "output3"]
    assert "no derivative" in reasons["output1"] and "no derivative" in reasons["output3"]
    assert "None" in reasons["output2"]
    assert {b.name for b in report.blocks} == {"input0->output0", "input0->output0 (jvp)"}


def test_broken_rule_is_still_caught_next_to_an_integer_output() -> None:
    @tf.custom_gradient
    def f(x: tf.Tensor) -> tuple:
        def grad(a: tf.Tensor, _: object) -> tf.Tensor:
            return a * tf.cos(x) * 1.1

        return (tf.sin(x), tf.argsort(x)), grad

    report = gc.check_function(f, _X)
    assert report.verdict == "fail"
    assert report.failed_blocks == ["input0->output0"]
    assert [s[0] for s in report.skipped] == ["output1"]


def test_minus_inf_entries_are_held_fixed() -> None:
    x = tf.constant([0.1, -np.inf, 0.5, -np.inf, 2.0], tf.float64)
    report = gc.check_function(tf.nn.softmax, x)
    assert report.verdict == "pass", report
    assert "2 non-finite entries (-inf) held fixed" in report.skipped[0][1]
    assert report.blocks[0].shape == (3,)
