"""The JAX adapter: custom rules, pytrees, float64 evaluation, global state."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import gradcheck_core as gc  # noqa: E402
from gradcheck_core.errors import InputError  # noqa: E402

pytestmark = pytest.mark.jax


# -- functions under test ------------------------------------------------------
def make_softplus(broken: bool = False):
    """softplus(x) = log(1 + exp(x)) with a custom JVP rule (slope sigmoid(x))."""

    @jax.custom_jvp
    def softplus(x):
        return jnp.log1p(jnp.exp(x))

    @softplus.defjvp
    def softplus_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        slope = jax.nn.sigmoid(-x) if broken else jax.nn.sigmoid(x)
        return softplus(x), slope * t

    return softplus


def make_scaled_sine(broken: bool = False):
    """f(x, y) = x * sin(y) with a custom VJP; ``broken`` forgets x in y's cotangent."""

    @jax.custom_vjp
    def f(x, y):
        return x * jnp.sin(y)

    def f_fwd(x, y):
        return f(x, y), (x, y)

    def f_bwd(res, g):
        x, y = res
        gy = g * jnp.cos(y) if broken else g * x * jnp.cos(y)
        return g * jnp.sin(y), gy

    f.defvjp(f_fwd, f_bwd)
    return f


def numeric_jvp(fn, x, v, h=1e-6):
    x = np.asarray(x, dtype=np.float64)
    return (np.asarray(fn(x + h * v), np.float64) - np.asarray(fn(x - h * v), np.float64)) / (2 * h)


class Dense(NamedTuple):
    w: object
    b: object


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.standard_normal((16, 4)), dtype=jnp.float32)
    y = jnp.asarray(rng.standard_normal(16), dtype=jnp.float32)
    params = {
        "enc": {
            "W": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32),
            "b": jnp.full(3, 0.1, jnp.float32),
        },
        "dec": {"layers": [jnp.asarray(rng.standard_normal(3), jnp.float32), jnp.asarray(0.2, jnp.float32)]},
        "head": Dense(jnp.asarray(rng.standard_normal(2), jnp.float32), jnp.zeros((), jnp.float32)),
    }
    return X, y, params


def mlp_loss(p, X, y):
    h = jnp.tanh(X @ p["enc"]["W"] + p["enc"]["b"])
    pred = h @ p["dec"]["layers"][0] + p["dec"]["layers"][1]
    extra = jnp.sum(p["head"].w ** 2) * p["head"].b + jnp.sum(p["head"].w)
    return jnp.mean((pred - y) ** 2) + 0.1 * extra


# -- custom_jvp / custom_vjp -----------------------------------------------------
def test_custom_jvp_softplus_correct_rule_passes():
    x = jnp.linspace(-3.0, 4.0, 9, dtype=jnp.float32)
    report = gc.check_function(make_softplus(), x)
    assert report.verdict == "pass", str(report)
    assert [b.name for b in report.blocks if "jvp" not in b.name] == ["input0->output0"]
    assert all(b.passed for b in report.blocks)
    assert report.rel_error < 1e-8
    # The same rule inside a loss, through jax.grad.
    loss_report = gc.check(lambda p: jnp.sum(make_softplus()(p) ** 2), x)
    assert loss_report.passed and loss_report.rel_error < 1e-8


def test_custom_jvp_softplus_broken_rule_fails():
    x = jnp.linspace(-3.0, 4.0, 9, dtype=jnp.float32)
    report = gc.check_function(make_softplus(broken=True), x)
    assert report.verdict == "fail"
    (block,) = [b for b in report.blocks if b.name == "input0->output0"]
    assert not block.passed
    # sigmoid(-x) equals sigmoid(x) only at x = 0, which is not on the grid: every entry is wrong.
    assert block.n_bad == block.n_checked == 9
    # Forward mode, where the core checks it, uses the same (wrong) rule.
    assert all(not b.passed for b in report.blocks if "jvp" in b.name)
    loss_report = gc.check(lambda p: jnp.sum(make_softplus(broken=True)(p)), x)
    assert loss_report.verdict == "fail" and loss_report.rel_error > 0.1


def test_custom_vjp_wrong_in_one_argument_marks_only_that_argument():
    x = jnp.array([0.5, 1.5, -2.0, 3.0], jnp.float32)
    y = jnp.array([0.3, -1.2, 2.0, 0.7], jnp.float32)
    good = gc.check_function(make_scaled_sine(), x, y)
    assert good.verdict == "pass", str(good)
    report = gc.check_function(make_scaled_sine(broken=True), x, y)
    by_name = {b.name: b for b in report.blocks}
    # custom_vjp has no forward mode: only reverse-mode blocks.
    assert set(by_name) == {"input0->output0", "input1->output0"}
    assert by_name["input0->output0"].passed
    assert not by_name["input1->output0"].passed
    assert by_name["input1->output0"].n_bad == 4
    assert report.verdict == "fail"


def test_jvp_follows_the_custom_rule_and_refuses_custom_vjp():
    from gradcheck_core.adapters.jax import ADAPTER

    x = np.linspace(-2.0, 2.0, 5)
    v = np.random.default_rng(1).standard_normal(5)
    good, bad = make_softplus(), make_softplus(broken=True)
    expected = numeric_jvp(lambda z: np.log1p(np.exp(z)), x, v)
    (t_good,) = ADAPTER.jvp(good, [jnp.asarray(x, jnp.float32)], [v])
    (t_bad,) = ADAPTER.jvp(bad, [jnp.asarray(x, jnp.float32)], [v])
    assert t_good.dtype == np.float64
    np.testing.assert_allclose(t_good, expected, rtol=1e-8)
    assert np.max(np.abs(t_bad - expected)) > 0.1
    with pytest.raises(InputError, match="custom_vjp"):
        ADAPTER.jvp(make_scaled_sine(), [jnp.ones(2), jnp.ones(2)], [np.ones(2), None])


def test_vjp_per_input_at_float64():
    from gradcheck_core.adapters.jax import ADAPTER

    x = jnp.array([0.5, 1.5], jnp.float32)
    y = jnp.array([0.3, -1.2], jnp.float32)
    u = np.array([1.0, -2.0])
    gx, gy = ADAPTER.vjp(make_scaled_sine(), [x, y], [u])
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    np.testing.assert_allclose(gx, u * np.sin(y64), rtol=1e-14)
    np.testing.assert_allclose(gy, u * x64 * np.cos(y64), rtol=1e-14)
    assert gx.dtype == gy.dtype == np.float64


# -- pytrees and names ---------------------------------------------------------------
def test_nested_dict_params_named_and_checked(data):
    X, y, params = data
    report = gc.check(lambda p: mlp_loss(p, X, y), params)
    assert [b.name for b in report.blocks] == [
        "enc.W",
        "enc.b",
        "dec.layers[0]",
        "dec.layers[1]",
        "head.w",
        "head.b",
    ]
    assert [b.shape for b in report.blocks] == [(4, 3), (3,), (3,), (), (2,), ()]
    assert report.passed and report.rel_error < 1e-8, str(report)


def test_handwritten_gradient_wrong_in_one_leaf_marks_that_leaf(data):
    X, y, params = data

    def grad(p):
        g = jax.jit(jax.grad(mlp_loss))(p, X, y)
        g["enc"]["b"] = 2.0 * g["enc"]["b"]
        return g

    report = gc.check(lambda p: mlp_loss(p, X, y), params, grad=grad)
    failed = [b.name for b in report.blocks if not b.passed]
    assert failed == ["enc.b"]
    scale = [f for f in report.findings if f.kind == "scale"]
    assert scale and scale[0].block == "enc.b" and abs(scale[0].detail["factor"] - 2.0) < 1e-6


def test_registered_pytree_node_is_rebuilt_for_the_loss():
    @jax.tree_util.register_dataclass
    @dataclasses.dataclass
    class Layer:
        w: jax.Array
        b: jax.Array

    seen = []

    def loss(p):
        seen.append(type(p["layer"]))
        return jnp.sum(jnp.sin(p["layer"].w) * p["layer"].b) + jnp.sum(p["scale"] ** 2)

    params = {
        "layer": Layer(jnp.arange(3.0, dtype=jnp.float32), jnp.full(3, 0.5, jnp.float32)),
        "scale": jnp.ones(2),
    }
    report = gc.check(loss, params)
    assert [b.name for b in report.blocks] == ["layer.w", "layer.b", "scale"]
    assert report.passed, str(report)
    assert set(seen) == {Layer}


# -- float64 evaluation --------------------------------------------------------------
def test_float32_params_are_checked_in_float64(data):
    X, y, params = data
    before = jax.tree_util.tree_map(lambda a: np.array(a), params)
    report = gc.check(lambda p: mlp_loss(p, X, y), params)
    assert report.passed and report.rel_error < 1e-8
    assert not [f for f in report.findings if f.kind == "low_precision"]
    for old, new in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(params)):
        assert new.dtype == jnp.float32
        np.testing.assert_array_equal(old, np.asarray(new))


def test_values_seen_by_the_loss_are_float64_with_constants_following(data):
    seen = []

    def loss(p):
        const = jnp.array([1.0, 2.0, 3.0])  # created inside: follows the 64-bit mode
        seen.append((p.dtype, const.dtype))
        return jnp.sum(jnp.exp(p) * const)

    gc.check(loss, jnp.zeros(3, jnp.float32))
    assert set(seen) == {(np.dtype("float64"), np.dtype("float64"))}


def test_float32_cast_inside_the_loss_is_reported(data):
    X, y, _ = data
    w = jnp.asarray(np.random.default_rng(2).standard_normal(4), jnp.float32)

    def loss(p):
        return jnp.mean((X @ p.astype(X.dtype) - y) ** 2)

    # X is captured float32 data, given to the loss in float64: a dtype taken from it is float64.
    report = gc.check(loss, w)
    assert report.verdict == "pass" and report.rel_error < 1e-8
    assert not [f for f in report.findings if f.kind == "low_precision"]

    report = gc.check(lambda p: jnp.mean((X @ p.astype(jnp.float32) - y) ** 2), w)
    assert report.verdict != "fail"
    low = [f for f in report.findings if f.kind == "low_precision"]
    assert low, str(report)
    reasons = " ".join(low[0].detail["reasons"])
    assert "float32" in reasons and "first convert_element_type" in reasons

    # Cast down and back up: the output is float64, the operations in between are not.
    report = gc.check(lambda p: jnp.sum(jnp.sin(p.astype(jnp.float32))).astype(jnp.float64), w)
    low = [f for f in report.findings if f.kind == "low_precision"]
    assert low and "compute in float32 (first convert_element_type, sin" in low[0].message
    # Float32 data without a cast is promoted to float64: nothing to report.
    report = gc.check(lambda p: jnp.mean((X @ p - y) ** 2), w)
    assert not [f for f in report.findings if f.kind == "low_precision"] and report.rel_error < 1e-8


def test_x64_flag_unchanged_afterwards_also_after_an_exception():
    x = jnp.linspace(0.1, 1.0, 5, dtype=jnp.float32)
    for flag in (False, True):
        jax.config.update("jax_enable_x64", flag)
        try:
            gc.check(lambda p: jnp.sum(jnp.sin(p) ** 2), x)
            assert jax.config.jax_enable_x64 is flag

            calls = []

            def failing(p):  # evaluated point by point (numpy inside), fails mid-sweep
                calls.append(1)  # noqa: B023 - called within this iteration
                if len(calls) > 6:  # noqa: B023 - called within this iteration
                    raise ValueError("broken inside the loss")
                return float(np.sum(np.asarray(p) ** 2))

            with pytest.raises(ValueError, match="broken inside"):
                gc.check(failing, x, grad=lambda p: 2 * p)
            assert len(calls) == 7
            assert jax.config.jax_enable_x64 is flag

            def mismatched(p):  # fails while being traced, and again when called
                return jnp.sum(p @ jnp.ones((4, 2)))

            with pytest.raises(TypeError):
                gc.check(mismatched, x)
            assert jax.config.jax_enable_x64 is flag

            def interrupted(p):
                raise KeyboardInterrupt

            with pytest.raises(KeyboardInterrupt):
                gc.check(interrupted, x)
            assert jax.config.jax_enable_x64 is flag
            assert jnp.zeros(1).dtype == (jnp.float64 if flag else jnp.float32)
        finally:
            jax.config.update("jax_enable_x64", False)


def test_numpy_rng_state_is_replayed_and_restored():
    np.random.seed(3)
    state = np.random.get_state()[1].copy()

    def loss(p):
        noise = np.random.standard_normal(3)  # fixed by the replayed global state
        return jnp.sum(p**2 * jnp.asarray(noise))

    report = gc.check(loss, jnp.array([0.3, -0.4, 0.5]))
    assert not [f for f in report.findings if f.kind == "nondeterministic"]
    assert report.passed
    np.testing.assert_array_equal(np.random.get_state()[1], state)


# -- errors ---------------------------------------------------------------------------
def test_zero_argument_loss_gets_a_clear_error():
    w = jnp.ones(3)
    with pytest.raises(InputError, match=r"immutable.*loss\(p\)"):
        gc.check(lambda: jnp.sum(w**2), w)


def test_mixed_jax_and_numpy_params_are_refused():
    with pytest.raises(InputError, match="mixes frameworks"):
        gc.check(lambda p: jnp.sum(p["w"]) + np.sum(p["b"]), {"w": jnp.ones(2), "b": np.ones(2)})


def test_untraceable_loss_needs_grad_and_works_with_it():
    seen = []

    def loss(p):
        seen.append(isinstance(p, jax.Array) and not isinstance(p, np.ndarray))
        scale = float(jnp.sum(p)) > 0  # Python branch on a value: no jax.grad, no jit
        return jnp.sum(p**3) if scale else jnp.sum(p**2)

    x = jnp.array([0.5, 1.0, 2.0])
    with pytest.raises(InputError, match=r"jax\.grad"):
        gc.check(loss, x)
    report = gc.check(loss, x, grad=lambda p: 3 * p**2)
    assert report.passed, str(report)
    assert seen and all(seen)  # called with JAX arrays, not numpy


# -- batched evaluation ------------------------------------------------------------
def test_batched_evaluation_matches_single_calls():
    import gradcheck_core.adapters.jax as jax_adapter

    rng = np.random.default_rng(4)
    A = jnp.asarray(rng.standard_normal((20, 40)))
    params = {"w": jnp.asarray(rng.standard_normal(40), jnp.float32), "c": jnp.ones(())}

    def loss(p):
        return jnp.sum(jnp.tanh(A @ p["w"]) * p["c"])

    with jax_adapter.ADAPTER.target(loss, params) as target:
        assert target.evaluate_batch is not None
        rows = target.flat.x0 + 1e-3 * rng.standard_normal((37, target.flat.n))
        batched = target.evaluate_batch(rows)
        single = np.array([float(target.evaluate(r)) for r in rows])
        np.testing.assert_allclose(batched, single, rtol=1e-12)
        again = target.evaluate_batch(rows[:25])  # padded to a size compiled for the first call
        np.testing.assert_allclose(again, single[:25], rtol=1e-12)
    report = gc.check(loss, params)
    assert report.passed and report.rel_error < 1e-8


def test_untraceable_loss_falls_back_to_single_calls():
    import gradcheck_core.adapters.jax as jax_adapter

    def loss(p):
        return float(np.sum(np.asarray(p) ** 2))  # numpy inside: cannot be traced

    x = jnp.arange(1.0, 41.0)
    with jax_adapter.ADAPTER.target(loss, x) as target:
        assert target.evaluate_batch is None
    report = gc.check(loss, x, grad=lambda p: 2 * p)
    assert report.passed


def test_a_loss_returning_a_list_is_named_as_such() -> None:
    with pytest.raises(InputError) as info:
        gc.check(lambda p: [jnp.sum(p["w"] ** 2)], {"w": jnp.ones(3)})
    message = str(info.value)
    assert "returned a list (1 entry), not a scalar" in message
    assert "float()" not in message


def test_nan_entries_of_a_jax_output_are_left_out_and_the_rest_checked():
    x = np.array([[0.5, -1.0, 2.0], [3.0, 0.25, -0.5]])
    report = gc.check_function(jnp.log, x)
    assert report.verdict == "pass", str(report)
    ((what, why),) = report.skipped
    assert what == "output0" and "2 of 6 entries are non-finite (nan)" in why


def test_jax_output_nan_everywhere_is_inconclusive_and_says_why():
    report = gc.check_function(lambda b: jnp.power(b, 0.5), np.array([-4.8, -7.6]))
    assert report.verdict == "inconclusive", str(report)
    assert [f.kind for f in report.findings] == ["non_finite_output"]


def test_a_loss_checked_again_compiles_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second check of the same program reuses what the first compiled, with the same verdict."""
    from jax._src import stages

    X = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
    loss = lambda p: jnp.sum(jnp.tanh(X @ p["w"]) ** 2)  # noqa: E731
    params = {"w": jnp.linspace(0.1, 0.8, 8).reshape(4, 2)}
    first = gc.check(loss, params, mode="full")
    compiled: list[object] = []
    original = stages.Lowered.compile

    def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        compiled.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(stages.Lowered, "compile", counted)
    again = gc.check(lambda p: jnp.sum(jnp.tanh(X @ p["w"]) ** 2), params, mode="full")  # a new lambda
    assert first.verdict == again.verdict == "pass"
    assert first.nfev == again.nfev
    assert compiled == []


def test_check_function_compiles_a_function_of_many_operations_as_a_few_programs() -> None:
    """Its JVP and VJP are one compiled program each, not one per operation, and kept for the next check."""
    import jax.scipy.special as jss

    compiled: list[str] = []

    def listen(event: str, seconds: float, **kwargs: object) -> None:
        if "backend_compile" in event:
            compiled.append(event)

    def many(x):  # type: ignore[no-untyped-def]
        y = jnp.sin(x) * jnp.cosh(x) + jnp.arctan(x) ** 2
        y = y / (1.0 + jnp.exp(-x)) + jnp.log1p(x * x) - jnp.tanh(y)
        return jnp.sqrt(1.0 + y * y) + jss.erf(x) * jnp.expm1(0.1 * x)

    x = jnp.linspace(0.2, 0.9, 13)
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        first = gc.check_function(many, x)
        programs = len(compiled)
        compiled.clear()
        again = gc.check_function(many, x)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert first.verdict == again.verdict == "pass"
    assert programs <= 10  # run operation by operation, its JVP and VJP compiled about 40
    assert compiled == []
    wrong = jax.custom_jvp(many)
    wrong.defjvp(lambda primals, tangents: (many(primals[0]), 1.01 * jax.jvp(many, primals, tangents)[1]))
    assert not gc.check_function(wrong, x).passed


def test_check_function_checked_again_runs_none_of_the_functions_python() -> None:
    """The projections are evaluated as they are, never traced: a second check runs compiled code only."""
    calls: list[int] = []

    def counted(x):  # type: ignore[no-untyped-def]
        calls.append(1)  # runs while JAX traces the function, not when its program runs
        return jnp.tanh(x) * jnp.sin(x)

    x = jnp.linspace(-1.0, 1.0, 7)
    first = gc.check_function(counted, x)
    calls.clear()
    again = gc.check_function(counted, x)
    assert first.verdict == again.verdict == "pass"
    assert first.nfev == again.nfev
    assert calls == []


def test_a_compiled_function_gives_numpy_and_jax_inputs_the_same_outputs() -> None:
    from gradcheck_core.adapters.jax.adapter import ADAPTER
    from gradcheck_core.adapters.jax.x64_mode import x64

    def fn(x, y):  # type: ignore[no-untyped-def]
        return jnp.sin(x) @ y, jnp.cumsum(x * x)

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(5), rng.standard_normal((5, 3))
    from_numpy = ADAPTER.call(fn, [x, y])
    with x64():  # JAX arrays holding the same float64 values
        inputs = [jnp.asarray(x), jnp.asarray(y)]
    from_jax = ADAPTER.call(fn, inputs)
    for a, b in zip(from_numpy, from_jax, strict=True):
        assert a.dtype == b.dtype == np.float64
        assert a.tobytes() == b.tobytes()


def test_a_kept_program_is_not_used_once_the_captured_data_changed() -> None:
    """Data the loss closes over is part of the program: new values, a new program, the right verdict."""
    X = np.ones(6)
    loss = lambda p: jnp.sum(jnp.asarray(X) * p**2)  # noqa: E731
    p = jnp.linspace(0.5, 1.5, 6)
    assert gc.check(loss, p, 2 * X * p, mode="full").verdict == "pass"
    X[:] = 2.0  # the same loss object, other data
    assert gc.check(loss, p, 2 * X * p, mode="full").verdict == "pass"
    assert gc.check(loss, p, 2 * np.ones(6) * p, mode="full").verdict == "fail"


def _callback_vjp_loss(factor: float):
    """A loss whose custom VJP computes its gradient on the host (``pure_callback``), times ``factor``."""

    @jax.custom_vjp
    def f(x):
        return jnp.sum(jnp.sin(x))

    def fwd(x):
        return f(x), x

    def bwd(x, g):
        cos = jax.pure_callback(
            lambda a: (np.cos(np.asarray(a)) * factor).astype(a.dtype),
            jax.ShapeDtypeStruct(x.shape, x.dtype),
            x,
        )
        return (g * cos,)

    f.defvjp(fwd, bwd)
    return f


def test_programs_that_differ_only_in_a_host_callback_are_not_confused() -> None:
    """JAX prints a callback's address masked: the same jaxpr text, another function, another program."""
    x = jnp.linspace(0.1, 0.9, 5)
    assert gc.check(_callback_vjp_loss(1.0), x, mode="full").verdict == "pass"
    wrong = gc.check(_callback_vjp_loss(1.5), x, mode="full")
    assert wrong.verdict == "fail" and wrong.findings[0].kind == "scale"
    assert gc.check(_callback_vjp_loss(1.0), x, mode="fast").verdict == "pass"
    assert gc.check(_callback_vjp_loss(1.5), x, mode="fast").verdict == "fail"


def _sweep_loss():
    A = jnp.asarray(np.random.default_rng(7).standard_normal((30, 48)))
    return lambda p: jnp.sum(jnp.tanh(A @ p["w"]) ** 2) + jnp.sum(p["b"] ** 3)


def _sweep_params():
    rng = np.random.default_rng(8)
    return {"w": jnp.asarray(rng.standard_normal(48)), "b": jnp.asarray(rng.standard_normal(6))}


def test_a_full_sweep_builds_its_points_in_one_compiled_program(monkeypatch: pytest.MonkeyPatch) -> None:
    """The moved points are built by XLA from the start: no matrix of rows, no rows program compiled."""
    from gradcheck_core.adapters.jax import batching

    tried: list[int] = []
    original = batching.BatchedEvaluation._try_batch

    def counted(self, rows):  # type: ignore[no-untyped-def]
        tried.append(len(rows))
        return original(self, rows)

    monkeypatch.setattr(batching.BatchedEvaluation, "_try_batch", counted)
    report = gc.check(_sweep_loss(), _sweep_params(), mode="full")
    assert report.verdict == "pass", str(report)
    assert tried == []

    # the same check through the rows path (the points built on the host): the same figures
    monkeypatch.setattr(batching.BatchedEvaluation, "evaluate_shifted", lambda self, x, idx, shift: None)
    rows = gc.check(_sweep_loss(), _sweep_params(), mode="full")
    assert tried, "the rows path was not taken"
    assert rows.verdict == "pass" and rows.nfev == report.nfev
    assert rows.rel_error == pytest.approx(report.rel_error, rel=1e-6, abs=1e-12)
    for a, b in zip(report.blocks, rows.blocks):
        assert a.name == b.name and a.rel_error == pytest.approx(b.rel_error, rel=1e-6, abs=1e-12)


def test_a_loss_the_moved_points_cannot_be_built_for_is_swept_by_rows() -> None:
    """A host callback without a batching rule: the compiled moves fail, the rows path decides, the verdict holds."""
    host_calls = [0]

    def host(v: Any) -> Any:
        host_calls[0] += 1
        return np.asarray(np.tanh(v), dtype=v.dtype)

    def loss(p: Any) -> Any:
        y = jax.pure_callback(host, jax.ShapeDtypeStruct(p.shape, p.dtype), p)  # no vmap_method
        return jnp.sum(y**2)

    x = jnp.linspace(-1.0, 1.0, 40)
    right = gc.check(loss, x, lambda p: 2 * np.tanh(p) * (1 - np.tanh(p) ** 2), mode="full")
    assert right.verdict == "pass", str(right)
    assert host_calls[0] >= right.nfev  # every point evaluated by a single call
    wrong = gc.check(loss, x, lambda p: 3 * np.tanh(p) * (1 - np.tanh(p) ** 2), mode="full")
    assert wrong.verdict == "fail"


def test_block_size_trial_keeps_the_faster_of_two_sizes() -> None:
    """The decision alone, on measured times given to it: the wider block only where clearly faster
    than the budget's calls on both sides of it."""
    import types

    from gradcheck_core.adapters.jax import batching

    calls = batching.TRIAL_CALLS

    def state(before: list[float], there: list[float], after: list[float] | None = None) -> Any:
        marks = None if after is None else [len(before), len(before)]
        return types.SimpleNamespace(
            max_rows=8,
            compiled=True,
            device=None,
            single=object(),  # not a kept program: its notes are a fresh dict
            shifted_seconds={8: before + (after or []), 16: there},
            shifted_executables={8: object(), 16: object()},
            flat=types.SimpleNamespace(n=10_000),
            shifted_done=0,
            trial_marks=marks,
            fresh_sizes=set(),
            sweep_rows=None,
            _trial_pays=lambda *args: True,
        )

    decide = batching.BatchedEvaluation._tuned_rows
    assert decide(state([1.0] * (calls - 1), []), 1000) == 8  # the budget's block is still being timed
    assert decide(state([1.0] * calls, []), 1000) == 16  # then the wider one
    assert decide(state([1.0] * calls, [0.5] * (calls - 1), []), 1000) == 16
    assert decide(state([1.0] * calls, [0.5] * calls, [1.0] * (calls - 1)), 1000) == 8  # the budget's again
    assert decide(state([1.0] * calls, [0.5] * calls, [1.0] * calls), 1000) == 16
    assert decide(state([1.0] * calls, [0.99] * calls, [1.0] * calls), 1000) == 8  # within the noise
    assert decide(state([1.0] * calls, [2.0] * calls, [1.0] * calls), 1000) == 8
    # the machine slowed down during the trial: the wider block is judged against both sides
    assert decide(state([1.0] * calls, [1.2] * calls, [2.0] * calls), 1000) == 16
    assert decide(state([2.0] * calls, [1.8] * calls, [1.0] * calls), 1000) == 8
    # not tried where a compile is not known to pay
    never = state([1.0] * calls, [])
    never._trial_pays = lambda *args: False
    assert decide(never, 1000) == 8
    # a wider block compiled during this sweep: chosen for this sweep, not noted for the next checks
    fresh = state([1.0] * calls, [0.5] * calls, [1.0] * calls)
    fresh.fresh_sizes = {16}
    assert decide(fresh, 1000) == 16 and fresh.sweep_rows == 16


def test_a_long_cpu_sweep_tries_a_wider_block_and_later_checks_keep_the_choice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sweep of several blocks times two sizes, notes the faster with the compiled loss, and the next
    check of the same loss runs at it without a trial; the figures are those of the budget's block."""
    from gradcheck_core.adapters.jax import batching, programs

    A = jnp.asarray(np.random.default_rng(3).standard_normal((20, 300)))

    def loss(p: Any) -> Any:
        return jnp.sum(jnp.tanh(A @ p["w"]) ** 2)

    params = {"w": jnp.asarray(np.random.default_rng(4).standard_normal(300))}
    monkeypatch.setitem(batching.BATCH_MEMORY, "cpu", 8 * 8 * 300)  # blocks of at most 8 points
    monkeypatch.setattr(batching, "TRIAL_WORTH", 0.0)  # worth a trial however short the sweep
    monkeypatch.setattr(batching, "TRIAL_CALLS", 3)  # and room for it in 600 points
    seen: dict[str, Any] = {}
    sizes: list[int] = []
    original = batching.BatchedEvaluation._shifted_padded

    def spy(self, base, i, s):  # type: ignore[no-untyped-def]
        seen["runner"] = self
        sizes.append(len(i))
        return original(self, base, i, s)

    monkeypatch.setattr(batching.BatchedEvaluation, "_shifted_padded", spy)
    first = gc.check(loss, params, mode="full")
    budget = seen["runner"].max_rows
    assert first.verdict == "pass", str(first)
    assert 2 * budget in sizes  # the wider block was tried
    # compiled during that sweep, the wider block is tried again by the next check, which notes the choice
    assert "sweep_rows" not in programs.program_notes(seen["runner"].single)
    sizes.clear()
    again = gc.check(loss, params, mode="full")
    assert 2 * budget in sizes
    chosen = programs.program_notes(seen["runner"].single).get("sweep_rows")
    assert chosen is not None and chosen[0] == budget and chosen[1] in (budget, 2 * budget)

    sizes.clear()
    second = gc.check(loss, params, mode="full")
    assert programs.program_notes(seen["runner"].single).get("sweep_rows") == chosen
    done, k = 0, 0
    while done < 300:  # the first call (one side of the sweep) is verified at the budget's block
        done, k = done + sizes[k], k + 1
    later = sizes[k:]  # the other side: the chosen block, no trial
    assert later and all(size == chosen[1] for size in later[:-1]) and later[-1] <= chosen[1]

    monkeypatch.setattr(batching.BatchedEvaluation, "_tuned_rows", lambda self, left: self.max_rows)
    plain = gc.check(loss, params, mode="full")
    for report in (first, again, second):
        assert report.verdict == plain.verdict and report.nfev == plain.nfev
        assert report.rel_error == pytest.approx(plain.rel_error, rel=1e-6, abs=1e-12)
