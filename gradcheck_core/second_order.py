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
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import differences as fd
from .errors import InputError, NotTwiceDifferentiable
from .options import Options
from .report import Finding, Report

__all__ = ["run_function_second_order", "run_second_order"]

#: Explicit Hessians up to this many rows and columns get every wrong entry named.
LOCALISE_MAX = 2000


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
        backward pass cannot be differentiated gets the finding
        ``not_twice_differentiable``.
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

    def replayed(*args: Any) -> Any:
        replay()
        return vjp_fn(*args)

    try:
        report = check_function(replayed, *inputs, *extra, **options)
    except NotTwiceDifferentiable as exc:
        return _not_twice(adapter, str(exc), time.perf_counter() - start)
    for b in report.blocks:
        b.name = _rename(b.name, names, outs)
    for f in report.findings:
        if f.block:
            f.block = _rename(f.block, names, outs)
    report.what = "vjp"
    return report


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


def _not_twice(adapter: Any, why: str, seconds: float) -> Report:
    finding = Finding(
        "not_twice_differentiable",
        None,
        f"the backward pass of fn cannot be differentiated ({why}), so there are no second "
        "derivatives to check and order=2 cannot pass. A custom torch.autograd.Function marked "
        "@once_differentiable, or whose backward computes with numpy or on detached tensors, "
        "has this; write the backward with differentiable tensor operations (or a backward "
        "that is itself an autograd.Function) to support double backward.",
        {"reason": why},
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
