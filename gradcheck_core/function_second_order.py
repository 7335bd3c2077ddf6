"""``check_function(fn, *inputs, order=2)``: the derivatives of a function's VJP (and JVP).

The VJP ``(x, u) -> u^T J(x)``, written in the framework so that it is
differentiable, is checked as a function of both ``x`` and ``u`` by the
first-order :func:`gradcheck_core.check_function`: reverse over reverse and,
where the framework has forward mode, forward over reverse, as
``torch.autograd.gradgradcheck`` does.  The JVP ``(x, t) -> J(x) t`` is
checked the same way where the framework can differentiate it (JAX: forward
over forward and reverse over forward, what ``jax.test_util.check_grads``
checks at order 2 with ``"fwd"`` in its modes).

Nothing here imports :mod:`gradcheck_core.functions`, which dispatches here:
the first-order check is passed in.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .adapters import detect, is_array
from .adapters.base import python_rng_states
from .counted_loss import unchanged
from .errors import InputError, NotTwiceDifferentiable
from .options import generator
from .report import Finding, Report
from .second_order import judged_with_floor

__all__ = ["run_function_jvp_second_order", "run_function_second_order"]

#: What a framework's autodiff raises when it cannot differentiate a backward pass (torch:
#: RuntimeError, NotImplementedError for a missing double-backward formula; TensorFlow:
#: LookupError for an operation without a registered gradient).
AUTODIFF_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, NotImplementedError, LookupError)

# What a derived function is checked as: (the function, its extra inputs after fn's own, the
# names of all its inputs and of its outputs in the original's terms, the size of its terms).
_Derived = tuple[Callable[..., Any], list[Any], list[str], list[str], float]


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
        the VJP inherits from its terms as well
        (:func:`gradcheck_core.second_order.roundoff_floor`).
    """

    def vjp(adapter: Any, outputs: list[np.ndarray], rng: np.random.Generator) -> _Derived:
        given = cotangents
        if given is None:
            given = [_random_cotangent(o, rng, adapter.supports_complex) for o in outputs]
        elif len(given) != len(outputs):
            raise InputError(f"fn has {len(outputs)} outputs but {len(given)} cotangents were given.")
        if all(u is None for u in given):
            kinds = ", ".join(sorted({str(o.dtype) for o in outputs})) or "none"
            raise InputError(
                f"fn has no output whose derivatives {adapter.name} can check at order 2 (dtypes "
                f"of its array outputs: {kinds}); return a floating output"
                + ("" if adapter.supports_complex else " (complex ones: their real and imaginary parts)")
                + "."
            )
        vjp_fn, extra, floating = adapter.vjp_function(fn, list(inputs), given)
        names = [f"input{i}" for i in range(len(inputs))]
        names += [f"cotangent{j}" for j, u in enumerate(given) if u is not None]
        outs = [f"vjp[input{k}]" for k in floating]
        return vjp_fn, extra, names, outs, _terms(outputs, given)

    return _derived_check(fn, inputs, options, check_function, vjp, "vjp")


def run_function_jvp_second_order(
    fn: Callable[..., Any],
    inputs: tuple[Any, ...],
    options: dict[str, Any],
    check_function: Callable[..., Report],
) -> Report:
    """The derivatives of ``fn``'s JVP with respect to its inputs and tangents.

    Parameters
    ----------
    fn, inputs, options, check_function
        As for :func:`run_function_second_order`.

    Returns
    -------
    Report
        Blocks ``input{i}->jvp[output{j}]`` and ``tangent{k}->jvp[output{j}]``
        (reverse over forward), and the same ending in ``(jvp)`` (forward over
        forward), for random tangents of the floating inputs.  Only frameworks
        that differentiate a JVP (JAX) have it; the others raise
        :class:`~gradcheck_core.errors.InputError`.
    """

    def jvp(adapter: Any, outputs: list[np.ndarray], rng: np.random.Generator) -> _Derived:
        tangents = {
            i: rng.standard_normal(np.shape(adapter.to_numpy(x)))
            for i, x in enumerate(inputs)
            if is_array(x) and np.asarray(adapter.to_numpy(x)).dtype.kind == "f"
        }
        if not tangents:
            raise InputError("fn has no floating input to check.")
        jvp_fn, extra = adapter.jvp_function(fn, list(inputs), tangents)
        names = [f"input{i}" for i in range(len(inputs))] + [f"tangent{i}" for i in tangents]
        outs = [f"jvp[output{j}]" for j in range(len(outputs))]
        return jvp_fn, extra, names, outs, 0.0

    return _derived_check(fn, inputs, options, check_function, jvp, "jvp")


def _random_cotangent(output: np.ndarray, rng: np.random.Generator, complex_ok: bool) -> np.ndarray | None:
    """A standard normal cotangent for a floating output (complex for a complex one), else None."""
    if output.dtype.kind == "f":
        return rng.standard_normal(output.shape)
    if output.dtype.kind == "c" and complex_ok:
        return rng.standard_normal(output.shape) + 1j * rng.standard_normal(output.shape)
    return None


def _derived_check(
    fn: Callable[..., Any],
    inputs: tuple[Any, ...],
    options: dict[str, Any],
    check_function: Callable[..., Report],
    derive: Callable[[Any, list[np.ndarray], np.random.Generator], _Derived],
    what: str,
) -> Report:
    """Check the function ``derive`` builds from ``fn`` (its VJP or JVP) at ``inputs`` and its extras."""
    start = time.perf_counter()
    arrays = [x for x in inputs if is_array(x)]
    if not arrays:
        raise InputError("check_function needs at least one array or tensor input to differentiate.")
    adapter = detect(arrays)
    for i, x in enumerate(inputs):
        if is_array(x) and np.asarray(adapter.to_numpy(x)).dtype.kind == "c":
            raise InputError(
                f"input {i} is complex; check_function(order=2) checks real inputs only for now. "
                "Pass the real and imaginary parts as two real inputs, e.g. "
                "fn(torch.complex(re, im)) checked at (re, im)."
            )
    # Every call of fn starts from the random state of now, so that a random fn
    # (dropout) draws the same values for the derived function and for every difference.
    rngs = adapter.rng_states() + python_rng_states()
    saved = [r.get() for r in rngs]

    def replay() -> None:
        for r, state in zip(rngs, saved):
            r.set(state)

    try:
        replay()
        outputs = adapter.call(fn, list(inputs))
        if options.get("seed", 0) is None:  # one random seed, so that a second look sees the same check
            options = {**options, "seed": int(np.random.default_rng().integers(2**31))}
        seed = options.get("seed", 0)
        rng = generator(None if seed is None else seed + 2)
        derived_fn, extra, names, outs, terms = derive(adapter, outputs, rng)

        # Exceptions raised while the derived function itself runs (fn's forward, its first
        # backward) are the user's and reach them as they are; the framework's autodiff failing
        # to differentiate it afterwards is a finding.
        own: list[BaseException] = []
        # Replaying costs a copy of every generator's state per call; a derived function
        # whose first call draws nothing from them is deterministic and is not replayed.
        draws: list[bool | None] = [None]  # unknown until the first call

        def replayed(*args: Any) -> Any:
            if draws[0] is not False:
                replay()
            try:
                value = derived_fn(*args)
            except BaseException as exc:
                own.append(exc)
                raise
            if draws[0] is None:
                draws[0] = not all(unchanged(r, state) for r, state in zip(rngs, saved))
            return value

        arguments = (*inputs, *extra)
        try:
            report = check_function(replayed, *arguments, **options)
            report = judged_with_floor(
                report,
                terms,
                lambda atol: check_function(replayed, *arguments, **{**options, "atol": atol}),
                float(options.get("atol", 0.0)),
                f"the {what.upper()}'s derivatives",
                f"the terms the {what.upper()} is made of",
            )
        except NotTwiceDifferentiable as exc:
            return _not_twice(adapter, str(exc), time.perf_counter() - start, what)
        except AUTODIFF_ERRORS as exc:
            if _raised_by(exc, own):
                raise
            return _not_twice(adapter, _quoted(exc), time.perf_counter() - start, what, framework_error=True)
        finally:
            own.clear()
    finally:
        replay()
    _renamed(report, names, outs)
    report.what = what
    return report


def _renamed(report: Report, names: list[str], outs: list[str]) -> None:
    """Blocks, findings and skipped parts of the derived function's check, in the original's terms."""
    for b in report.blocks:
        b.name = _rename(b.name, names, outs)
    for f in report.findings:
        if f.block:
            f.block = _rename(f.block, names, outs)
    report.skipped = [(_rename_part(part, names, outs), why) for part, why in report.skipped]
    for f in report.findings:
        if f.kind in ("non_finite_output", "nothing_checked"):
            f.message = re.sub(
                r"\b(?:input|output)\d+\b", lambda m: _rename_part(m.group(0), names, outs), f.message
            )


def _terms(outputs: list[np.ndarray], cotangents: list[np.ndarray | None]) -> float:
    """``sum |u_j| |f_j|``: the size of the terms of ``<u, fn(x)>``, whose gradient the VJP is."""
    total = 0.0
    for o, u in zip(outputs, cotangents):
        if u is not None:
            values = np.abs(np.asarray(u)) * np.abs(np.asarray(o))
            total += float(np.sum(values[np.isfinite(values)]))
    return total


def _rename_part(what: str, inputs: list[str], outputs: list[str]) -> str:
    """``input2`` or ``output0`` of the VJP function (a skipped entry), in the original's terms."""
    for prefix, names in (("input", inputs), ("output", outputs)):
        if what.startswith(prefix) and what[len(prefix) :].isdigit():
            k = int(what[len(prefix) :])
            return names[k] if k < len(names) else what
    return what


def _rename(name: str, inputs: list[str], outputs: list[str]) -> str:
    """``input3.imag->output1 (jvp)`` of the derived function, in the terms of the original function."""
    head, sep, rest = name.partition("->")
    if not sep or not head.startswith("input"):
        return name
    head, dot, part = head.partition(".")  # .real / .imag of a complex cotangent
    tail, space, suffix = rest.partition(" ")
    try:
        i = int(head[len("input") :])
        j = int(tail[len("output") :])
    except ValueError:
        return name
    if i >= len(inputs) or j >= len(outputs):
        return name
    return f"{inputs[i]}{dot}{part}->{outputs[j]}{space}{suffix}"


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


def _not_twice(adapter: Any, why: str, seconds: float, what: str, framework_error: bool = False) -> Report:
    if framework_error:
        message = (
            f"{adapter.name}'s autodiff raised an error while differentiating the {what.upper()} of fn "
            f"({why}), "
            f"so there are no second derivatives to check and order=2 cannot pass. fn and its "
            f"{what.upper()} ran; it is the framework's derivative of that {what.upper()} (the "
            "second-derivative formula of one of its operations) that failed. Check the second "
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
        what=what,
    )
