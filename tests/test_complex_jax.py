"""JAX: complex values as (real, imaginary) pairs, empty inputs, integer outputs, non-finite entries."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import gradcheck_core as gc  # noqa: E402
from gradcheck_core.adapters import get_adapter  # noqa: E402

pytestmark = pytest.mark.jax

_complex = st.complex_numbers(max_magnitude=3.0, allow_nan=False, allow_infinity=False)


# -- the convention: JAX's pullback and jax.grad converted to the pair ----------------------


@settings(max_examples=15, deadline=None)
@given(_complex, _complex, _complex, _complex)
def test_vjp_of_a_linear_map_is_the_pair(a: complex, b: complex, u: complex, z: complex) -> None:
    # phi(z) = Re(conj(u) (a z + b conj(z))): dphi/dRe + 1j dphi/dIm = u conj(a) + conj(u) b
    adapter = get_adapter("jax")
    (g,) = adapter.vjp(lambda w: a * w + b * jnp.conj(w), [jnp.array([z])], [np.array([u])])
    np.testing.assert_allclose(g, [u * np.conj(a) + np.conj(u) * b], rtol=1e-12, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(_complex, _complex, _complex, _complex)
def test_jvp_along_a_complex_tangent(a: complex, b: complex, v: complex, z: complex) -> None:
    adapter = get_adapter("jax")
    (t,) = adapter.jvp(lambda w: a * w + b * jnp.conj(w), [jnp.array([z])], [np.array([v])])
    np.testing.assert_allclose(t, [a * v + b * np.conj(v)], rtol=1e-12, atol=1e-12)


def test_jax_grad_is_the_conjugate_of_the_pair() -> None:
    # The fact the adapter relies on, measured on JAX itself.
    z = jnp.array(1.0 + 2.0j)
    g = jax.grad(lambda w: jnp.real(w) ** 2 * 3 + jnp.imag(w) * jnp.real(w))(z)
    pair = (6 * 1.0 + 2.0) + 1j * 1.0  # dL/dRe + 1j dL/dIm
    assert complex(g) == pytest.approx(np.conj(pair))


# -- gc.check: complex parameters of a real loss ----------------------------------------------

_WEIGHTS = np.arange(1.0, 5.0)


def _loss(p: dict) -> jax.Array:
    z, w = p["z"], p["w"]
    return jnp.sum(jnp.abs(z) ** 2 * _WEIGHTS) + jnp.sum(z * w).real + jnp.sum(jnp.imag(w) ** 3)


def _pair_gradient(p: dict) -> dict:
    z, w = p["z"], p["w"]
    return {"z": 2 * _WEIGHTS * z + jnp.conj(w), "w": jnp.conj(z) + 3j * jnp.imag(w) ** 2}


def _params() -> dict:
    rng = np.random.default_rng(3)
    return {
        "z": jnp.asarray(rng.standard_normal(4) + 1j * rng.standard_normal(4), dtype=jnp.complex64),
        "w": jnp.asarray(rng.standard_normal(4) + 1j * rng.standard_normal(4), dtype=jnp.complex64),
    }


def test_complex_parameters_with_jax_grad_pass() -> None:
    report = gc.check(_loss, _params())
    assert report.verdict == "pass", report
    assert [b.name for b in report.blocks] == ["z.real", "z.imag", "w.real", "w.imag"]


def test_complex_parameters_handwritten_pair_passes_and_wrong_imaginary_part_fails() -> None:
    assert gc.check(_loss, _params(), grad=_pair_gradient).verdict == "pass"

    def wrong(p: dict) -> dict:
        g = _pair_gradient(p)
        g["w"] = jnp.real(g["w"]) + 2j * jnp.imag(g["w"])
        return g

    report = gc.check(_loss, _params(), grad=wrong)
    assert report.verdict == "fail"
    assert report.failed_blocks == ["w.imag"]
    assert any(f.kind == "scale" and f.block == "w.imag" for f in report.findings)


def test_jax_grad_passed_as_a_handwritten_gradient_fails_on_the_imaginary_parts() -> None:
    # jax.grad's value is the conjugate of the pair: a handwritten gradient is read as the pair.
    params = _params()
    report = gc.check(_loss, params, grad=jax.grad(_loss)(params))
    assert report.verdict == "fail"
    assert set(report.failed_blocks) == {"z.imag", "w.imag"}


# -- check_function: complex inputs and outputs ------------------------------------------------

_Z = jnp.array([0.3 - 1.0j, 2.0 + 0.5j, -0.7 + 0.2j])
_X = jnp.array([0.2, -0.4, 1.1])


@pytest.mark.parametrize(
    ("fn", "inputs"),
    [
        (jnp.fft.fft, (_Z,)),
        (jnp.fft.ifft, (_Z,)),
        (jnp.abs, (_Z,)),
        (jax.lax.complex, (_X, 2 * _X)),
        (lambda z: jnp.exp(z) * jnp.conj(z), (_Z,)),
        (lambda x: jnp.fft.rfft(x), (_X,)),
    ],
    ids=["fft", "ifft", "abs", "lax.complex", "nonholomorphic", "rfft"],
)
def test_correct_complex_functions_pass(fn: object, inputs: tuple) -> None:
    report = gc.check_function(fn, *inputs)
    assert report.verdict == "pass", report
    assert report.skipped == []


def test_complex_input_blocks_are_named_by_part() -> None:
    report = gc.check_function(jnp.abs, _Z)
    assert [b.name for b in report.blocks][:2] == ["input0.real->output0", "input0.imag->output0"]


def _with_complex_output(factor: float) -> object:
    @jax.custom_vjp
    def f(x: jax.Array) -> tuple:
        return jnp.sin(x), jnp.exp(1j * x)

    def forward(x: jax.Array) -> tuple:
        return f(x), x

    def backward(x: jax.Array, cts: tuple) -> tuple:
        a, b = cts
        # JAX's unconjugated pullback of exp(ix) for a real x: Re(b * i exp(ix))
        return (a * jnp.cos(x) + factor * jnp.real(b * 1j * jnp.exp(1j * x)),)

    f.defvjp(forward, backward)
    return f


def test_doubled_complex_backward_fails_naming_the_complex_output() -> None:
    report = gc.check_function(_with_complex_output(2.0), _X)
    assert report.verdict == "fail"
    assert report.failed_blocks == ["input0->output1"]
    assert any(f.kind == "scale" and f.block == "input0->output1" for f in report.findings)


def test_correct_complex_backward_passes() -> None:
    report = gc.check_function(_with_complex_output(1.0), _X)
    assert report.verdict == "pass", report
    assert {b.name for b in report.blocks} == {"input0->output0", "input0->output1"}


def test_complex_jvp_rule_is_checked() -> None:
    @jax.custom_jvp
    def f(z: jax.Array) -> jax.Array:
        return z * z

    @f.defjvp
    def f_jvp(primals: tuple, tangents: tuple) -> tuple:
        (z,), (t,) = primals, tangents
        return z * z, 2 * z * jnp.conj(t)  # conj(t): wrong for a holomorphic z**2

    report = gc.check_function(f, _Z)
    assert report.verdict == "fail"
    assert any(f.kind == "forward_mode" for f in report.findings)


# -- the other causes ----------------------------------------------------------------------


def test_only_empty_inputs_is_a_pass_that_says_so() -> None:
    report = gc.check_function(lambda x: jnp.sum(jnp.sin(x)), jnp.zeros((0, 3)))
    assert report.verdict == "pass"
    assert report.skipped[0][0] == "input0" and "empty" in report.skipped[0][1]
    assert [f.kind for f in report.findings] == ["nothing_checked"]


def test_empty_input_next_to_a_non_empty_one_is_skipped() -> None:
    report = gc.check_function(lambda x, e: jnp.sin(x) + jnp.sum(e), _X, jnp.zeros(0))
    assert report.verdict == "pass"
    assert [s[0] for s in report.skipped] == ["input1"]
    assert [b.name for b in report.blocks] == ["input0->output0", "input0->output0 (jvp)"]


def test_integer_and_boolean_outputs_are_skipped_and_listed() -> None:
    report = gc.check_function(lambda x: (jnp.sin(x), jnp.argmax(x), x > 0), _X)
    assert report.verdict == "pass"
    assert [s[0] for s in report.skipped] == ["output1", "output2"]
    assert all("no derivative" in why for _, why in report.skipped)
    assert all(b.name.endswith("output0") or b.name.endswith("output0 (jvp)") for b in report.blocks)


def test_broken_rule_is_still_caught_next_to_an_integer_output() -> None:
    @jax.custom_vjp
    def f(x: jax.Array) -> tuple:
        return jnp.sin(x), jnp.argsort(x)

    f.defvjp(lambda x: (f(x), x), lambda x, cts: (cts[0] * jnp.cos(x) * 1.1,))
    report = gc.check_function(f, _X)
    assert report.verdict == "fail"
    assert report.failed_blocks == ["input0->output0"]
    assert [s[0] for s in report.skipped] == ["output1"]


def test_stop_gradient_output_is_checked_not_skipped() -> None:
    # JAX declares lax.stop_gradient differentiable (with derivative zero): it is not left out.
    report = gc.check_function(lambda x: (jnp.sin(x), jax.lax.stop_gradient(x) * 0.0 + 1.0), _X)
    assert report.skipped == []
    assert "input0->output1" in [b.name for b in report.blocks]
    assert report.verdict != "fail", report  # a zero derivative that finite differences confirm


def test_minus_inf_entries_are_held_fixed() -> None:
    x = jnp.array([0.1, -jnp.inf, 0.5, -jnp.inf, 2.0])
    report = gc.check_function(jax.nn.softmax, x)
    assert report.verdict == "pass", report
    assert report.skipped[0][0] == "input0"
    assert "2 non-finite entries (-inf) held fixed" in report.skipped[0][1]
    assert report.blocks[0].shape == (3,)


def test_wrong_rule_with_minus_inf_entries_fails() -> None:
    @jax.custom_vjp
    def softmax(x: jax.Array) -> jax.Array:
        return jax.nn.softmax(x)

    def backward(y: jax.Array, ct: jax.Array) -> tuple:
        return (y * ct,)  # the -y * sum(y * ct) term is missing

    softmax.defvjp(lambda x: (softmax(x), softmax(x)), backward)
    report = gc.check_function(softmax, jnp.array([0.1, -jnp.inf, 0.5, 2.0]))
    assert report.verdict == "fail"
    assert report.failed_blocks == ["input0->output0"]


def _loop(step: object) -> object:
    def fn(x: jax.Array) -> jax.Array:
        def body(state: tuple) -> tuple:
            i, v = state
            return i + 1, step(v)

        return jax.lax.while_loop(lambda s: s[0] < 3, body, (0, x))[1]

    return fn


def test_forward_only_function_gets_its_vjps_from_forward_mode() -> None:
    # lax.while_loop has no reverse mode: the products come from jax.jvp, and are still checked.
    assert gc.check_function(_loop(lambda v: jnp.sin(v) * 1.1), _X).verdict == "pass"
    assert gc.check_function(_loop(lambda v: jnp.exp(1j * v) * v), _Z).verdict == "pass"

    @jax.custom_jvp
    def wrong_sin(v: jax.Array) -> jax.Array:
        return jnp.sin(v)

    wrong_sin.defjvp(lambda p, t: (jnp.sin(p[0]), 1.3 * jnp.cos(p[0]) * t[0]))
    report = gc.check_function(_loop(wrong_sin), _X)
    assert report.verdict == "fail"
    assert "input0->output0" in report.failed_blocks


def test_minus_inf_entries_held_fixed_reach_fn_as_jax_arrays() -> None:
    def masked(x: jax.Array) -> jax.Array:
        return jax.nn.softmax(x.at[0].multiply(2.0))

    report = gc.check_function(masked, jnp.array([0.3, -jnp.inf, 1.5, 0.2], dtype=jnp.float32))
    assert report.verdict == "pass", report
    assert report.blocks[0].shape == (3,)


def test_the_users_32_bit_jax_still_runs_after_a_check() -> None:
    # JAX keys some compiled programs without the 64-bit switch: a check must not leave
    # the user's 32-bit call of the same function running a 64-bit program.
    index = np.array([2, 0, 3, 3, 1])

    def take(x):  # type: ignore[no-untyped-def]
        return jnp.take(x, index)

    x = jnp.asarray(np.random.default_rng(0).standard_normal(6).astype(np.float32))
    assert gc.check_function(take, x).passed
    np.testing.assert_array_equal(np.asarray(take(x)), np.asarray(x)[index])


def test_a_function_the_user_compiled_before_a_check_is_not_traced_again_after_it() -> None:
    # The staging caches that keep 64-bit traces are cleared after a check in 32-bit JAX;
    # the user's compiled programs are not: their next call neither traces nor compiles.
    traces = []

    @jax.jit
    def step(w, x):  # type: ignore[no-untyped-def]
        traces.append(1)  # runs only while JAX traces the function
        return jnp.sum(jnp.tanh(x @ w))

    w, x = jnp.ones((4, 3), dtype=jnp.float32) * 0.1, jnp.ones((2, 4), dtype=jnp.float32)
    before = float(step(w, x))
    index = np.array([2, 0, 3, 3, 1])
    assert gc.check_function(lambda v: jnp.take(v, index), jnp.linspace(0.1, 0.6, 6)).passed
    assert gc.check(lambda p: jnp.sum(jnp.tanh(x @ p) ** 2), w, mode="full").passed
    assert float(step(w, x)) == before
    assert traces == [1]
    assert not jax.config.read("jax_enable_x64")


def test_single_operations_run_after_a_check_without_being_compiled_again() -> None:
    compiled: list[str] = []

    def listen(event: str, seconds: float, **kwargs: object) -> None:
        if "backend_compile" in event:
            compiled.append(event)

    a = jnp.linspace(0.1, 0.9, 7, dtype=jnp.float32)
    np.asarray(jnp.cosh(a) * 3.0)  # each operation compiled once, before the check
    assert gc.check_function(jnp.sinh, jnp.linspace(0.2, 0.8, 5)).passed
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        np.asarray(jnp.cosh(a) * 3.0)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiled == []
