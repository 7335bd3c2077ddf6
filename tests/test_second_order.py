"""order=2: Hessians through Hessian-vector products, and the derivatives of a function's VJP."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax_rules import sin_right_to_first_order_only

import gradcheck_core as gc

# -- numpy: handwritten Hessians ---------------------------------------------------


def _quartic(n: int, seed: int) -> tuple[dict[str, np.ndarray], object, object, object]:
    """L(x) = sum(a * x**4) + x^T B x, with its gradient and Hessian written out."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 2.0, n)
    b = rng.standard_normal((n, n))

    def loss(p: dict[str, np.ndarray]) -> float:
        x = p["x"]
        return float(np.sum(a * x**4) + x @ b @ x)

    def grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = p["x"]
        return {"x": 4 * a * x**3 + (b + b.T) @ x}

    def hessian(p: dict[str, np.ndarray]) -> np.ndarray:
        x = p["x"]
        return np.diag(12 * a * x**2) + b + b.T

    return {"x": rng.standard_normal(n)}, loss, grad, hessian


def test_numpy_right_hessian_passes_and_a_wrong_entry_is_named() -> None:
    params, loss, grad, hessian = _quartic(5, 0)
    assert gc.check(loss, params, grad, order=2, hessian=hessian).verdict == "pass"

    def wrong(p: dict[str, np.ndarray]) -> np.ndarray:
        h = hessian(p)
        h[3, 1] += 0.5  # one entry off (the Hessian is no longer symmetric)
        return h

    report = gc.check(loss, params, grad, order=2, hessian=wrong)
    assert report.verdict == "fail"
    assert report.failed_blocks == ["x"]
    assert report.block("x").worst_index == (1,)  # (H^T w)_1 holds the wrong entry
    (entry,) = report.findings_of("hessian_entry")
    assert entry.detail["row"] == "x[3]" and entry.detail["column"] == "x[1]"
    assert entry.detail["given"] - entry.detail["numeric"] == pytest.approx(0.5, rel=1e-4)


def test_numpy_hvp_callable_and_matrix() -> None:
    params, loss, grad, hessian = _quartic(4, 1)
    assert gc.check(loss, params, grad, order=2, hvp=lambda p, w: hessian(p) @ w["x"]).passed
    assert gc.check(loss, params, grad, order=2, hessian=hessian(params)).passed
    half = gc.check(loss, params, grad, order=2, hvp=lambda p, w: 0.5 * hessian(p) @ w["x"])
    assert half.verdict == "fail"
    assert half.findings_of("scale")


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 6), seed=st.integers(0, 10_000), mode=st.sampled_from(["full", "fast"]))
def test_numpy_hessian_property(n: int, seed: int, mode: str) -> None:
    """A right Hessian always passes; one scaled by 1.5 always fails, in both modes."""
    params, loss, grad, hessian = _quartic(n, seed)
    assert gc.check(loss, params, grad, order=2, hessian=hessian, mode=mode).verdict == "pass"
    wrong = gc.check(loss, params, grad, order=2, hessian=lambda p: 1.5 * hessian(p), mode=mode)
    assert wrong.verdict == "fail"


def test_numpy_order_two_input_errors() -> None:
    params, loss, grad, hessian = _quartic(3, 2)
    with pytest.raises(gc.InputError, match="grad="):
        gc.check(loss, params, order=2, hessian=hessian)
    with pytest.raises(gc.InputError, match="pass the Hessian as hessian="):
        gc.check(loss, params, grad, order=2)
    with pytest.raises(gc.InputError, match="must be a function"):
        gc.check(loss, params, grad(params), order=2, hessian=hessian)
    with pytest.raises(gc.InputError, match="order=3"):
        gc.check(loss, params, grad, order=3)
    with pytest.raises(gc.InputError, match="with order=2"):
        gc.check(loss, params, grad, hessian=hessian)
    with pytest.raises(gc.InputError, match=r"\(3, 3\)"):
        gc.check(loss, params, grad, order=2, hessian=np.eye(2))


# -- torch ----------------------------------------------------------------------------


def _torch_functions() -> tuple[type, type, type]:
    torch = pytest.importorskip("torch")
    from torch.autograd.function import once_differentiable

    class FirstOrderOnly(torch.autograd.Function):
        """sin, whose backward is right but detaches cos(x): its double backward is wrong."""

        @staticmethod
        def forward(ctx, x):  # type: ignore[no-untyped-def]
            ctx.save_for_backward(x)
            return x.sin()

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            (x,) = ctx.saved_tensors
            return g * x.detach().cos()

    class Once(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # type: ignore[no-untyped-def]
            ctx.save_for_backward(x)
            return x.exp()

        @staticmethod
        @once_differentiable
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            (x,) = ctx.saved_tensors
            return g * x.exp()

    class NumpyBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # type: ignore[no-untyped-def]
            ctx.save_for_backward(x)
            return x**3

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            (x,) = ctx.saved_tensors
            return torch.from_numpy(3 * x.detach().numpy() ** 2 * g.detach().numpy())

    return FirstOrderOnly, Once, NumpyBackward


@pytest.mark.torch
def test_torch_wrong_double_backward_fails_order_two_only() -> None:
    import torch

    first_order_only, _, _ = _torch_functions()
    x = torch.tensor([0.3, 1.2, -0.7, 2.0], dtype=torch.float64)
    assert gc.check_function(first_order_only.apply, x).verdict == "pass"
    report = gc.check_function(first_order_only.apply, x, order=2)
    assert report.verdict == "fail"
    assert report.failed_blocks == ["input0->vjp[input0]"]
    assert report.block("cotangent0->vjp[input0]").verdict == "pass"
    assert gc.check_function(torch.sin, x, order=2).verdict == "pass"
    # the same function inside a loss: its Hessian
    assert gc.check(lambda p: first_order_only.apply(p["x"]).sum(), {"x": x}).verdict == "pass"
    hess = gc.check(lambda p: first_order_only.apply(p["x"]).sum(), {"x": x}, order=2)
    assert hess.verdict == "fail" and hess.failed_blocks == ["x"] and hess.what == "hessian"


@pytest.mark.parametrize(
    "framework", [pytest.param("torch", marks=pytest.mark.torch), pytest.param("jax", marks=pytest.mark.jax)]
)
def test_complex_output_at_order_two_gets_a_complex_cotangent(framework: str) -> None:
    """fft of a real input: the cotangent's real and imaginary parts are checked, each named."""
    if framework == "torch":
        torch = pytest.importorskip("torch")
        x = torch.linspace(0.1, 1.0, 6, dtype=torch.float64)
        fn = lambda a: torch.fft.fft(a.sin() * a)  # noqa: E731
    else:
        pytest.importorskip("jax")
        import jax.numpy as jnp

        x = jnp.linspace(0.1, 1.0, 6)
        fn = lambda a: jnp.fft.fft(jnp.sin(a) * a)  # noqa: E731
    report = gc.check_function(fn, x, order=2)
    assert report.verdict == "pass", report
    names = {b.name for b in report.blocks}
    assert {"input0->vjp[input0]", "cotangent0.real->vjp[input0]", "cotangent0.imag->vjp[input0]"} <= names


@pytest.mark.torch
def test_torch_wrong_double_backward_under_a_complex_output_fails() -> None:
    import torch

    first_order_only, _, _ = _torch_functions()
    x = torch.tensor([0.3, 1.2, -0.7, 2.0], dtype=torch.float64)
    fn = lambda a: torch.fft.fft(first_order_only.apply(a))  # noqa: E731
    assert gc.check_function(fn, x).verdict == "pass"
    report = gc.check_function(fn, x, order=2)
    assert report.verdict == "fail"
    assert "input0->vjp[input0]" in report.failed_blocks
    assert report.block("cotangent0.real->vjp[input0]").verdict == "pass"


@pytest.mark.torch
def test_torch_backward_that_cannot_be_differentiated_gets_a_finding() -> None:
    import torch

    _, once, numpy_backward = _torch_functions()
    x = torch.tensor([0.3, -1.2, 0.5], dtype=torch.float64)
    for fn in (once, numpy_backward):
        assert gc.check_function(fn.apply, x).verdict == "pass"
        report = gc.check_function(fn.apply, x, order=2)
        assert report.verdict == "fail"
        (finding,) = report.findings_of("not_twice_differentiable")
        assert "input 0" in finding.message


@pytest.mark.torch
@pytest.mark.parametrize("mode", ["full", "fast"])
def test_torch_float32_mlp_hessian_passes_in_float64(mode: str) -> None:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    X, y = torch.randn(7, 3), torch.randn(7, 2)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    report = gc.check(lambda: torch.nn.functional.mse_loss(model(X), y), model, order=2, mode=mode)
    assert report.verdict == "pass", report
    assert report.mode == mode
    assert not report.findings_of("low_precision")  # evaluated in float64, not float32
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, before[k])
    assert all(p.grad is None for p in model.parameters())
    assert torch.get_default_dtype() == torch.float32


@pytest.mark.torch
def test_torch_functional_loss_and_a_wrong_hvp() -> None:
    import torch

    torch.manual_seed(1)
    A = torch.randn(4, 4, dtype=torch.float64)
    p = {"x": torch.randn(4, dtype=torch.float64)}

    def loss(q: dict) -> torch.Tensor:
        return (q["x"] @ A @ q["x"]) + q["x"].pow(4).sum()

    assert gc.check(loss, p, order=2).passed
    right = lambda q, w: (A + A.T) @ torch.as_tensor(w["x"]) + 12 * q["x"] ** 2 * torch.as_tensor(w["x"])  # noqa: E731
    assert gc.check(loss, p, order=2, hvp=right).passed
    wrong = lambda q, w: (A + A.T) @ torch.as_tensor(w["x"]) + 4 * q["x"] ** 2 * torch.as_tensor(w["x"])  # noqa: E731
    assert gc.check(loss, p, order=2, hvp=wrong).verdict == "fail"


@pytest.mark.torch
def test_torch_complex_inputs_at_order_two() -> None:
    """Complex inputs: checked as real pairs where supported, else a clear InputError."""
    import torch

    z = torch.tensor([0.3 + 0.4j, -1.0 + 0.2j], dtype=torch.complex128)

    def loss(p: dict) -> torch.Tensor:
        return (p["z"].abs() ** 4).sum()

    try:
        first = gc.check(loss, {"z": z})
    except gc.InputError as exc:  # complex parameters not supported: order 2 says so too
        assert "complex" in str(exc)
        with pytest.raises(gc.InputError, match="complex"):
            gc.check(loss, {"z": z}, order=2)
        with pytest.raises(gc.InputError, match="complex"):
            gc.check_function(lambda t: t * t, z, order=2)
        return
    assert first.passed
    assert gc.check(loss, {"z": z}, order=2).passed


# -- JAX --------------------------------------------------------------------------------


@pytest.mark.jax
def test_jax_custom_jvp_right_to_first_order_only() -> None:
    pytest.importorskip("jax")
    import jax.numpy as jnp

    f = sin_right_to_first_order_only()
    x = jnp.array([0.3, 1.2, -0.7])
    assert gc.check_function(f, x).verdict == "pass"
    report = gc.check_function(f, x, order=2)
    assert report.verdict == "fail"
    assert set(report.failed_blocks) == {"input0->vjp[input0]", "input0->vjp[input0] (jvp)"}
    assert gc.check(lambda p: jnp.sum(f(p["x"])), {"x": x}).passed
    hess = gc.check(lambda p: jnp.sum(f(p["x"])), {"x": x}, order=2)
    assert hess.verdict == "fail" and hess.failed_blocks == ["x"]


@pytest.mark.jax
def test_jax_derivatives_of_the_jvp_forward_over_forward() -> None:
    """run_function_jvp_second_order: the JVP (x, t) -> J(x) t, differentiated in both modes."""
    import jax.numpy as jnp

    from gradcheck_core.function_second_order import run_function_jvp_second_order

    x = jnp.array([0.3, 1.2, -0.7])
    y = jnp.array([0.5, -0.1, 0.9])
    report = run_function_jvp_second_order(
        lambda a, b: (jnp.tanh(a) * b, jnp.sum(a**2)), (x, y), {}, gc.check_function
    )
    assert report.verdict == "pass", report
    assert report.what == "jvp"
    names = {b.name for b in report.blocks}
    for j in (0, 1):
        assert {f"input0->jvp[output{j}]", f"tangent1->jvp[output{j}] (jvp)"} <= names

    wrong = run_function_jvp_second_order(sin_right_to_first_order_only(), (x,), {}, gc.check_function)
    assert wrong.verdict == "fail"
    assert set(wrong.failed_blocks) == {"input0->jvp[output0]", "input0->jvp[output0] (jvp)"}
    assert wrong.block("tangent0->jvp[output0]").verdict == "pass"  # linear in the tangent: right


@pytest.mark.jax
def test_jax_mlp_hessian_float32_params() -> None:
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    p = {"W1": jax.random.normal(k1, (3, 4)), "b1": jnp.zeros(4), "W2": jax.random.normal(k2, (4, 1))}
    assert p["W1"].dtype == jnp.float32
    X = jax.random.normal(k3, (6, 3))

    def loss(q: dict) -> jax.Array:
        return jnp.mean((jnp.tanh(X @ q["W1"] + q["b1"]) @ q["W2"]) ** 2)

    for mode in ("full", "fast"):
        assert gc.check(loss, p, order=2, mode=mode).verdict == "pass"


@pytest.mark.jax
def test_jax_custom_vjp_loss_uses_reverse_over_reverse() -> None:
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    @jax.custom_vjp
    def cube(x):  # type: ignore[no-untyped-def]
        return x**3

    cube.defvjp(lambda x: (x**3, x), lambda x, g: (3 * x**2 * g,))
    x = jnp.array([0.5, -1.5])
    assert gc.check(lambda p: jnp.sum(cube(p["x"])), {"x": x}, order=2).passed
    assert gc.check_function(cube, x, order=2).passed


# -- TensorFlow and Keras -----------------------------------------------------------


@pytest.mark.tensorflow
def test_tensorflow_nested_tapes() -> None:
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    X = tf.constant(rng.standard_normal((5, 3)))
    p = {"W1": tf.constant(rng.standard_normal((3, 4))), "W2": tf.constant(rng.standard_normal((4, 1)))}

    def loss(q: dict) -> object:
        return tf.reduce_mean((tf.tanh(X @ q["W1"]) @ q["W2"]) ** 2)

    assert gc.check(loss, p, order=2).passed
    v = tf.Variable(rng.standard_normal(3))
    assert gc.check(lambda: tf.reduce_sum(tf.sin(v) * v), [v], order=2).passed

    @tf.custom_gradient
    def f(x):  # type: ignore[no-untyped-def]
        return tf.sin(x), lambda u: u * tf.stop_gradient(tf.cos(x))

    x = tf.constant([0.3, 1.2, -0.7], dtype=tf.float64)
    assert gc.check_function(f, x).passed
    assert gc.check_function(f, x, order=2).verdict == "fail"
    assert gc.check_function(tf.sin, x, order=2).passed


@pytest.mark.keras
def test_keras_mlp_hessian() -> None:
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6, 3)).astype("float32")
    y = rng.standard_normal((6, 1)).astype("float32")
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)]
    )
    before = [w.numpy().copy() for w in model.weights]

    def loss(m: object) -> object:
        return keras.ops.mean(keras.ops.square(keras.ops.subtract(m(X), y)))  # type: ignore[operator]

    if keras.backend.backend() == "numpy":
        with pytest.raises(gc.InputError, match="no autodiff"):
            gc.check(loss, model, order=2)
        return
    report = gc.check(loss, model, order=2)
    assert report.verdict == "pass" and not report.findings_of("low_precision")
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights))


@pytest.mark.keras
def test_keras_rule_right_to_first_order_only_fails_at_order_two() -> None:
    keras = pytest.importorskip("keras")
    if keras.backend.backend() == "numpy":
        pytest.skip("Keras's numpy backend has no autodiff")
    ops = keras.ops

    @ops.custom_gradient
    def cube(x: object) -> object:
        def grad(*args: object, upstream: object = None) -> object:
            if upstream is None:
                (upstream,) = args
            return upstream * 3.0 * ops.square(ops.stop_gradient(x))  # its own derivative is lost

        return ops.power(x, 3.0), grad

    v = keras.Variable(np.array([0.5, -1.2, 2.0]), name="v")
    before = v.numpy().copy()

    def loss() -> object:
        return ops.sum(cube(ops.multiply(v, 1.0)))

    assert gc.check(loss, {"v": v}).verdict == "pass"
    report = gc.check(loss, {"v": v}, order=2)
    assert report.verdict == "fail", str(report)
    assert np.array_equal(v.numpy(), before)


# -- round-off of a VJP's derivatives, and the framework's double backward failing -----------


def _attention(seed: int) -> tuple[object, tuple[object, ...]]:
    """torch's own multi-head attention (2 heads of size 1), of its query and key, at a saturating sample.

    Entries uniform in [-9, 9], as torch's OpInfo sample makes them: the attention
    logits reach thousands, the softmax saturates, and the VJP for the query is
    about 1e-13 next to terms of size 1000.
    """
    import torch

    g = torch.Generator().manual_seed(seed)

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=torch.float64) * 18 - 9

    q, k, v = uniform(3, 2, 2), uniform(3, 2, 2), uniform(3, 2, 2)
    w_in, b_in, w_out, b_out, mask = uniform(6, 2), uniform(6), uniform(2, 2), uniform(2), uniform(3, 3)

    def attention(query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.nn.functional.multi_head_attention_forward(
            query, key, v, 2, 2, w_in, b_in, None, None, False, 0.0, w_out, b_out,
            training=False, attn_mask=mask,
        )  # fmt: skip

    return attention, (q, k)


@pytest.mark.torch
def test_torch_saturated_attention_passes_at_order_two(monkeypatch: pytest.MonkeyPatch) -> None:
    """Derivatives of 1e-13 that autodiff and differences get apart by round-off are not called wrong."""
    import torch

    from gradcheck_core import second_order
    from gradcheck_core.second_order import ROUNDOFF_ULPS

    attention, xs = _attention(1)
    tensors = tuple(x.clone().requires_grad_() for x in xs)
    assert torch.autograd.gradgradcheck(attention, tensors, raise_exception=False)
    assert gc.check_function(attention, *xs).verdict == "pass"
    report = gc.check_function(attention, *xs, order=2)
    assert report.verdict == "pass", report
    (floor,) = report.findings_of("roundoff_floor")
    assert floor.detail["entries"] >= 1
    # the floor: 64 ulps of terms of size sum |u||f|, a few thousand here; nowhere near the entries of size 1
    assert floor.detail["floor"] == pytest.approx(ROUNDOFF_ULPS * np.finfo(float).eps * floor.detail["scale"])
    assert 1e-13 < floor.detail["floor"] < 1e-10
    assert report.atol == pytest.approx(floor.detail["floor"])
    # without the floor the same check fails (as it did before the floor): round-off, called wrong
    monkeypatch.setattr(second_order, "ROUNDOFF_ULPS", 0)
    strict = gc.check_function(attention, *xs, order=2)
    assert strict.verdict == "fail" and not strict.findings_of("roundoff_floor")
    assert strict.nfev < report.nfev  # the floor's second look is counted


@pytest.mark.torch
@settings(max_examples=6, deadline=None)
@given(scale=st.floats(1e-3, 1e6), seed=st.integers(0, 1000))
def test_torch_wrong_double_backward_still_fails_next_to_large_terms(scale: float, seed: int) -> None:
    """The round-off floor grows with the function's terms, but a wrong second derivative still fails.

    Output 1 is ``scale * y**2`` (terms up to 1e6); output 0 is sin through a
    Function whose double backward is wrong by cos(x) - its size, far above
    64 ulps of 1e6.
    """
    import torch

    first_order_only, _, _ = _torch_functions()
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.uniform(0.2, 1.4, 3), dtype=torch.float64)
    y = torch.tensor(rng.uniform(-2, 2, 2), dtype=torch.float64)

    def fn(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return first_order_only.apply(a), scale * b**2

    report = gc.check_function(fn, x, y, order=2)
    assert report.verdict == "fail"
    assert "input0->vjp[input0]" in report.failed_blocks
    assert report.block("input1->vjp[input1]").verdict == "pass"


@pytest.mark.torch
def test_torch_full_attention_at_extreme_saturation_is_not_called_wrong() -> None:
    """All eight inputs of torch's attention, logits in the thousands: the VJP's derivatives pass.

    One derivative of 3e-7 there is out of reach of finite differences (the
    step that leaves the noise behind is too long for the softmax's curvature,
    and the next shorter one disagrees); it used to be called wrong.
    (gradgradcheck fails this sample too, its fixed step 1e-6 deep in the noise.)
    """
    import torch

    g = torch.Generator().manual_seed(13)

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=torch.float64) * 18 - 9

    q, k, v = uniform(3, 2, 2), uniform(3, 2, 2), uniform(3, 2, 2)
    w_in, b_in, _, _, w_out, b_out, mask = (
        uniform(6, 2),
        uniform(6),
        uniform(2),
        uniform(2),
        uniform(2, 2),
        uniform(2),
        uniform(3, 3),
    )

    def attention(*xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q_, k_, v_, w_in_, b_in_, w_out_, b_out_, mask_ = xs
        return torch.nn.functional.multi_head_attention_forward(
            q_, k_, v_, 2, 2, w_in_, b_in_, None, None, False, 0.0, w_out_, b_out_,
            training=False, attn_mask=mask_,
        )  # fmt: skip

    xs = (q, k, v, w_in, b_in, w_out, b_out, mask)
    report = gc.check_function(attention, *xs, order=2)
    assert report.verdict == "pass", report


@pytest.mark.torch
def test_torch_dropout_at_order_two_draws_one_mask_and_leaves_the_generator() -> None:
    """A random fn is replayed from the same generator state for every evaluation of its VJP."""
    import torch

    def fn(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.dropout(x.sin() * x, 0.5, training=True)

    x = torch.linspace(0.2, 1.5, 6, dtype=torch.float64)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    report = gc.check_function(fn, x, order=2)
    assert report.verdict == "pass", report
    assert torch.equal(torch.get_rng_state(), state)


def _attention_loss(seed: int) -> tuple[object, dict[str, object]]:
    """``<u, attention(q, k)>`` for random cotangents ``u``: gradients of about 1e-38 under a loss of 100."""
    import torch

    attention, (q, k) = _attention(seed)
    g = torch.Generator().manual_seed(seed)
    us = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in attention(q, k)]  # type: ignore[operator]

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum((u * o).sum() for u, o in zip(us, attention(p["q"], p["k"])))  # type: ignore[operator]

    return loss, {"q": q.clone(), "k": k.clone()}  # type: ignore[attr-defined]


@pytest.mark.torch
def test_torch_saturated_attention_hessian_is_judged_to_the_loss_round_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Hessian of 1e-38 under a loss of 100 is round-off: not called wrong, and the floor says so."""
    import torch

    from gradcheck_core import second_order

    loss, params = _attention_loss(1)
    before = {name: t.clone() for name, t in params.items()}  # type: ignore[attr-defined]
    report = gc.check(loss, params, order=2)
    assert report.verdict == "pass", report
    (floor,) = report.findings_of("roundoff_floor")
    assert "Hessian-vector product" in floor.message
    # |L| ||w|| with |L| of order 100 and ||w|| about 5: far above the entries, far below 1
    assert 1e-13 < floor.detail["floor"] < 1e-8
    monkeypatch.setattr(second_order, "ROUNDOFF_ULPS", 0)
    strict = gc.check(loss, params, order=2)
    assert strict.verdict == "fail" and not strict.findings_of("roundoff_floor")
    assert strict.nfev < report.nfev  # the loss's value and the second look are counted
    assert all(torch.equal(params[n], before[n]) for n in before)  # type: ignore[call-overload]


@pytest.mark.torch
@settings(max_examples=6, deadline=None)
@given(scale=st.floats(1e-3, 1e6), seed=st.integers(0, 1000))
def test_torch_wrong_hessian_still_fails_under_a_large_loss(scale: float, seed: int) -> None:
    """The Hessian's floor grows with the loss, but a double backward wrong by its own size still fails."""
    import torch

    first_order_only, _, _ = _torch_functions()
    rng = np.random.default_rng(seed)
    params = {
        "x": torch.tensor(rng.uniform(0.2, 1.4, 3), dtype=torch.float64),
        "y": torch.tensor(rng.uniform(-2, 2, 2), dtype=torch.float64),
    }

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return first_order_only.apply(p["x"]).sum() + scale * (p["y"] ** 2).sum()

    report = gc.check(loss, params, order=2)
    assert report.verdict == "fail"
    assert report.failed_blocks == ["x"]


@pytest.mark.torch
def test_torch_double_backward_error_is_a_finding() -> None:
    """torch's own double backward of native_layer_norm without weight raises; that is a verdict, not a crash."""
    import torch

    torch.manual_seed(0)
    x, bias = torch.randn(1, 2, 3, dtype=torch.float64), torch.randn(1, 2, 3, dtype=torch.float64)

    def layer_norm(x: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.native_layer_norm(x, [1, 2, 3], None, bias, 0.5))

    tensors = (x.clone().requires_grad_(), bias.clone().requires_grad_())
    assert not torch.autograd.gradgradcheck(layer_norm, tensors, raise_exception=False)
    assert gc.check_function(layer_norm, x, bias).verdict == "pass"
    report = gc.check_function(layer_norm, x, bias, order=2)
    assert report.verdict == "fail"
    (finding,) = report.findings_of("not_twice_differentiable")
    assert finding.detail["framework_error"] is True
    assert finding.detail["reason"].startswith("RuntimeError: ")
    assert "Expected a proper Tensor but got None" in finding.message
    assert "torch's autodiff" in finding.message


@pytest.mark.torch
def test_torch_user_exception_at_order_two_reaches_the_user() -> None:
    """The user's own RuntimeError, raised in fn's forward during the check, is not turned into a finding."""
    import torch

    class Mine(RuntimeError):
        pass

    calls = {"n": 0}

    def fn(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > 6:
            raise Mine("the user's own error")
        return x.sin()

    with pytest.raises(Mine, match="the user's own error"):
        gc.check_function(fn, torch.tensor([0.3, 1.2], dtype=torch.float64), order=2)

    def plain(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > 6:
            raise RuntimeError("plain runtime error in the forward")
        return x.sin()

    calls["n"] = 0
    with pytest.raises(RuntimeError, match="plain runtime error in the forward"):
        gc.check_function(plain, torch.tensor([0.3, 1.2], dtype=torch.float64), order=2)


@pytest.mark.torch
def test_order_two_of_a_function_nan_at_the_inputs_is_inconclusive_and_names_the_vjp() -> None:
    torch = pytest.importorskip("torch")
    base = torch.tensor([-4.8, -0.6], dtype=torch.float64)
    report = gc.check_function(torch.pow, base, torch.tensor(0.5, dtype=torch.float64), order=2)
    assert report.verdict == "inconclusive", str(report)
    assert [f.kind for f in report.findings] == ["non_finite_output"]
    assert {what for what, _ in report.skipped} == {"vjp[input0]", "vjp[input1]"}
    assert "vjp[input0], vjp[input1] left out" in report.findings[0].message
