"""Drop-in replacements for ``torch.autograd.gradcheck``/``gradgradcheck`` and ``jax.test_util.check_grads``.

Same signatures, same return conventions, backed by
:func:`gradcheck_core.check_function`.  How each option maps is in
``docs/migrating.md``; in short:

* ``atol``/``rtol`` are added to gc's own error bound of the finite
  difference estimate (``|a - n| <= atol + rtol * max(|a|, |n|) + e``), so they
  can only make the check more lenient, never call a correct derivative wrong;
* ``eps`` is used as the (relative) step where every checked input is
  float64; elsewhere gc picks the step from the measured noise (a fixed step
  is too small for a float32 function, whose round-off then dominates);
* inputs without ``requires_grad`` are held fixed, as torch does;
* an inconclusive check (a nondeterministic or too noisy function) is not a
  pass: it fails like a wrong gradient, with the reason.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .adapters import detect, is_array
from .errors import CheckFailed, InputError
from .function_second_order import run_function_jvp_second_order, run_function_second_order
from .functions import check_function
from .report import Finding, Report

__all__ = ["check_grads", "gradcheck", "gradgradcheck"]

_TORCH_EPS = 1e-6
_ERRORS: dict[type, type] = {}


def _torch_error_class() -> type[CheckFailed]:
    """:class:`CheckFailed` that is also ``torch.autograd.gradcheck.GradcheckError``."""
    torch_error = importlib.import_module("torch.autograd.gradcheck").GradcheckError
    if torch_error not in _ERRORS:
        _ERRORS[torch_error] = type(
            "TorchGradcheckFailure",
            (CheckFailed, torch_error),
            {
                "__doc__": "A failed check, both a gc.CheckFailed and a torch GradcheckError.",
                "__module__": __name__,
            },
        )
    return _ERRORS[torch_error]


def _as_tuple(inputs: Any) -> tuple[Any, ...]:
    return tuple(inputs) if isinstance(inputs, (list, tuple)) else (inputs,)


def _requires_grad(x: Any) -> bool:
    return bool(getattr(x, "requires_grad", False))


def _all_float64(values: Sequence[Any]) -> bool:
    return all(str(getattr(v, "dtype", "")).endswith("float64") for v in values)


def _options(
    eps: float | None,
    default_eps: float | None,
    atol: float | None,
    rtol: float | None,
    fast: bool,
    values: Sequence[Any],
) -> dict[str, Any]:
    options: dict[str, Any] = {"mode": "fast" if fast else "auto"}
    if rtol is not None and 0 < rtol < 1:
        options["rtol"] = float(rtol)
    if atol is not None and atol > 0:
        options["atol"] = float(atol)
    if eps is not None and eps != default_eps and 0 < eps < 1 and _all_float64(values):
        options["step"] = float(eps)
    return options


def _held_fixed(func: Callable[..., Any], inputs: tuple[Any, ...], checked: list[int]) -> Callable[..., Any]:
    def of_checked(*xs: Any) -> Any:
        args = list(inputs)
        for i, x in zip(checked, xs):
            args[i] = x
        return func(*args)

    return of_checked


def _renumber(report: Report, checked: list[int]) -> None:
    """``input{k}`` of the function of the checked inputs back to the caller's positions."""

    def fix(name: str) -> str:
        return re.sub(
            r"input(\d+)",
            lambda m: f"input{checked[int(m.group(1))]}" if int(m.group(1)) < len(checked) else m.group(0),
            name,
        )

    for b in report.blocks:
        b.name = fix(b.name)
    for f in report.findings:
        if f.block:
            f.block = fix(f.block)


def _select(report: Report, reverse: bool, forward: bool) -> Report:
    """Keep the reverse-mode (VJP) and/or forward-mode (JVP) parts; a missing forward mode fails."""
    keep = [
        b
        for b in report.blocks
        if (b.name.endswith("(jvp)") and forward) or (not b.name.endswith("(jvp)") and reverse)
    ]
    names = {b.name for b in keep}
    findings = [
        f
        for f in report.findings
        if (f.block is None or f.block in names or f.kind == "no_forward_mode")
        and (forward or f.kind not in ("no_forward_mode", "forward_mode"))
    ]
    report.blocks, report.findings = keep, findings
    verdicts = {b.verdict for b in keep}
    if report.blocks or report.verdict != "fail":
        report.verdict = (
            "fail" if "fail" in verdicts else "inconclusive" if "inconclusive" in verdicts else "pass"
        )
    if forward and report.findings_of("no_forward_mode"):
        report.verdict = "fail"
    return report


def _add_problems(report: Report, kind: str, problems: list[str]) -> None:
    if problems:
        report.findings.append(Finding(kind, None, "; ".join(problems) + ".", {"problems": problems}))
        report.verdict = "fail"


def _outcome(report: Report, raise_exception: bool, error: type[CheckFailed]) -> bool:
    if report.passed:
        return True
    if not raise_exception:
        return False
    text = str(report)
    if report.verdict == "inconclusive":
        text = "the check could not decide (see the findings), so it is not a pass.\n" + text
    raise error(text, report)


def _torch_inputs(func: Callable[..., Any], inputs: Any) -> tuple[tuple[Any, ...], list[int]]:
    values = _as_tuple(inputs)
    for i, x in enumerate(values):
        layout = getattr(x, "layout", None)
        if layout is not None and str(layout) != "torch.strided":
            raise InputError(
                f"input {i} is a {layout} tensor; gradcheck-core checks dense (strided) tensors: pass "
                "x.to_dense() and make the function convert it back if it needs a sparse input."
            )
    checked = [i for i, x in enumerate(values) if _requires_grad(x)]
    if not checked:
        raise InputError(
            "no input requires grad: gradcheck checks the inputs with requires_grad=True (as "
            "torch.autograd.gradcheck does); create them with requires_grad=True."
        )
    return values, checked


def gradcheck(
    func: Callable[..., Any],
    inputs: Any,
    *,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    raise_exception: bool = True,
    nondet_tol: float = 0.0,
    check_undefined_grad: bool = True,
    check_grad_dtypes: bool = False,
    check_batched_grad: bool = False,
    check_batched_forward_grad: bool = False,
    check_forward_ad: bool = False,
    check_backward_ad: bool = True,
    fast_mode: bool = False,
    masked: bool | None = None,
) -> bool:
    """``torch.autograd.gradcheck`` with gradcheck-core's check behind it.

    Parameters
    ----------
    func : callable
        ``func(*inputs)`` returning a tensor or a tuple of tensors.
    inputs : tensor or tuple of tensors
        Those with ``requires_grad=True`` are checked; the others are held fixed.
    eps, atol, rtol, nondet_tol
        ``atol + nondet_tol`` and ``rtol`` are added to gc's error bound;
        ``eps`` is the step for float64 inputs (gc picks it otherwise).
    raise_exception : bool
        Raise on failure (an exception that is both ``gc.CheckFailed``,
        carrying ``.report``, and ``torch.autograd.gradcheck.GradcheckError``),
        else return False.
    check_undefined_grad, masked
        Accepted; see ``docs/migrating.md``.
    check_grad_dtypes : bool
        Also require each gradient to have its input's dtype and device.
    check_batched_grad : bool
        Also compare the backward pass under ``vmap`` with the unbatched one.
    check_batched_forward_grad : bool
        Accepted; forward mode is checked one tangent at a time.
    check_forward_ad, check_backward_ad : bool
        Which modes count (forward: JVPs; backward: VJPs).
    fast_mode : bool
        Random directions (gc's fast mode) instead of every coordinate.

    Returns
    -------
    bool
        True when the check passed; False when it did not and
        ``raise_exception`` is False.
    """
    values, checked = _torch_inputs(func, inputs)
    fn = _held_fixed(func, values, checked)
    xs = [values[i] for i in checked]
    options = _options(eps, _TORCH_EPS, atol + nondet_tol, rtol, fast_mode, xs)
    report = check_function(fn, *xs, **options)
    _renumber(report, checked)
    _select(report, reverse=check_backward_ad, forward=check_forward_ad)
    checks = importlib.import_module("gradcheck_core.adapters.torch.checks")
    if check_grad_dtypes:
        _add_problems(report, "grad_dtype", checks.grad_dtype_problems(fn, xs))
    if check_batched_grad:
        _add_problems(report, "batched_grad", checks.batched_grad_problems(fn, xs))
    return _outcome(report, raise_exception, _torch_error_class())


def gradgradcheck(
    func: Callable[..., Any],
    inputs: Any,
    grad_outputs: Any = None,
    *,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    gen_non_contig_grad_outputs: bool = False,
    raise_exception: bool = True,
    nondet_tol: float = 0.0,
    check_undefined_grad: bool = True,
    check_grad_dtypes: bool = False,
    check_batched_grad: bool = False,
    check_fwd_over_rev: bool = False,
    check_rev_over_rev: bool = True,
    fast_mode: bool = False,
    masked: bool = False,
) -> bool:
    """``torch.autograd.gradgradcheck``: the derivatives of the VJP, checked by gradcheck-core.

    Parameters
    ----------
    func, inputs, eps, atol, rtol, raise_exception, nondet_tol, fast_mode
        As for :func:`gradcheck`.
    grad_outputs : tensor or tuple of tensors, optional
        The cotangents of the outputs (default: random).
    check_rev_over_rev, check_fwd_over_rev : bool
        Which second-order modes count: reverse over reverse (the VJP of the
        VJP), forward over reverse (the JVP of the VJP).
    gen_non_contig_grad_outputs, check_undefined_grad, check_grad_dtypes, check_batched_grad, masked
        Accepted; see ``docs/migrating.md``.

    Returns
    -------
    bool
        As for :func:`gradcheck`.
    """
    values, checked = _torch_inputs(func, inputs)
    fn = _held_fixed(func, values, checked)
    xs = [values[i] for i in checked]
    cotangents = None
    if grad_outputs is not None:
        cotangents = [
            None if g is None else np.asarray(g.detach().to("cpu").double().numpy())
            for g in _as_tuple(grad_outputs)
        ]
    options = _options(eps, _TORCH_EPS, atol + nondet_tol, rtol, fast_mode, xs)
    report = run_function_second_order(fn, tuple(xs), options, check_function, cotangents)
    _renumber(report, checked)
    _select(report, reverse=check_rev_over_rev, forward=check_fwd_over_rev)
    return _outcome(report, raise_exception, _torch_error_class())


def check_grads(
    f: Callable[..., Any],
    args: Sequence[Any],
    order: int,
    modes: Sequence[str] = ("fwd", "rev"),
    atol: float | None = None,
    rtol: float | None = None,
    eps: float | None = None,
) -> None:
    """``jax.test_util.check_grads``: derivatives up to ``order`` (1 or 2), checked by gradcheck-core.

    Parameters
    ----------
    f : callable
        ``f(*args)``.
    args : sequence
        The arguments; floating ones are checked.
    order : {1, 2}
        ``1``: first derivatives; ``2``: also the derivatives of the VJP.
    modes : sequence of {"fwd", "rev"}
        ``"rev"``: reverse mode (VJPs; at order 2 the VJP of the VJP, and its
        JVP too where ``"fwd"`` is given); ``"fwd"``: forward mode (JVPs; at
        order 2 the JVP of the JVP, and its VJP too where ``"rev"`` is given,
        as JAX does; for torch values, which have no JVP of a JVP here, the
        JVP of the VJP).
    atol, rtol : float, optional
        Added to gc's error bound (default: gc's own rule).
    eps : float, optional
        The step for float64 arguments (default: gc picks it).

    Raises
    ------
    AssertionError
        ``gc.CheckFailed`` (an ``AssertionError``) carrying ``.report``.
    """
    if order not in (1, 2):
        raise InputError(f"order={order!r}: check_grads here checks orders 1 and 2.")
    unknown = set(modes) - {"fwd", "rev"}
    if unknown:
        raise InputError(f"modes={tuple(modes)!r}: only 'fwd' and 'rev' are supported.")
    args = tuple(args)
    options = _options(eps, None, atol, rtol, False, args)
    forward, reverse = "fwd" in modes, "rev" in modes
    _outcome(
        _select(check_function(f, *args, **options), reverse=reverse, forward=forward), True, CheckFailed
    )
    if order == 1:
        return None
    # As JAX: "rev" differentiates the VJP (reverse, and forward where "fwd" is asked for too),
    # "fwd" the JVP (forward, and reverse where "rev" is asked for too).
    jvp_differentiable = forward and _differentiates_jvp(args)
    if reverse or not jvp_differentiable:
        second = run_function_second_order(f, args, options, check_function)
        _outcome(_select(second, reverse=reverse, forward=forward), True, CheckFailed)
    if jvp_differentiable:
        of_jvp = run_function_jvp_second_order(f, args, options, check_function)
        _outcome(_select(of_jvp, reverse=reverse, forward=True), True, CheckFailed)
    return None


def _differentiates_jvp(args: tuple[Any, ...]) -> bool:
    """Whether the framework of ``args`` differentiates a JVP again (forward over forward): JAX."""
    arrays = [a for a in args if is_array(a)]
    return bool(arrays) and bool(detect(arrays).differentiates_jvp)
