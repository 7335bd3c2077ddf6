"""gradcheck_core.compat side by side with torch.autograd.gradcheck/gradgradcheck and jax's check_grads."""

from __future__ import annotations

import importlib

import pytest
from jax_rules import sin_right_to_first_order_only

import gradcheck_core as gc
from gradcheck_core import compat

torch = pytest.importorskip("torch")
torch_gradcheck = importlib.import_module("torch.autograd.gradcheck")


class LinearFunction(torch.autograd.Function):
    """The linear layer of torch's "Extending torch.autograd" page: y = x W^T + b."""

    @staticmethod
    def forward(ctx, x, weight, bias):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(x, weight)
        return x @ weight.t() + bias

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        x, weight = ctx.saved_tensors
        return g @ weight, g.t() @ x, g.sum(0)


class WrongBias(LinearFunction):
    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        x, weight = ctx.saved_tensors
        return g @ weight, g.t() @ x, 2 * g.sum(0)


class FirstOrderOnly(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(x)
        return x.sin()

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        return g * x.detach().cos()


def _both(fn_name: str, *args: object, **kwargs: object) -> tuple[object, object]:
    """(torch's outcome, ours): the return value, or the exception raised."""
    outcomes = []
    for impl in (getattr(torch.autograd, fn_name), getattr(compat, fn_name)):
        try:
            outcomes.append(impl(*args, **kwargs))
        except Exception as exc:  # the outcome under comparison
            outcomes.append(exc)
    return outcomes[0], outcomes[1]


def _x(*shape: int, requires_grad: bool = True) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.double, requires_grad=requires_grad)


pytestmark = pytest.mark.torch


def test_torch_documented_sin_example() -> None:
    torch.manual_seed(0)
    theirs, ours = _both("gradcheck", torch.sin, (_x(3),))
    assert ours is True and theirs is True
    theirs, ours = _both("gradgradcheck", torch.sin, (_x(3),))
    assert ours is True and theirs is True


def test_torch_documented_linear_function() -> None:
    torch.manual_seed(0)
    inputs = (_x(4, 3), _x(2, 3), _x(2))
    theirs, ours = _both("gradcheck", LinearFunction.apply, inputs, eps=1e-6, atol=1e-4)
    assert theirs is True and ours is True
    theirs, ours = _both("gradcheck", WrongBias.apply, inputs)
    assert isinstance(theirs, torch_gradcheck.GradcheckError)
    assert isinstance(ours, torch_gradcheck.GradcheckError) and isinstance(ours, gc.CheckFailed)
    assert ours.report.failed_blocks == ["input2->output0"]  # type: ignore[attr-defined]
    theirs, ours = _both("gradcheck", WrongBias.apply, inputs, raise_exception=False)
    assert theirs is False and ours is False


def test_inputs_without_requires_grad_are_held_fixed() -> None:
    torch.manual_seed(0)
    # the bias gradient is wrong, but the bias does not require grad: neither tool checks it
    inputs = (_x(4, 3), _x(2, 3), _x(2, requires_grad=False))
    theirs, ours = _both("gradcheck", WrongBias.apply, inputs)
    assert theirs is True and ours is True
    theirs, ours = _both("gradcheck", torch.sin, (_x(3, requires_grad=False),))
    assert isinstance(theirs, ValueError) and isinstance(ours, ValueError)


def test_double_backward_wrong_fails_gradgradcheck_only() -> None:
    torch.manual_seed(0)
    x = _x(4)
    theirs, ours = _both("gradcheck", FirstOrderOnly.apply, (x,))
    assert theirs is True and ours is True
    theirs, ours = _both("gradgradcheck", FirstOrderOnly.apply, (x,))
    assert isinstance(theirs, torch_gradcheck.GradcheckError)
    assert isinstance(ours, torch_gradcheck.GradcheckError)
    assert "input0->vjp[input0]" in ours.report.failed_blocks  # type: ignore[attr-defined]
    theirs, ours = _both("gradgradcheck", FirstOrderOnly.apply, (x,), raise_exception=False)
    assert theirs is False and ours is False
    u = torch.randn(4, dtype=torch.double)
    theirs, ours = _both("gradgradcheck", torch.tanh, (x,), (u,))
    assert theirs is True and ours is True


def test_once_differentiable_fails_gradgradcheck() -> None:
    from torch.autograd.function import once_differentiable

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

    x = _x(3)
    theirs, ours = _both("gradgradcheck", Once.apply, (x,))
    assert isinstance(theirs, torch_gradcheck.GradcheckError)
    assert isinstance(ours, torch_gradcheck.GradcheckError)
    assert ours.report.findings_of("not_twice_differentiable")  # type: ignore[attr-defined]


def test_torch_extra_options() -> None:
    torch.manual_seed(0)
    x, y = _x(3), _x(3)
    kwargs = {"check_batched_grad": True, "check_grad_dtypes": True, "check_forward_ad": True}
    theirs, ours = _both("gradcheck", torch.mul, (x, y), **kwargs)
    assert theirs is True and ours is True
    # forward AD requested of a Function without a jvp: both fail
    theirs, ours = _both("gradcheck", FirstOrderOnly.apply, (x,), check_forward_ad=True)
    assert isinstance(theirs, RuntimeError) and isinstance(ours, torch_gradcheck.GradcheckError)
    assert ours.report.findings_of("no_forward_mode")  # type: ignore[attr-defined]
    assert compat.gradcheck(FirstOrderOnly.apply, (x,), check_backward_ad=True) is True


def test_float32_inputs() -> None:
    """torch cannot check float32 reliably (it warns and may fail); gc evaluates in float64."""
    x = torch.randn(5, requires_grad=True)
    assert compat.gradcheck(torch.tanh, (x,)) is True
    assert compat.gradgradcheck(torch.tanh, (x,)) is True
    assert x.dtype == torch.float32


@pytest.mark.jax
def test_jax_check_grads_documented_and_first_order_only_rule() -> None:
    pytest.importorskip("jax")
    import jax.numpy as jnp
    from jax.test_util import check_grads

    x = jnp.array([0.3, 1.2, -0.7])
    assert check_grads(jnp.sin, (x,), order=2) is None
    assert compat.check_grads(jnp.sin, (x,), order=2) is None
    f = lambda a, b: jnp.tanh(a) * jnp.exp(b)  # noqa: E731
    assert compat.check_grads(f, (x, x), order=2, modes=["rev"]) is None
    assert check_grads(f, (x, x), order=2, modes=["rev"]) is None

    g = sin_right_to_first_order_only()
    assert check_grads(g, (x,), order=1) is None
    assert compat.check_grads(g, (x,), order=1) is None
    with pytest.raises(AssertionError):
        check_grads(g, (x,), order=2)
    with pytest.raises(AssertionError) as info:
        compat.check_grads(g, (x,), order=2)
    assert isinstance(info.value, gc.CheckFailed)
    assert "input0->vjp[input0]" in info.value.report.failed_blocks  # type: ignore[attr-defined]
    # "fwd" alone at order 2 is forward over forward, as in JAX: the JVP of the JVP
    with pytest.raises(AssertionError):
        check_grads(g, (x,), order=2, modes=["fwd"])
    with pytest.raises(AssertionError) as info:
        compat.check_grads(g, (x,), order=2, modes=["fwd"])
    assert info.value.report.failed_blocks == ["input0->jvp[output0] (jvp)"]  # type: ignore[attr-defined]
    assert compat.check_grads(f, (x, x), order=2, modes=["fwd"]) is None
    assert check_grads(f, (x, x), order=2, modes=["fwd"]) is None


def test_tolerances_are_added_to_the_bound() -> None:
    """An error of 1e-4 relative: within torch's rtol=1e-3 (both pass), outside gc's default."""

    class Off(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # type: ignore[no-untyped-def]
            ctx.save_for_backward(x)
            return x.sin()

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            (x,) = ctx.saved_tensors
            return g * x.cos() * (1 + 1e-4)

    torch.manual_seed(0)
    x = _x(4)
    theirs, ours = _both("gradcheck", Off.apply, (x,))
    assert theirs is True and ours is True
    assert compat.gradcheck(Off.apply, (x,), rtol=1e-6, raise_exception=False) is False
    assert gc.check_function(Off.apply, x).verdict == "fail"


def test_batched_grad_and_fast_mode() -> None:
    class NumpyBackward(torch.autograd.Function):
        """Right derivatives, but the backward leaves torch: it cannot run under vmap."""

        @staticmethod
        def forward(ctx, x):  # type: ignore[no-untyped-def]
            return x * 2

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            return torch.from_numpy(g.detach().numpy() * 2)

    torch.manual_seed(0)
    x = _x(3)
    theirs, ours = _both("gradcheck", NumpyBackward.apply, (x,))
    assert theirs is True and ours is True
    theirs, ours = _both("gradcheck", NumpyBackward.apply, (x,), check_batched_grad=True)
    assert isinstance(theirs, torch_gradcheck.GradcheckError)
    assert isinstance(ours, torch_gradcheck.GradcheckError)
    assert ours.report.findings_of("batched_grad")  # type: ignore[attr-defined]
    inputs = (_x(4, 3), _x(2, 3), _x(2))
    theirs, ours = _both("gradcheck", LinearFunction.apply, inputs, fast_mode=True)
    assert theirs is True and ours is True
    assert compat.gradcheck(WrongBias.apply, inputs, fast_mode=True, raise_exception=False) is False
