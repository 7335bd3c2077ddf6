"""check_function on what PyTorch's own operators produce: complex values, empty tensors,
non-differentiable outputs, non-finite inputs, zero tensors, strided views, undefined gradients."""

from __future__ import annotations

import numpy as np
import pytest

import gradcheck_core as gc

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch

D = torch.float64


# -- complex outputs and inputs ------------------------------------------------------


class DoubledComplex(torch.autograd.Function):
    """A real and a complex output; the backward doubles the complex output's part."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sin(), x * (1 + 2j)

    @staticmethod
    def backward(ctx, g_real, g_complex):
        (x,) = ctx.saved_tensors
        return g_real * x.cos() + 2 * (g_complex * (1 - 2j)).real


class RightComplex(DoubledComplex):
    @staticmethod
    def backward(ctx, g_real, g_complex):
        (x,) = ctx.saved_tensors
        return g_real * x.cos() + (g_complex * (1 - 2j)).real


def test_doubled_complex_backward_fails_naming_the_complex_output() -> None:
    report = gc.check_function(DoubledComplex.apply, torch.randn(4, dtype=D))
    assert report.verdict == "fail"
    assert report.failed_blocks == ["input0->output1"]
    assert any(f.kind == "scale" and f.block == "input0->output1" for f in report.findings)


def test_right_complex_backward_passes() -> None:
    report = gc.check_function(RightComplex.apply, torch.randn(4, dtype=D))
    assert report.verdict == "pass"
    assert {b.name for b in report.blocks if "jvp" not in b.name} == {"input0->output0", "input0->output1"}


@pytest.mark.parametrize(
    "fn, make",
    [
        (torch.fft.fft, lambda: torch.randn(5, dtype=torch.complex128)),
        (torch.fft.rfft, lambda: torch.randn(6, dtype=D)),
        (torch.fft.irfft, lambda: torch.randn(4, dtype=torch.complex128)),
        (torch.view_as_complex, lambda: torch.randn(3, 2, dtype=D)),
        (torch.view_as_real, lambda: torch.randn(3, dtype=torch.complex128)),
        (lambda z: z.abs(), lambda: torch.randn(3, dtype=torch.complex128)),
    ],
    ids=["fft", "rfft", "irfft", "view_as_complex", "view_as_real", "abs"],
)
def test_correct_complex_functions_pass(fn, make) -> None:
    report = gc.check_function(fn, make())
    assert report.verdict == "pass", str(report)


def test_polar_passes() -> None:
    report = gc.check_function(torch.polar, torch.rand(3, dtype=D) + 0.5, torch.randn(3, dtype=D))
    assert report.verdict == "pass", str(report)


def test_complex_input_blocks_are_named_by_part() -> None:
    report = gc.check_function(torch.fft.fft, torch.randn(3, dtype=torch.complex128))
    names = {b.name for b in report.blocks}
    assert {"input0.real->output0", "input0.imag->output0"} <= names


class WrongImaginary(torch.autograd.Function):
    """y = z * c, but the backward drops the imaginary part of the input gradient."""

    @staticmethod
    def forward(ctx, z):
        return z * (2 - 1j)

    @staticmethod
    def backward(ctx, g):
        return (g * (2 + 1j)).real.to(torch.complex128)


def test_dropped_imaginary_gradient_fails_on_the_imaginary_part() -> None:
    report = gc.check_function(WrongImaginary.apply, torch.randn(3, dtype=torch.complex128))
    assert report.verdict == "fail"
    assert "input0.imag->output0" in report.failed_blocks
    assert "input0.real->output0" not in report.failed_blocks


# -- gc.check: complex parameters of a real loss ---------------------------------------


def test_torch_complex_params_of_a_real_loss() -> None:
    z = torch.randn(3, dtype=torch.complex128)
    w = torch.randn(2, 3, dtype=torch.complex64)

    def loss(p):
        return (p["z"].abs() ** 2).sum() + (p["w"] @ p["z"]).real.sum() + p["w"].imag.pow(3).sum()

    report = gc.check(loss, {"z": z, "w": w})
    assert report.verdict == "pass", str(report)
    assert [b.name for b in report.blocks] == ["z.real", "z.imag", "w.real", "w.imag"]


def test_torch_complex_param_wrong_imaginary_gradient_fails() -> None:
    z = torch.randn(3, dtype=torch.complex128)

    def loss(p):
        return (p.abs() ** 2 * torch.arange(1.0, 4.0)).sum()

    def wrong(p):
        right = 2 * torch.arange(1.0, 4.0) * p
        return torch.complex(right.real, 3 * right.imag)

    report = gc.check(loss, z, grad=wrong)
    assert report.verdict == "fail"
    assert report.failed_blocks == ["param.imag"]


def test_torch_complex_param_zero_argument_loss_restores_it() -> None:
    z = torch.randn(4, dtype=torch.complex128, requires_grad=True)
    before = z.detach().clone()
    report = gc.check(lambda: (z * z.conj()).real.sum() + z.imag.sum(), [z])
    assert report.verdict == "pass", str(report)
    assert torch.equal(z.detach(), before)


# -- empty tensors ----------------------------------------------------------------------


def test_all_inputs_empty_passes_and_says_nothing_was_checked() -> None:
    report = gc.check_function(torch.sin, torch.zeros(0, 3, dtype=D))
    assert report.verdict == "pass"
    assert report.blocks == []
    assert [f.kind for f in report.findings] == ["nothing_checked"]
    assert ("input0", "empty (shape (0, 3)): nothing to check") in report.skipped
    assert "not checked" in str(report)
    assert report.to_dict()["skipped"][0]["what"] == "input0"


def test_empty_input_next_to_a_full_one_is_skipped_and_listed() -> None:
    def fn(x, e):
        return x.exp(), e * 2

    report = gc.check_function(fn, torch.randn(3, dtype=D), torch.zeros(0, dtype=D))
    assert report.verdict == "pass"
    assert {w for w, _ in report.skipped} == {"input1", "output1"}
    assert all("input1" not in b.name for b in report.blocks)


def test_gc_check_empty_parameter_among_others() -> None:
    x = torch.randn(3, dtype=D)
    e = torch.zeros(0, dtype=D)
    report = gc.check(lambda p: (p["x"] ** 2).sum() + p["e"].sum(), {"x": x, "e": e})
    assert report.verdict == "pass"
    assert ("e", "empty (shape (0,)): nothing to check") in report.skipped


# -- outputs autograd calls non-differentiable ------------------------------------------


def test_native_batch_norm_statistics_are_skipped() -> None:
    x = torch.randn(4, 3, dtype=D)
    report = gc.check_function(
        lambda a: torch.native_batch_norm(a, None, None, None, None, True, 0.1, 1e-5), x
    )
    assert report.verdict == "pass", str(report)
    assert {w for w, _ in report.skipped} == {"output1", "output2"}
    assert not report.findings_of("zero_gradient")


def test_detached_and_integer_outputs_are_skipped() -> None:
    def fn(x):
        return x * 3, x.detach() ** 2, x.argmax(), x > 0

    report = gc.check_function(fn, torch.randn(4, dtype=D))
    assert report.verdict == "pass", str(report)
    reasons = dict(report.skipped)
    assert set(reasons) == {"output1", "output2", "output3"}
    assert "requires_grad=False" in reasons["output1"]
    assert "int64" in reasons["output2"] and "bool" in reasons["output3"]
    assert all("output1" not in b.name for b in report.blocks)


def test_wrong_differentiable_output_next_to_a_skipped_one_still_fails() -> None:
    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            out = x * 2
            stat = x.mean().detach()
            ctx.mark_non_differentiable(stat)
            return out, stat

        @staticmethod
        def backward(ctx, g, _):
            return g * 3

    report = gc.check_function(Wrong.apply, torch.randn(3, dtype=D))
    assert report.verdict == "fail"
    assert report.failed_blocks == ["input0->output0"]
    assert [w for w, _ in report.skipped] == ["output1"]


# -- non-finite inputs ------------------------------------------------------------------


def test_minus_inf_mask_entries_are_held_fixed() -> None:
    scores = torch.tensor([[0.3, -float("inf"), 1.0], [-float("inf"), 0.2, -0.7]], dtype=D)
    report = gc.check_function(lambda s: torch.softmax(s, -1), scores)
    assert report.verdict == "pass", str(report)
    assert report.block("input0->output0").shape == (4,)
    ((what, why),) = report.skipped
    assert what == "input0" and "2 non-finite" in why and "-inf" in why


def test_wrong_gradient_of_a_masked_input_still_fails() -> None:
    class WrongSoftmax(torch.autograd.Function):
        @staticmethod
        def forward(ctx, s):
            y = torch.softmax(s, -1)
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, g):
            (y,) = ctx.saved_tensors
            return y * g  # the -y (g . y) term is missing

    scores = torch.tensor([0.3, -float("inf"), 1.0, 0.1], dtype=D)
    report = gc.check_function(WrongSoftmax.apply, scores)
    assert report.verdict == "fail"


# -- non-finite outputs ------------------------------------------------------------------


def test_output_nan_everywhere_is_inconclusive_and_says_why() -> None:
    base = torch.tensor([-4.8, -7.6, -0.6], dtype=D)
    exponent = torch.tensor(0.5, dtype=D)
    report = gc.check_function(torch.pow, base, exponent)
    assert report.verdict == "inconclusive", str(report)
    assert [f.kind for f in report.findings] == ["non_finite_output"]
    ((what, why),) = report.skipped
    assert what == "output0" and "3 of 3 entries are non-finite (nan)" in why


def test_nan_entries_of_an_output_are_left_out_and_the_rest_checked() -> None:
    x = torch.tensor([[0.5, -1.0, 2.0], [3.0, 0.25, -0.5]], dtype=D)
    report = gc.check_function(torch.log, x)
    assert report.verdict == "pass", str(report)
    ((what, why),) = report.skipped
    assert (
        what == "output0"
        and "2 of 6 entries are non-finite (nan)" in why
        and "finite entries are checked" in why
    )


class WrongLog(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.log()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * g / x  # twice the derivative


def test_wrong_backward_on_the_finite_entries_still_fails() -> None:
    x = torch.tensor([0.5, -1.0, 2.0, 3.0], dtype=D)
    report = gc.check_function(WrongLog.apply, x)
    assert report.verdict == "fail", str(report)
    assert report.skipped and report.skipped[0][0] == "output0"


def test_nan_carried_into_the_vjp_leaves_the_output_out_with_a_reason() -> None:
    base = torch.tensor([[-4.8], [2.0]], dtype=D)
    exponent = torch.tensor([0.5, 2.0], dtype=D)  # the first row gives one NaN, and its VJP is NaN
    report = gc.check_function(torch.pow, base, exponent)
    assert report.verdict == "inconclusive", str(report)
    assert report.findings[0].kind == "non_finite_output"
    assert "0 * nan" in report.skipped[0][1]


def test_nan_output_next_to_a_finite_one_checks_the_finite_one() -> None:
    def two(x):
        return torch.sqrt(-x.abs() - 1), x.sin()

    x = torch.tensor([0.3, 1.2], dtype=D)
    report = gc.check_function(two, x)
    assert report.verdict == "pass", str(report)
    assert [b.name for b in report.blocks if "jvp" not in b.name] == ["input0->output1"]
    assert report.skipped[0][0] == "output0"


# -- torch specifics -----------------------------------------------------------------------


def test_zero_tensor_gradient_is_converted() -> None:
    from gradcheck_core.adapters import get_adapter

    zero = torch._efficientzerotensor(2, 3, dtype=D)
    np.testing.assert_array_equal(get_adapter("torch").to_numpy(zero), np.zeros((2, 3)))
    g = get_adapter("torch").vjp(torch.sgn, [torch.randn(3, dtype=D)], [np.ones(3)])
    np.testing.assert_array_equal(g[0], np.zeros(3))


def test_as_strided_with_storage_offset() -> None:
    base = torch.randn(20, dtype=D)
    view = base[3:15]
    # reads storage positions 10..16: past the end of a fresh 12-entry copy of the view
    report = gc.check_function(lambda t: torch.as_strided(t, (3, 3), (2, 1), 10), view)
    assert report.verdict == "pass", str(report)


# -- undefined output gradients ------------------------------------------------------------


class NoneUnsafe(torch.autograd.Function):
    """Two outputs; with undefined gradients passed through, the backward treats None as ones."""

    @staticmethod
    def forward(ctx, x):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x)
        return x * 2, x**2

    @staticmethod
    def backward(ctx, g1, g2):
        (x,) = ctx.saved_tensors
        g1 = torch.ones_like(x) if g1 is None else g1  # wrong: an undefined gradient is zero
        g2 = torch.zeros_like(x) if g2 is None else g2
        return 2 * g1 + 2 * x * g2


class NoneSafe(NoneUnsafe):
    @staticmethod
    def backward(ctx, g1, g2):
        (x,) = ctx.saved_tensors
        out = torch.zeros_like(x)
        if g1 is not None:
            out = out + 2 * g1
        if g2 is not None:
            out = out + 2 * x * g2
        return out


def test_backward_mishandling_undefined_grads_is_caught() -> None:
    report = gc.check_function(NoneUnsafe.apply, torch.randn(3, dtype=D))
    assert report.verdict == "fail"
    (finding,) = report.findings_of("undefined_grad")
    assert finding.block == "input0->output1"
    assert all(b.verdict == "pass" for b in report.blocks)  # the VJPs with zeros are right


def test_backward_handling_undefined_grads_passes() -> None:
    report = gc.check_function(NoneSafe.apply, torch.randn(3, dtype=D))
    assert report.verdict == "pass", str(report)
    assert not report.findings_of("undefined_grad")


def test_undefined_grad_check_can_be_turned_off() -> None:
    report = gc.check_function(NoneUnsafe.apply, torch.randn(3, dtype=D), check_undefined_grad=False)
    assert report.verdict == "pass"
    with pytest.raises(gc.GradcheckError, match="check_undefined_grad"):
        gc.check_function(NoneUnsafe.apply, torch.randn(3, dtype=D), check_undefined_grad="yes")


def test_native_group_norm_undefined_grad_bug_is_caught() -> None:
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 6, 3, dtype=D), torch.randn(6, dtype=D), torch.randn(6, dtype=D)
    report = gc.check_function(lambda x, w, b: torch.native_group_norm(x, w, b, 2, 6, 3, 2, 1e-5), x, w, b)
    assert report.verdict == "fail"
    assert report.findings_of("undefined_grad")


def test_sparse_input_varies_its_specified_entries() -> None:
    torch.manual_seed(0)
    a = (torch.randn(4, 3, dtype=D) * (torch.rand(4, 3) > 0.5)).to_sparse()
    b = torch.randn(3, 2, dtype=D)
    report = gc.check_function(torch.sparse.mm, a, b)
    assert report.verdict == "pass", str(report)


def test_correlation_of_two_observations_is_flat_up_to_rounding_and_passes() -> None:
    # every correlation of two observations is +-1: the function moves by mere ulps
    x = torch.tensor([[-4.83, -7.58], [-0.60, -1.54], [-1.97, -4.15]], dtype=D)
    report = gc.check_function(torch.corrcoef, x)
    assert report.verdict == "pass", str(report)
