"""Second-order checks: the Hessian of a loss, and the derivatives of a function's VJP.

Both are first-order checks of a derived function, so every part of the
first-order machinery (float64, noise, steps, fast and full mode, diagnosis)
applies unchanged:

* ``check(loss, params, order=2)``: for a random direction ``w``, the scalar
  ``g_w(x) = <grad L(x), w>`` is a scalar function of the parameters.  Its
  analytic gradient is the Hessian-vector product ``H(x) w`` (double backward,
  or the user's ``hessian=``/``hvp=``); its numerical gradient comes from
  finite differences of the gradient itself.  Full mode checks every entry of
  ``H w`` (2 gradient evaluations per coordinate); fast mode compares random
  directional derivatives ``v^T H w``.
* ``check_function(fn, *inputs, order=2)``: the function
  ``(x, u) -> u^T J(x)`` (the VJP of ``fn`` at ``x`` along cotangents ``u``,
  written in the framework so that it is differentiable) is checked as a
  function of both ``x`` and ``u``, reverse over reverse and, where the
  framework has forward mode, forward over reverse.

Neither imports :mod:`gradcheck_core.check` or :mod:`gradcheck_core.functions`
(which dispatch here); they pass their first-order check in.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import differences as fd
from .errors import InputError, NotTwiceDifferentiable
from .options import Options
from .report import Finding, Report

__all__ = ["ROUNDOFF_ULPS", "roundoff_floor", "run_function_second_order", "run_second_order"]

#: Explicit Hessians up to this many rows and columns get every wrong entry named.
LOCALISE_MAX = 2000
#: What a framework's autodiff raises when it cannot differentiate a backward pass (torch:
#: RuntimeError, NotImplementedError for a missing double-backward formula; TensorFlow:
#: LookupError for an operation without a registered gradient).
AUTODIFF_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, NotImplementedError, LookupError)
#: The derivatives of a VJP are judged to this many float64 ulps of the check's largest one
#: (:func:`roundoff_floor`), as gc.compare judges an entry against its tensor's largest.
ROUNDOFF_ULPS = 64


def _first_order(opts: Options) -> Options:
    one = copy.copy(opts)
    one.order = 1
    one.hessian = None
    one.hvp = None
    return one


def _takes_argument(loss: Callable[..., Any]) -> bool:
    from .adapters.base import takes_argument

    return takes_argument(loss)


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
    from .adapters import detect

    adapter = adapter if adapter is not None else detect(params)
    flat = adapter.flatten(params)
    rng = np.random.default_rng(opts.seed)
    w = rng.standard_normal(flat.n)
    w_struct = flat.unravel(w)
    functional = _takes_argument(loss)
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
    report = run_check(directional, params, second, _first_order(opts), "hessian", adapter)
    if report.verdict == "fail" and opts.hessian is not None and grad is not None:
        _name_entries(report, loss, params, grad, opts, adapter, functional, flat)
    return report


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


# -- check_function(order=2) --------------------------------------------------------


def run_function_second_order(
    fn: Callable[..., Any],
    inputs: tuple[Any, ...],
    options: dict[str, Any],
    check_function: Callable[..., Report],
    cotangents: list[np.ndarray | None] | None = None,
) -> Report:
    """The derivatives of ``fn``'s VJP with respect to its inputs and cotangents.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs)`` returning an array or a tuple of arrays.
    inputs : tuple
        Its arguments.
    options : dict
        As for :func:`gradcheck_core.check` (without ``order``).
    check_function : callable
        The first-order :func:`gradcheck_core.check_function`.
    cotangents : list, optional
        One cotangent per output (None for outputs left out); default: random.

    Returns
    -------
    Report
        Blocks ``input{i}->vjp[input{k}]`` (the derivative of the VJP for input
        ``k`` with respect to input ``i``) and ``cotangent{j}->vjp[input{k}]``;
        forward-over-reverse blocks end in ``(jvp)``.  A function whose
        backward pass cannot be differentiated, or whose VJP the framework's
        autodiff fails to differentiate (its error quoted), gets the finding
        ``not_twice_differentiable``.  Entries are judged to the round-off
        the VJP inherits from its terms as well (:func:`roundoff_floor`).
    """
    from .adapters import detect, framework_of

    start = time.perf_counter()
    arrays = [x for x in inputs if framework_of(x) is not None and not isinstance(x, (int, float))]
    if not arrays:
        raise InputError("check_function needs at least one array or tensor input to differentiate.")
    adapter = detect(arrays)
    for i, x in enumerate(inputs):
        is_array = framework_of(x) is not None and not isinstance(x, (int, float))
        if is_array and np.asarray(adapter.to_numpy(x)).dtype.kind == "c":
            raise InputError(
                f"input {i} is complex; check_function(order=2) checks real inputs only for now. "
                "Pass the real and imaginary parts as two real inputs, e.g. "
                "fn(torch.complex(re, im)) checked at (re, im)."
            )
    # Every call of fn starts from the random state of now, so that a random fn
    # (dropout) draws the same values for the VJP and for every difference.
    from .adapters.base import python_rng_states

    rngs = adapter.rng_states() + python_rng_states()
    saved = [r.get() for r in rngs]
    try:
        return _function_second_order(
            fn, inputs, options, check_function, cotangents, adapter, start, rngs, saved
        )
    finally:
        for r, state in zip(rngs, saved):
            r.set(state)


def _function_second_order(
    fn: Callable[..., Any],
    inputs: tuple[Any, ...],
    options: dict[str, Any],
    check_function: Callable[..., Report],
    cotangents: list[np.ndarray | None] | None,
    adapter: Any,
    start: float,
    rngs: list[Any],
    saved: list[Any],
) -> Report:
    def replay() -> None:
        for r, state in zip(rngs, saved):
            r.set(state)

    replay()
    outputs = adapter.call(fn, list(inputs))
    if options.get("seed", 0) is None:  # one random seed, so that a second look sees the same check
        options = {**options, "seed": int(np.random.default_rng().integers(2**31))}
    seed = options.get("seed", 0)
    rng = np.random.default_rng(None if seed is None else seed + 2)
    if cotangents is None:
        cotangents = [rng.standard_normal(o.shape) if o.dtype.kind == "f" else None for o in outputs]
    elif len(cotangents) != len(outputs):
        raise InputError(f"fn has {len(outputs)} outputs but {len(cotangents)} cotangents were given.")
    if all(u is None for u in cotangents):
        raise InputError("fn has no floating output to check.")
    vjp_fn, extra, floating = adapter.vjp_function(fn, list(inputs), cotangents)
    names = [f"input{i}" for i in range(len(inputs))]
    names += [f"cotangent{j}" for j, u in enumerate(cotangents) if u is not None]
    outs = [f"vjp[input{k}]" for k in floating]

    # Exceptions raised while the VJP itself runs (fn's forward, its first backward) are the
    # user's and reach them as they are; the framework's autodiff failing to differentiate
    # the VJP afterwards is a finding.
    own: list[BaseException] = []

    def replayed(*args: Any) -> Any:
        replay()
        try:
            return vjp_fn(*args)
        except BaseException as exc:
            own.append(exc)
            raise

    try:
        report = check_function(replayed, *inputs, *extra, **options)
        terms = _terms(outputs, cotangents)
        report = _judged_with_roundoff(report, terms, replayed, (*inputs, *extra), options, check_function)
    except NotTwiceDifferentiable as exc:
        return _not_twice(adapter, str(exc), time.perf_counter() - start)
    except AUTODIFF_ERRORS as exc:
        if _raised_by(exc, own):
            raise
        return _not_twice(adapter, _quoted(exc), time.perf_counter() - start, framework_error=True)
    finally:
        own.clear()
    for b in report.blocks:
        b.name = _rename(b.name, names, outs)
    for f in report.findings:
        if f.block:
            f.block = _rename(f.block, names, outs)
    report.skipped = [(_rename_part(what, names, outs), why) for what, why in report.skipped]
    for f in report.findings:
        if f.kind in ("non_finite_output", "nothing_checked"):
            f.message = re.sub(
                r"\b(?:input|output)\d+\b", lambda m: _rename_part(m.group(0), names, outs), f.message
            )
    report.what = "vjp"
    return report


def _terms(outputs: list[np.ndarray], cotangents: list[np.ndarray | None]) -> float:
    """``sum |u_j| |f_j|``: the size of the terms of ``<u, fn(x)>``, whose gradient the VJP is."""
    total = 0.0
    for o, u in zip(outputs, cotangents):
        if u is not None:
            values = np.abs(np.asarray(u, dtype=np.float64)) * np.abs(np.asarray(o, dtype=np.float64))
            total += float(np.sum(values[np.isfinite(values)]))
    return total


def roundoff_floor(report: Report, terms: float = 0.0) -> float:
    """The round-off the derivatives of a VJP inherit: :data:`ROUNDOFF_ULPS` ulps of their terms.

    The VJP ``u^T J`` is the gradient of ``psi(x) = <u, fn(x)>``, computed by
    the backward pass from the forward's values; each of its entries, and so
    each of its derivatives, is only known to about float64's precision of
    the terms it is made of, however small the entry itself is (the gradient
    of a saturated softmax, 1e-13 next to terms of size 1000).  That
    round-off is systematic, not noise: a term rounded away at one point is
    rounded away at the next, so the noise probe of the VJP cannot see it, yet
    the VJP's finite differences and its autodiff derivative differ by it.
    The first-order check treats a gradient entry below 64 ulps of the loss
    per unit step as a zero for the same reason.

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


def _judged_with_roundoff(
    report: Report,
    terms: float,
    vjp_fn: Callable[..., Any],
    arguments: tuple[Any, ...],
    options: dict[str, Any],
    check_function: Callable[..., Report],
) -> Report:
    """``report``, or, where entries it fails lie within :func:`roundoff_floor`, the check judged with it.

    The floor is only known once every block is measured, so such a check is
    run again (same seed: the same cotangents, steps and points) with the
    floor added to ``atol``; a check that passes, or fails only by more than
    the floor, is returned as it is.  The second report counts the
    evaluations of both and says what was widened (finding ``roundoff_floor``).
    """
    if report.verdict != "fail":
        return report
    floor = roundoff_floor(report, terms)
    explained = _within_floor(report, floor) if floor > 0 else 0
    if not explained:
        return report
    atol = float(options.get("atol", 0.0))
    again = check_function(vjp_fn, *arguments, **{**options, "atol": atol + floor})
    again.nfev += report.nfev
    again.seconds += report.seconds
    again.findings.append(
        Finding(
            "roundoff_floor",
            None,
            f"{explained} entr{'y' if explained == 1 else 'ies'} of the VJP's derivatives differed from "
            f"finite differences by less than {ROUNDOFF_ULPS} float64 ulps of the terms the VJP is made "
            f"of (size {floor / (ROUNDOFF_ULPS * fd.EPS):.3g}: the larger of sum |u_j| |f_j| over the "
            "outputs and the check's largest derivative), the round-off a VJP entry inherits from "
            f"them however small it is itself; the check was judged with atol {atol + floor:.3g} "
            f"(your atol {atol:g} plus {floor:.3g}). Errors below that are not visible in float64.",
            {"floor": floor, "scale": floor / (ROUNDOFF_ULPS * fd.EPS), "entries": explained, "atol": atol},
        )
    )
    return again


def _rename_part(what: str, inputs: list[str], outputs: list[str]) -> str:
    """``input2`` or ``output0`` of the VJP function (a skipped entry), in the original's terms."""
    for prefix, names in (("input", inputs), ("output", outputs)):
        if what.startswith(prefix) and what[len(prefix) :].isdigit():
            k = int(what[len(prefix) :])
            return names[k] if k < len(names) else what
    return what


def _rename(name: str, inputs: list[str], outputs: list[str]) -> str:
    """``input3->output1 (jvp)`` of the VJP function, in the terms of the original function."""
    head, sep, rest = name.partition("->")
    if not sep or not head.startswith("input"):
        return name
    tail, space, suffix = rest.partition(" ")
    try:
        i = int(head[len("input") :])
        j = int(tail[len("output") :])
    except ValueError:
        return name
    if i >= len(inputs) or j >= len(outputs):
        return name
    return f"{inputs[i]}->{outputs[j]}{space}{suffix}"


def _raised_by(exc: BaseException, own: list[BaseException]) -> bool:
    """Whether ``exc``, or an exception it was raised from, came out of the VJP function itself."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        if any(link is e for e in own):
            return True
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return False


def _quoted(exc: BaseException) -> str:
    """The framework's error in one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def _not_twice(adapter: Any, why: str, seconds: float, framework_error: bool = False) -> Report:
    if framework_error:
        message = (
            f"{adapter.name}'s autodiff raised an error while differentiating the VJP of fn ({why}), "
            "so there are no second derivatives to check and order=2 cannot pass. The forward "
            "and the first backward ran; it is the framework's derivative of that backward (its "
            "double-backward formula for one of the operations) that failed. Check the second "
            "derivative another way (a Hessian of a loss built on fn), or report it to the framework."
        )
    else:
        message = (
            f"the backward pass of fn cannot be differentiated ({why}), so there are no second "
            "derivatives to check and order=2 cannot pass. A custom torch.autograd.Function marked "
            "@once_differentiable, or whose backward computes with numpy or on detached tensors, "
            "has this; write the backward with differentiable tensor operations (or a backward "
            "that is itself an autograd.Function) to support double backward."
        )
    finding = Finding(
        "not_twice_differentiable",
        None,
        message,
        {"reason": why, "framework_error": framework_error},
    )
    return Report(
        verdict="fail",
        rel_error=float("nan"),
        blocks=[],
        findings=[finding],
        nfev=0,
        seconds=seconds,
        method="central",
        step=float("nan"),
        framework=adapter.name,
        what="vjp",
    )
