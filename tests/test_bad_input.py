"""Bad input gets one clear error that names the value and the remedy."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import gradcheck_core as gc

W = np.random.default_rng(0).standard_normal((3, 2))


def ok_loss(p):
    return float(np.sum(p["W"] ** 2))


def ok_grad(p):
    return {"W": 2 * p["W"]}


def test_non_scalar_loss() -> None:
    with pytest.raises(gc.GradcheckError, match=r"shape \(3, 2\).*not a scalar.*sum"):
        gc.check(lambda p: p["W"] ** 2, {"W": W}, ok_grad)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_loss(bad: float) -> None:
    with pytest.raises(gc.GradcheckError, match="finite"):
        gc.check(lambda p: bad, {"W": W}, ok_grad)


def test_loss_non_finite_next_to_the_parameters_names_the_entry() -> None:
    x = np.array([1.0, 0.0])
    with np.errstate(invalid="ignore"), pytest.raises(gc.GradcheckError, match=r"x\[1\]"):
        gc.check(lambda p: float(np.sum(np.sqrt(p["x"]))), {"x": x}, {"x": np.ones(2)})


def test_gradient_of_wrong_shape_says_transposed() -> None:
    with pytest.raises(gc.GradcheckError, match=r"shape \(2, 3\).*shape \(3, 2\).*transposed"):
        gc.check(ok_loss, {"W": W}, lambda p: {"dW": (2 * p["W"]).T})


def test_gradient_with_missing_keys_lists_what_it_has() -> None:
    with pytest.raises(gc.GradcheckError, match=r"'b'.*'db'.*it has 'dW'"):
        gc.check(
            lambda p: ok_loss(p) + float(np.sum(p["b"])),
            {"W": W, "b": np.ones(2)},
            lambda p: {"dW": 2 * p["W"]},
        )


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_nan_in_gradient_is_a_failure_that_says_so(mode: str) -> None:
    report = gc.check(ok_loss, {"W": W}, {"W": np.full((3, 2), np.nan)}, mode=mode)
    assert report.verdict == "fail"
    (finding,) = report.findings_of("non_finite_gradient")
    assert finding.block == "W" and finding.detail["n_bad"] == 6


def test_integer_parameters() -> None:
    with pytest.raises(gc.GradcheckError, match=r"'n'.*int.*float"):
        gc.check(lambda p: float(p["n"].sum()), {"n": np.arange(3)}, {"n": np.ones(3)})
    with pytest.raises(gc.GradcheckError, match=r"'k'.*integer"):
        gc.check(lambda p: 1.0, {"k": 3}, {"k": 1.0})
    with pytest.raises(gc.GradcheckError, match=r"bool"):
        gc.check(lambda p: 1.0, {"m": np.array([True])}, {"m": np.ones(1)})


def test_empty_parameters() -> None:
    with pytest.raises(gc.GradcheckError, match="empty"):
        gc.check(lambda p: 0.0, {}, {})
    with pytest.raises(gc.GradcheckError, match="empty"):
        gc.check(lambda p: 0.0, {"W": np.zeros((0, 3))}, {"W": np.zeros((0, 3))})


def test_unsupported_value() -> None:
    with pytest.raises(gc.GradcheckError, match="cannot check"):
        gc.check(lambda p: 0.0, {"W": "weights"}, None)


def test_numpy_without_grad_asks_for_grad() -> None:
    calls = []

    def counted(p: dict) -> float:
        calls.append(1)
        return ok_loss(p)

    with pytest.raises(gc.GradcheckError, match="grad="):
        gc.check(counted, {"W": W})
    assert len(calls) == 1  # said after the first value, before the noise probe's evaluations


@pytest.mark.parametrize(
    "options,match",
    [
        ({"mode": "slow"}, "mode="),
        ({"method": "backward"}, "method="),
        ({"step": 0}, "step="),
        ({"rtol": -1}, "rtol="),
        ({"sample": 0}, "sample="),
    ],
)
def test_bad_options(options: dict, match: str) -> None:
    with pytest.raises(gc.GradcheckError, match=match):
        gc.check(ok_loss, {"W": W}, ok_grad, **options)


def test_complex_method_needs_a_loss_that_carries_complex_values() -> None:
    with pytest.raises(gc.GradcheckError, match="complex"):
        gc.check(lambda p: float(np.sum(np.abs(p["W"]) ** 2)), {"W": W}, ok_grad, method="complex")


def test_errors_leave_arrays_untouched_for_in_place_losses() -> None:
    w = np.linspace(-1, 1, 5)
    keep = w.copy()
    calls = []

    def loss():
        calls.append(1)
        if len(calls) == 7:
            raise RuntimeError("boom on the 7th call")
        return float(np.sum(w**2))

    with pytest.raises(RuntimeError, match="7th"):
        gc.check(loss, [w], lambda: [2 * w])
    assert w.tobytes() == keep.tobytes()


# -- what the loss returns, how it is called --------------------------------------------


@pytest.mark.parametrize(
    "value, match",
    [
        (np.bool_(True), r"bool.*True.*comparison.*float"),
        (True, r"bool.*True.*comparison.*float"),
        (None, r"returned None: a missing `return`\?.*number"),
        ("0.5", r"str.*'0\.5'.*not a number.*float"),
        (object(), r"object.*not a number.*floating point scalar"),
    ],
)
def test_loss_returning_what_is_not_a_number(value: object, match: str) -> None:
    with pytest.raises(gc.InputError, match=match):
        gc.check(lambda p: value, {"W": W}, ok_grad)


def test_loss_taking_two_positional_arguments() -> None:
    def loss(p, x):
        return float(np.sum(p["W"] * x))

    with pytest.raises(gc.InputError, match=r"2 positional arguments \(p, x\).*functools\.partial"):
        gc.check(loss, {"W": W}, ok_grad)


def test_loss_with_a_required_keyword_only_argument() -> None:
    def loss(p, *, scale):
        return float(np.sum(p["W"])) * scale

    with pytest.raises(gc.InputError, match=r"keyword-only argument 'scale'.*default.*partial"):
        gc.check(loss, {"W": W}, ok_grad)


def test_loss_that_is_not_callable() -> None:
    with pytest.raises(gc.InputError, match=r"loss must be a function.*float.*0\.5.*callable"):
        gc.check(0.5, {"W": W}, ok_grad)


def test_nan_in_the_parameters_is_named_before_any_step() -> None:
    bad = W.copy()
    bad[1, 0] = np.nan
    with pytest.raises(gc.InputError, match=r"'W' holds nan at index \[1, 0\].*before any step.*finite"):
        gc.check(ok_loss, {"W": bad}, ok_grad)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"seed": "abc"}, r"seed='abc'.*non-negative whole number"),
        ({"seed": 1.5}, r"seed=1\.5.*non-negative whole number"),
        ({"seed": -1}, r"seed=-1.*non-negative whole number"),
        ({"float64": "no"}, r"float64='no'.*True or False.*str"),
        ({"float64": 0}, r"float64=0.*True or False"),
        ({"progress": "yes"}, r"progress='yes'.*True, False or None"),
        ({"executor": 4}, r"executor=4.*not an executor.*'threads'"),
    ],
)
def test_options_of_the_wrong_type(options: dict, match: str) -> None:
    with pytest.raises(gc.InputError, match=match):
        gc.check(ok_loss, {"W": W}, ok_grad, **options)


def test_a_huge_full_sweep_is_refused_up_front(monkeypatch: pytest.MonkeyPatch) -> None:
    check_module = sys.modules["gradcheck_core.check"]

    calls = []

    def loss(p):
        calls.append(1)
        return float(np.sum(p["w"] ** 2))

    monkeypatch.setattr(check_module, "FULL_MAX_SIZE", 1000)
    w = np.ones(5000)
    with pytest.raises(gc.InputError, match=r"5,000 parameters.*10,000 evaluations.*mode='fast'.*sample="):
        gc.check(loss, {"w": w}, {"w": 2 * w}, mode="full")
    assert not calls  # refused before the first evaluation


def test_a_full_sweep_estimated_to_take_days_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    check_module = sys.modules["gradcheck_core.check"]

    monkeypatch.setattr(check_module, "FULL_MAX_SECONDS", 1e-9)
    w = np.ones(50)
    with pytest.raises(gc.InputError, match=r"100 evaluations.*hours.*mode='fast'.*sample="):
        gc.check(lambda p: float(np.sum(p["w"] ** 2)), {"w": w}, {"w": 2 * w}, mode="full")


# -- torch ------------------------------------------------------------------------------


@pytest.mark.torch
def test_torch_tensors_on_the_meta_device() -> None:
    import torch

    with pytest.raises(gc.InputError, match=r"shape \(3, 2\).*'meta' device.*to_empty.*CPU"):
        gc.check(lambda p: p.sum(), torch.zeros(3, 2, device="meta"))


@pytest.mark.torch
def test_torch_loss_returning_a_list() -> None:
    import torch

    m = torch.nn.Linear(3, 1)
    x = torch.ones(2, 3)
    with pytest.raises(gc.InputError, match=r"list of 2 values, not one scalar.*sum\(losses\)"):
        gc.check(lambda: [m(x).sum(), m(x).mean()], m)


@pytest.mark.torch
def test_torch_gradient_list_with_one_wrong_shape_says_transposed() -> None:
    import torch

    m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    x = torch.randn(4, 2)

    def grad():
        gs = torch.autograd.grad(m(x).sum(), list(m.parameters()))
        return [gs[0].T, *gs[1:]]

    with pytest.raises(gc.InputError, match=r"'0\.weight' has shape \(2, 3\).*\(3, 2\).*transposed"):
        gc.check(lambda: m(x).sum(), m, grad)


@pytest.mark.torch
def test_torch_gradient_list_with_a_missing_entry() -> None:
    import torch

    m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    x = torch.randn(4, 2)

    def grad():
        return list(torch.autograd.grad(m(x).sum(), list(m.parameters())))[:3]

    with pytest.raises(gc.InputError, match=r"list of 3 entries.*4 parameters.*'1\.bias'.*named_parameters"):
        gc.check(lambda: m(x).sum(), m, grad)
    with pytest.raises(gc.InputError, match=r"None for parameter '1\.bias'.*zero tensor"):
        gc.check(lambda: m(x).sum(), m, lambda: [*grad(), None])
