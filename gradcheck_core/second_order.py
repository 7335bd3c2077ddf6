"""Second-order checks of a loss's Hessian, and the round-off floor of all second-order checks.

A second-order check is a first-order check of a derived function, so every
part of the first-order machinery (float64, noise, steps, fast and full mode,
diagnosis) applies unchanged:

* ``check(loss, params, order=2)`` (here): for a random direction ``w``, the scalar
  ``g_w(x) = <grad L(x), w>`` is a scalar function of the parameters.  Its
  analytic gradient is the Hessian-vector product ``H(x) w`` (double backward,
  or the user's ``hessian=``/``hvp=``); its numerical gradient comes from
  finite differences of the gradient itself.  Full mode checks every entry of
  ``H w`` (2 gradient evaluations per coordinate); fast mode compares random
  directional derivatives ``v^T H w``.
* ``check_function(fn, *inputs, order=2)``
  (:mod:`gradcheck_core.function_second_order`): the VJP of ``fn`` as a
  function of its inputs and cotangents.

Both derived functions are computed by autodiff from values whose terms may be
far larger than the derivatives checked; :func:`roundoff_floor` is the
round-off that leaves in them, and :func:`judged_with_floor` judges a failing
check with it.  Nothing here imports :mod:`gradcheck_core.check` (which
dispatches here): the first-order check is passed in.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np

from . import differences as fd
from .adapters import detect
from .adapters.base import takes_argument
from .errors import InputError
from .options import Options, generator
from .report import Finding, Report

__all__ = ["ROUNDOFF_ULPS", "judged_with_floor", "roundoff_floor", "run_second_order"]

#: Explicit Hessians up to this many rows and columns get every wrong entry named.
LOCALISE_MAX = 2000
#: Second derivatives are judged to this many float64 ulps of the check's largest one
#: (:func:`roundoff_floor`), as gc.compare judges an entry against its tensor's largest.
ROUNDOFF_ULPS = 64


def _first_order(opts: Options) -> Options:
    one = copy.copy(opts)
    one.order = 1
    one.hessian = None
    one.hvp = None
    return one


def run_second_order(
    loss: Callable[..., Any],
    params: Any,
    grad: Any,
    opts: Options,
    adapter: Any,
    run_check: Callable[..., Report],
) -> Report:
    """The Hessian of ``loss`` at ``params``, checked through Hessian-vector products.

    Parameters
    ----------
    loss, params, grad
        As for :func:`gradcheck_core.check`; ``grad``, when given, must be a
        function (its values away from the parameters are needed).
    opts : Options
        ``order == 2``; ``opts.hessian`` or ``opts.hvp`` give the analytic
        second derivative, else the framework's autodiff does.
    adapter : Adapter or None
        Default: the adapter of ``params``.
    run_check : callable
        The first-order check, :func:`gradcheck_core.check.run_check`.

    Returns
    -------
    Report
        One block per parameter: the entries of ``H w`` for that parameter
        (``report.what == "hessian"``).
    """
    adapter = adapter if adapter is not None else detect(params)
    flat = adapter.flatten(params)
    rng = generator(opts.seed)
    w = rng.standard_normal(flat.n)
    w_struct = flat.unravel(w)
    functional = takes_argument(loss)
    if grad is not None and not callable(grad):
        raise InputError(
            "order=2 needs the gradient at points near the parameters, so grad= must be a function "
            "called like the loss (returning the gradient), not gradient values."
        )
    if grad is not None and opts.hessian is None and opts.hvp is None:
        raise InputError(
            "order=2 with a handwritten grad= checks your Hessian against finite differences of that "
            "gradient: pass the Hessian as hessian= (a matrix in flatten order, or a function "
            "returning one) or hvp= (a function hvp(p, w) returning the Hessian-vector product)."
        )
    if grad is None:  # the framework's gradient, differenced and differentiated
        directional = adapter.directional_gradient(loss, params, w)
    else:
        directional = _projected_gradient(grad, functional, adapter, flat, w)

    second = None
    if opts.hessian is not None:
        second = _hessian_product(opts.hessian, functional, flat, w, adapter)
    elif opts.hvp is not None:
        user_hvp = opts.hvp
        if functional:
            second = lambda p: user_hvp(p, w_struct)  # noqa: E731
        else:
            second = lambda: user_hvp(w_struct)  # noqa: E731
    if second is None and grad is None:
        second = adapter.hvp_function(loss, params, w)
    one = _first_order(opts)
    report = run_check(directional, params, second, one, "hessian", adapter)

    def again(atol: float) -> Report:
        wider = copy.copy(one)
        wider.atol = atol
        return run_check(directional, params, second, wider, "hessian", adapter)

    if report.verdict == "fail":
        report = judged_with_floor(
            report,
            _gradient_terms(loss, params, opts, adapter, flat, w),
            again,
            one.atol,
            "the Hessian-vector product",
            "the loss the gradient is computed from",
        )
        report.nfev += 1  # the loss's value, for the size of its terms
    if report.verdict == "fail" and opts.hessian is not None and grad is not None:
        _name_entries(report, loss, params, grad, opts, adapter, functional, flat)
    return report


def _gradient_terms(
    loss: Callable[..., Any], params: Any, opts: Options, adapter: Any, flat: Any, w: np.ndarray
) -> float:
    """The size of the terms of ``<grad L, w>``: ``|L(x)| ||w||``.

    Each entry of a computed gradient carries round-off of the size of the
    loss's own (float64's precision of ``L`` per unit step), however small the
    entry is (a saturated softmax: gradients of 1e-38 under a loss of 1000);
    projected on ``w`` those add up as ``||w||`` times one.  One evaluation.
    """
    with adapter.target(loss, params, float64=opts.float64) as target:
        value = np.asarray(adapter.to_numpy(target.evaluate(flat.x0)), dtype=np.float64)
    size = float(np.abs(value).sum())
    return size * float(np.linalg.norm(w)) if np.isfinite(size) else 0.0


def _projected_gradient(
    grad: Callable[..., Any], functional: bool, adapter: Any, flat: Any, w: np.ndarray
) -> Callable[..., float]:
    """``<grad(p), w>`` from a handwritten gradient function, called like the loss."""

    def dot(value: Any) -> float:
        return float(np.dot(adapter.gradient_vector(value, flat), w))

    if functional:
        return lambda p: dot(grad(p))
    return lambda: dot(grad())


def _hessian_matrix(value: Any, adapter: Any, n: int) -> np.ndarray:
    h = np.asarray(adapter.to_numpy(value) if not isinstance(value, np.ndarray) else value, dtype=np.float64)
    if h.shape != (n, n):
        raise InputError(
            f"hessian= has shape {h.shape}; it must be ({n}, {n}): one row and one column per "
            "parameter entry, in flatten order (the order of report.blocks)."
        )
    return h


def _hessian_product(hessian: Any, functional: bool, flat: Any, w: np.ndarray, adapter: Any) -> Any:
    """The analytic ``g_w`` gradient from a Hessian: ``H^T w``, as values or a function.

    ``H^T w`` (not ``H w``) is what finite differences of ``<grad, w>``
    measure, entry ``j`` being ``sum_i w_i dgrad_i/dx_j``; for the symmetric
    Hessian of a correct gradient the two agree.
    """
    if not callable(hessian):
        return _hessian_matrix(hessian, adapter, flat.n).T @ w
    if functional:
        return lambda p: _hessian_matrix(hessian(p), adapter, flat.n).T @ w
    return lambda: _hessian_matrix(hessian(), adapter, flat.n).T @ w


def _name_entries(
    report: Report,
    loss: Callable[..., Any],
    params: Any,
    grad: Callable[..., Any],
    opts: Options,
    adapter: Any,
    functional: bool,
    flat: Any,
) -> None:
    """Name the wrong entries of an explicit Hessian: column by column, for the flagged columns.

    Column ``j`` of the true Hessian is the central difference of the
    gradient along coordinate ``j`` (2 gradient evaluations); the entries of
    the given column farthest from it are named.  Only columns the check
    already found wrong are looked at, so this never changes the verdict.
    """
    if flat.n > LOCALISE_MAX:
        return
    columns: list[int] = []
    for b in report.blocks:
        if b.verdict != "fail" or not len(b.indices):
            continue
        leaf = flat.leaves[flat.names.index(b.name)]
        tol = b.tolerance
        bad = np.abs(b.analytic - b.numeric) > tol
        columns.extend(int(leaf.offset + i) for i in b.indices[bad][:5])
    if not columns:
        return
    with adapter.target(loss, params, float64=opts.float64) as target:

        def gradient_at(x: np.ndarray) -> np.ndarray:
            return adapter.gradient_vector(target.call_grad(grad, x), flat)

        hessian = opts.hessian
        if callable(hessian):
            at_x0 = target.call_grad(hessian)
        else:
            at_x0 = hessian
        h = _hessian_matrix(at_x0, adapter, flat.n)
        named = []
        try:
            for j in columns:
                step = fd.relative_step("richardson", fd.EPS) * max(1.0, abs(flat.x0[j]))
                e = np.zeros(flat.n)
                e[j] = step
                numeric = (gradient_at(flat.x0 + e) - gradient_at(flat.x0 - e)) / (2 * step)
                gap = np.abs(h[:, j] - numeric)
                i = int(np.argmax(gap))
                named.append((i, j, float(h[i, j]), float(numeric[i])))
        except (InputError, TypeError):
            return
    for i, j, given, numeric in named:
        row, col = _entry_name(flat, i), _entry_name(flat, j)
        report.findings.append(
            Finding(
                "hessian_entry",
                flat.leaves[flat.block_of(j)[0]].name,
                f"the Hessian entry H[{row}, {col}] is {given:.6g}, but finite differences of your "
                f"gradient give {numeric:.6g} (d grad[{row}] / d {col}).",
                {"row": row, "column": col, "given": given, "numeric": numeric, "index": (i, j)},
            )
        )


def _entry_name(flat: Any, index: int) -> str:
    b, local = flat.block_of(index)
    return f"{flat.leaves[b].name}[{', '.join(map(str, local))}]"


# -- the round-off floor ------------------------------------------------------------


def roundoff_floor(report: Report, terms: float = 0.0) -> float:
    """The round-off second derivatives inherit: :data:`ROUNDOFF_ULPS` ulps of their terms.

    The VJP ``u^T J`` is the gradient of ``psi(x) = <u, fn(x)>``, computed by
    the backward pass from the forward's values; each of its entries, and so
    each of its derivatives, is only known to about float64's precision of
    the terms it is made of, however small the entry itself is (the gradient
    of a saturated softmax, 1e-13 next to terms of size 1000).  That
    round-off is systematic, not noise: a term rounded away at one point is
    rounded away at the next, so the noise probe of the VJP cannot see it, yet
    the VJP's finite differences and its autodiff derivative differ by it.
    The first-order check treats a gradient entry below 64 ulps of the loss
    per unit step as a zero for the same reason.  A Hessian-vector product,
    the gradient of ``<grad L, w>``, inherits the round-off of the gradient
    it is computed from in the same way.

    The terms' size is the larger of ``terms`` (``sum |u_j| |f_j|``, the terms
    of ``psi``) and the largest derivative of the check (over every block,
    each entry taken as the smaller of its analytic and numerical values, so
    that neither a wrong analytic entry nor a noisy estimate can inflate it;
    forward-over-reverse blocks, which are projections, are left out).
    """
    largest = float(terms) if np.isfinite(terms) else 0.0
    for b in report.blocks:
        if b.name.endswith("(jvp)"):
            continue
        a, n = b.compared()
        both = np.minimum(np.abs(a), np.abs(n))
        both = both[np.isfinite(both)]
        if both.size:
            largest = max(largest, float(both.max()))
    return ROUNDOFF_ULPS * fd.EPS * largest


def _within_floor(report: Report, floor: float) -> int:
    """How many failing entries (or directions) of ``report`` are within ``floor`` of their tolerance."""
    count = 0
    for b in report.blocks:
        if b.verdict != "fail":
            continue
        a, n = b.compared()
        gap = np.abs(a - n)
        if b.checked_by == "coordinates" and b.tolerance.shape == gap.shape:
            count += int(np.sum((gap > b.tolerance) & (gap <= b.tolerance + floor)))
        else:  # directions: their tolerance is not kept; a gap under the floor is round-off whatever it was
            count += int(np.sum(gap <= floor))
    return count


def judged_with_floor(
    report: Report,
    terms: float,
    again: Callable[[float], Report],
    atol: float,
    derivatives: str,
    made_of: str,
) -> Report:
    """``report``, or, where entries it fails lie within :func:`roundoff_floor`, the check judged with it.

    Parameters
    ----------
    report : Report
        A second-order check (of a VJP, a JVP or a directional gradient).
    terms : float
        The size of the derived function's terms (0 where only the check's
        largest derivative gives it).
    again : callable
        ``again(atol)`` runs the same check (same seed: the same directions,
        steps and points) with that ``atol``.
    atol : float
        The user's ``atol``.
    derivatives, made_of : str
        What the finding calls the checked derivatives and their terms.

    Returns
    -------
    Report
        The floor is only known once every block is measured, so a check that
        fails within it is run again with the floor added to ``atol``; the
        second report counts the evaluations of both and says what was
        widened (finding ``roundoff_floor``).  A check that passes, or fails
        only by more than the floor, is returned as it is.
    """
    if report.verdict != "fail":
        return report
    floor = roundoff_floor(report, terms)
    explained = _within_floor(report, floor) if floor > 0 else 0
    if not explained:
        return report
    second = again(atol + floor)
    second.nfev += report.nfev
    second.seconds += report.seconds
    second.findings.append(
        Finding(
            "roundoff_floor",
            None,
            f"{explained} entr{'y' if explained == 1 else 'ies'} of {derivatives} differed from "
            f"finite differences by less than {ROUNDOFF_ULPS} float64 ulps of {made_of} "
            f"(size {floor / (ROUNDOFF_ULPS * fd.EPS):.3g}: the larger of the terms' sum and the "
            "check's largest derivative), the round-off a computed derivative inherits from them "
            f"however small it is itself; the check was judged with atol {atol + floor:.3g} "
            f"(your atol {atol:g} plus {floor:.3g}). Errors below that are not visible in float64.",
            {"floor": floor, "scale": floor / (ROUNDOFF_ULPS * fd.EPS), "entries": explained, "atol": atol},
        )
    )
    return second
