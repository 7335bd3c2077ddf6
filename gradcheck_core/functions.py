"""Checks built on :func:`~gradcheck_core.check.run_check`: losses of predictions, and functions.

:func:`check_loss` checks a loss with respect to its predictions.
:func:`check_function` checks a vector-valued function: one scalar per
floating output (the output projected on a random cotangent) checked in
reverse mode (VJPs), plus its forward-mode derivatives (JVPs) where the
framework has them; :func:`merge_reports` puts the pieces into one report.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import differences as fd
from .adapters import detect, framework_of, is_array, loss_adapter
from .adapters.base import FIRST_CALL, python_rng_states, restore_states
from .check import Measured, judge, measured, report_of, run_check
from .counted_loss import LossFunction, _own_executor, unchanged
from .errors import InputError
from .flatten import leaf_items, split_structure
from .function_second_order import run_function_second_order
from .interrupts import interrupts_deferred
from .options import Options, generator
from .problem import flat_slope, step_span
from .report import BlockResult, Finding, Report
from .shared_outputs import OutputAdapter, SharedOutputs
from .sweep import ROUNDOFF_ZERO
from .tolerance import rel_error

__all__ = ["check_function", "check_loss", "merge_reports"]


def check_loss(
    loss_fn: Callable[..., Any], y_true: Any, y_pred: Any, grad: Any = None, **options: Any
) -> Report:
    """Check the gradient of a loss with respect to the predictions.

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(y_true, y_pred)`` returning a scalar: a Keras loss (built-in
        or custom), a torch or jax loss function, or plain numpy.
    y_true, y_pred : arrays or tensors
        ``y_pred`` is the parameter; ``y_true`` stays fixed.
    grad : optional
        The gradient with respect to ``y_pred`` (values, or a callable taking
        ``y_pred``); default: the framework's autodiff.
    **options
        As for :func:`check`.
    """
    adapter = loss_adapter(loss_fn, y_pred)
    closure = (
        adapter.loss_closure(loss_fn, y_true, y_pred)
        if hasattr(adapter, "loss_closure")
        else (lambda yp: loss_fn(y_true, yp))
    )
    opts = Options(**options)
    # Named y_pred in the report, its findings and its messages.
    if callable(grad):
        user_grad = grad
        grad = lambda p: {"y_pred": user_grad(p["y_pred"])}  # noqa: E731
    elif grad is not None:
        grad = {"y_pred": grad}
    return run_check(
        lambda p: closure(p["y_pred"]), {"y_pred": y_pred}, grad, opts, what="loss", adapter=adapter
    )


def check_function(
    fn: Callable[..., Any],
    *inputs: Any,
    vjp: Callable[..., Any] | None = None,
    check_undefined_grad: bool = True,
    **options: Any,
) -> Report:
    """Check the derivatives of a vector-valued function through VJPs.

    For every differentiable output ``j`` a random cotangent ``u_j`` is drawn
    and the scalar ``phi_j(x) = <u_j, fn(x)_j>`` is checked: its analytic
    gradient is the vector-Jacobian product ``u_j^T J`` (from the framework's
    autodiff, or from ``vjp``), its numerical gradient comes from finite
    differences.  No Jacobian is ever built.  Blocks are named
    ``input{i}->output{j}``.

    Complex inputs and outputs are pairs of real vectors: a complex input
    ``i`` gives the blocks ``input{i}.real->output{j}`` and
    ``input{i}.imag->output{j}``; a complex output gets a complex cotangent
    ``u = ur + 1j ui`` and the scalar ``<ur, Re y> + <ui, Im y>``.

    Outputs the framework declares non-differentiable (integer outputs, a
    ``requires_grad=False`` torch output such as batch norm's saved
    statistics), empty inputs and outputs, and non-finite input entries
    (``-inf`` in a mask) are left out and listed in ``report.skipped``.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs)`` returning an array or a tuple of arrays.
    *inputs
        Its arguments; floating (and, in torch, complex) ones are checked,
        others held fixed.
    vjp : callable, optional
        ``vjp(cotangents, *inputs)`` returning one gradient per input, for
        frameworks without autodiff (numpy).  For a complex input return
        ``dL/dRe + 1j * dL/dIm``.
    check_undefined_grad : bool
        Also run the backward with the other outputs' gradients undefined
        (``None``) and require the same VJP as with explicit zeros (default
        True; with the framework's autodiff only).  A mismatch is an
        ``undefined_grad`` finding.
    **options
        As for :func:`check`.  ``order=2`` checks the derivatives of the VJP
        itself, with respect to the inputs and the cotangents (as
        ``torch.autograd.gradgradcheck`` does); see
        :func:`gradcheck_core.function_second_order.run_function_second_order`.
    """
    if not inputs:
        raise InputError("check_function needs at least one input: check_function(fn, x, ...).")
    if options.get("order", 1) != 1:
        order = options.pop("order")
        Options(order=order)  # validates it
        if vjp is not None:
            raise InputError("order=2 differentiates the framework's VJP; it cannot be combined with vjp=.")
        return run_function_second_order(fn, inputs, options, check_function)
    if not isinstance(check_undefined_grad, bool):
        raise InputError(f"check_undefined_grad={check_undefined_grad!r} must be True or False.")
    # Python numbers are constants of the function, not inputs to differentiate.
    arrays = [
        leaf
        for x in inputs
        for _, leaf in leaf_items(x, lambda v: framework_of(v) is not None)
        if is_array(leaf)
    ]
    if not arrays:
        raise InputError("check_function needs at least one array or tensor input to differentiate.")
    adapter = detect(arrays)
    spread = _SpreadInputs(adapter, fn, inputs)
    if spread.names is not None:  # dict / list / pytree inputs: one input per leaf
        spread_vjp = None if vjp is None else spread.vjp(vjp)
        return spread.rename(check_function(spread.fn, *spread.leaves, vjp=spread_vjp, **options))
    if adapter.name == "numpy" and vjp is None:
        # numpy inputs to a framework function: the output says which framework
        from .adapters import get_adapter

        first = fn(*inputs)
        first = first[0] if isinstance(first, (list, tuple)) and first else first
        fw = framework_of(first)
        if fw not in (None, "numpy"):
            adapter = get_adapter(fw)
    opts = Options(**options)
    start = time.perf_counter()
    # Every call of fn (outputs, VJPs, JVPs, evaluations) starts from the
    # generators' states at the start, so a function that draws random numbers
    # (dropout) draws the same ones each time; the user's stream is put back.
    replay = _Generators(adapter.rng_states() + python_rng_states())
    try:
        return _check(
            fn, inputs, vjp, check_undefined_grad, adapter, opts, options.get("seed", 0), start, replay
        )
    finally:
        replay.restore()
        adapter.forget_compilations()


class _Generators:
    """The random generators' states at the start, put back before each call of ``fn``.

    The generators ``fn`` draws from are found after its first call (by
    comparing states); only those are put back before later calls.
    """

    def __init__(self, generators: list[Any]) -> None:
        self.generators = generators
        self.saved = [r.get() for r in generators]
        self.calls = 0
        self.drawn: list[int] = []
        #: True once every generator was put back to its saved state (by a target
        #: given these states) and nothing has run since: :meth:`restore` has nothing to do.
        self.restored = False

    @property
    def draws(self) -> bool | None:
        """Whether ``fn`` drew from any generator in its first call (None before it was compared)."""
        return bool(self.drawn) if self.calls >= 2 else None

    def __call__(self) -> None:
        self.calls += 1
        if self.calls == 1:  # nothing has run since the states were saved
            return
        if self.calls == 2:
            self.drawn = [
                k for k, (r, s) in enumerate(zip(self.generators, self.saved)) if not unchanged(r, s)
            ]
        for k in self.drawn:
            self.generators[k].set(self.saved[k])

    def restore(self) -> None:
        """Every generator as it was at the start."""
        if self.restored:
            return
        restore_states(self.generators, self.saved)


def _check(
    fn: Callable[..., Any],
    inputs: tuple[Any, ...],
    vjp: Callable[..., Any] | None,
    check_undefined_grad: bool,
    adapter: Any,
    opts: Options,
    seed: Any,
    start: float,
    replay: _Generators,
) -> Report:
    """:func:`check_function` once the adapter and options are known."""
    fi = _FunctionInputs(adapter, fn, inputs)
    if not fi.floating and not fi.skipped:
        raise InputError("fn has no floating input to differentiate; pass float arrays or tensors.")
    replay()
    memo: dict[str, Any] = {}  # what the adapter learns about fn on its first call, for later ones
    forward = vjp is None and hasattr(adapter, "jvp")
    first_jvp: FirstJvp | None = None
    with_jvp = None
    if forward and len(fi.floating) == 1 and hasattr(adapter, "call_with_jvp"):
        # One input: its JVP is taken with the first call (forward mode computes the tangents
        # beside the values), along the direction the JVP check would draw for it.
        i = fi.floating[0]
        v = fi.tangent(i, _tangent_generator(opts))
        with_jvp = adapter.call_with_jvp(
            fn, list(inputs), [v if k == i else None for k in range(len(inputs))], memo
        )
        replay()  # (where fn has no forward mode, the plain call below starts from the same draws)
        if with_jvp is not None:
            first_jvp = (i, v, with_jvp[2])
    if with_jvp is not None:
        outputs, reasons = with_jvp[0], with_jvp[1]
    elif hasattr(adapter, "call_and_reasons"):  # the outputs and why some are left out, from one call
        outputs, reasons = adapter.call_and_reasons(fn, list(inputs), memo=memo)
        replay()
    else:
        outputs = adapter.call(fn, list(inputs))
        replay()
        reasons = _output_reasons(adapter, fn, inputs, outputs)
    rng = generator(seed)
    cotangents: list[np.ndarray | None] = []
    skipped = list(fi.skipped)
    undefined_outputs: dict[int, str] = {}  # output -> its non-finite entries, described
    for j, (o, why) in enumerate(zip(outputs, reasons)):
        if why is None and o.size == 0:
            why = f"empty (shape {tuple(o.shape)}): nothing to check"
        finite = np.isfinite(o) if why is None else None
        if finite is not None and not finite.all():
            undefined_outputs[j] = _non_finite_entries(o, finite)
            if not finite.any():
                why = f"{undefined_outputs[j]} at the given inputs: no entry has a derivative to check"
        if why is not None:
            skipped.append((f"output{j}", why))
            cotangents.append(None)
            continue
        u = rng.standard_normal(o.shape)
        if o.dtype.kind == "c":
            u = u + 1j * rng.standard_normal(o.shape)
        # A zero cotangent entry leaves that output entry out of every projection.
        cotangents.append(u if finite is None or finite.all() else np.where(finite, u, 0))
    if fi.floating and undefined_outputs and all(u is None for u in cotangents):
        return _nothing_checked(adapter, opts, skipped, time.perf_counter() - start, undefined=True)
    if not fi.floating or all(u is None for u in cotangents):
        return _nothing_checked(adapter, opts, skipped, time.perf_counter() - start)
    checked = [j for j, u in enumerate(cotangents) if u is not None]
    gradients: dict[int, list[Any]] = {}
    undefined: list[Finding] = []
    for j in checked:
        # Zeros for the other outputs (of their own dtype for a floating output left out).
        # (none for an output that is non-finite everywhere: a zero cotangent would bring its 0 * nan)
        us = [
            c
            if k == j
            else np.zeros_like(c)
            if c is not None
            else None
            if k in undefined_outputs
            else _zeros_or_none(outputs[k])
            for k, c in enumerate(cotangents)
        ]
        replay()
        if vjp is not None:
            g = vjp(us if len(us) > 1 else us[0], *inputs)
            g = list(g) if isinstance(g, (list, tuple)) else [g]
        else:
            g = adapter.vjp(fn, list(inputs), us, memo=memo)
        if len(g) != len(inputs):
            raise InputError(
                f"the vjp returned {len(g)} gradients for {len(inputs)} inputs; return one per input."
            )
        if vjp is None and check_undefined_grad and len(checked) > 1:
            alone = [cotangents[j] if k == j else None for k in range(len(cotangents))]
            replay()
            undefined += _compare_undefined(fi, j, g, adapter.vjp(fn, list(inputs), alone, memo=memo))
        gradients[j] = g
    # What the adapter kept of its first call for the VJPs (torch: that call's autograd graph)
    memo.pop(FIRST_CALL, None)
    for j in list(checked) if undefined_outputs else []:
        carried = [
            i for i in fi.floating if not np.isfinite(np.asarray(fi.restrict(i, gradients[j][i]))).all()
        ]
        own = undefined_outputs.get(j)
        if carried:
            # 0 * nan in the backward pass: the derivative cannot be separated from the non-finite entries
            names = ", ".join(f"input{i}" for i in carried)
            which = (
                f"{own} at the given inputs" if own else "other outputs are non-finite at the given inputs"
            )
            skipped.append(
                (
                    f"output{j}",
                    f"{which}, and the VJP carries them into the gradient of {names} even where their "
                    "cotangent is zero (0 * nan): its finite entries cannot be checked apart from them",
                )
            )
            checked.remove(j)
            cotangents[j] = None
            del gradients[j]
        elif own:
            skipped.append((f"output{j}", f"{own} left out; its finite entries are checked"))
    if not checked:
        return _nothing_checked(adapter, opts, skipped, time.perf_counter() - start, undefined=True)
    replay()
    reports, jvp_blocks, jvp_findings, evaluations = _check_outputs(
        fi,
        cotangents,
        checked,
        gradients,
        opts,
        replay,
        forward=forward,
        memo=memo,
        # the outputs of the first call, computed as every evaluation computes them (at float64
        # copies of the inputs) by an adapter whose first call is made for that (torch's)
        first=outputs if hasattr(adapter, "call_and_reasons") else None,
        first_jvp=first_jvp,
    )
    merged = merge_reports(reports)
    merged.skipped = skipped
    if undefined:
        merged.findings += undefined
        merged.verdict = "fail"
    merged.blocks += jvp_blocks
    merged.findings += jvp_findings
    if any(not b.passed for b in jvp_blocks):
        merged.verdict = "fail"
    elif merged.verdict == "pass" and any(b.verdict == "inconclusive" for b in jvp_blocks):
        merged.verdict = "inconclusive"
    merged.nfev = evaluations
    merged.seconds = time.perf_counter() - start
    return merged


def _check_outputs(
    fi: _FunctionInputs,
    cotangents: list[np.ndarray | None],
    checked: list[int],
    gradients: dict[int, list[Any]],
    opts: Options,
    replay: _Generators,
    forward: bool,
    memo: dict[str, Any] | None = None,
    first: list[np.ndarray] | None = None,
    first_jvp: FirstJvp | None = None,
) -> tuple[list[Report], list[BlockResult], list[Finding], int]:
    """Every checked output's VJP check (and, with ``forward``, its JVP checks) from shared evaluations.

    One evaluation of ``fn`` at a point gives every output's projection
    (:class:`~gradcheck_core.shared_outputs.SharedOutputs`); the outputs'
    sweeps take one step, the smallest any of them would choose (a smaller
    step only adds round-off, which each output's bounds account for), so
    they differentiate at the same points.  ``memo``: what the adapter
    learnt about ``fn`` on its first call, for its vectorised calls.
    ``first``: that call's outputs, where they are what an evaluation at the
    inputs computes; in a small float64 check they are its first evaluation
    (the repeats that look for nondeterminism are later calls).
    ``first_jvp``: the JVP that call took along one input, where it took one.

    Returns
    -------
    reports, jvp_blocks, jvp_findings, evaluations
        One report per checked output (blocks named ``input{i}->output{j}``),
        the JVP blocks and findings, and the evaluations of ``fn`` made.
    """
    adapter = fi.adapter
    us = [u for j in checked if (u := cotangents[j]) is not None]

    def projections(p: dict[str, Any]) -> np.ndarray:
        ys = adapter.call(fi.fn, fi.arguments(p))
        # <ur, Re y> + <ui, Im y>: the real inner product of the pairs
        return np.array([project(u, ys[j]) for j, u in zip(checked, us)])

    with (
        interrupts_deferred(),
        _own_executor(opts.executor) as executor,
        _open_target(adapter, projections, fi.params, opts.float64, replay, memo) as target,
    ):
        # What the first call showed about fn's random draws holds for the generators both know.
        known = {r.name for r in replay.generators} >= {r.name for r in target.rngs}
        shared = SharedOutputs(
            target,
            len(checked),
            _rows_of(fi, checked, us, target.flat, opts, memo),
            draws=replay.draws if known else None,
        )
        if first is not None and opts.float64 and target.flat.n <= AHEAD:
            # (only where the check is small: the first evaluation is not timed then, and
            # a small check's time goes into such fixed costs)
            shared.seed_x0(np.array([project(u, first[j]) for j, u in zip(checked, us)]))
        guess = _expect_sweep(shared, target.flat, opts)
        each = copy.copy(opts)
        each.executor = executor
        try:
            with contextlib.ExitStack() as stack:
                ms = []
                for pos, (j, u) in enumerate(zip(checked, us)):
                    g = gradients[j]
                    ms.append(
                        stack.enter_context(
                            measured(
                                fi.projection(j, u),
                                fi.params,
                                {f"input{i}": fi.restrict(i, g[i]) for i in fi.floating},
                                each,
                                adapter=OutputAdapter(adapter, shared.output_target(pos)),
                                batch_probe=True,
                            )
                        )
                    )
                rel = min(m.ctx.rel_step(m.ctx.opts.method) for m in ms)
                if guess is not None and guess <= rel <= 2 * guess:
                    # the step of the points evaluated ahead: shorter by less than half (the noise
                    # measured a little above float64's), whose error bounds the sweep takes as they are
                    rel = guess
                for m in ms:
                    m.ctx.step = rel
                    m.ctx.t_eval = ms[0].ctx.t_eval  # the others were read from memory
                for m in ms:
                    judge(m)
                jvp_blocks: list[BlockResult] = []
                jvp_findings: list[Finding] = []
                if forward:
                    _check_jvps(
                        fi, checked, us, shared, ms, opts, replay, jvp_blocks, jvp_findings, first_jvp
                    )
        finally:
            shared.restore_rngs()
    # The target put the generators back to the states given to it, when they were all of them.
    replay.restored = getattr(adapter, "target_takes_hints", False) and [r.name for r in target.rngs] == [
        r.name for r in replay.generators
    ]
    reports = []
    for j, m in zip(checked, ms):
        report = report_of(m, "function")
        for b in report.blocks:
            b.name = f"{b.name}->output{j}"
        for f in report.findings:
            if f.block:
                f.block = f"{f.block}->output{j}"
        reports.append(report)
    return reports, jvp_blocks, jvp_findings, shared.evaluations


# A check of at most this many coordinates has its sweep's points evaluated ahead
# with the noise probe's (:func:`_expect_sweep`).
AHEAD = 64


def _expect_sweep(shared: SharedOutputs, flat: Any, opts: Options) -> float | None:
    """The full sweep's points, at the step it will most likely take, evaluated with the noise probe's.

    For a small function the fixed cost of a vectorised call is most of a
    check: one call then serves the probe and the sweep.  The step is the
    user's, else the one float64 round-off gives; returned (None where no
    points are evaluated ahead) so that the caller takes it where the noise
    probe's choice is at most twice as long.  A function noisier than that
    gets the step it needs: the points evaluated ahead are then evaluated
    for nothing, and counted.  Only for a full sweep of every coordinate,
    where the outputs' evaluations are vectorised.
    """
    if shared.rows is None or flat.n > AHEAD or opts.sample is not None or opts.mode == "fast":
        return None
    if opts.executor is not None:  # (the sweep's points then go to the executor, not to these rows)
        return None
    if opts.method not in ("central", "richardson"):
        return None
    rel = float(opts.step) if opts.step is not None else fd.relative_step(opts.method, fd.EPS)
    shared.expect(fd.sweep_points(flat.x0, np.arange(flat.n), method=opts.method, rel_step=rel))
    return rel


def _open_target(
    adapter: Any,
    loss: Callable[..., Any],
    params: dict[str, Any],
    float64: bool,
    replay: _Generators,
    memo: dict[str, Any] | None,
) -> Any:
    """``adapter.target`` for ``loss``, told what is known already where the adapter takes it.

    The generators' states were saved at the start (``replay`` puts them back
    at the end), so the target need not read them again; ``memo`` holds what
    the first call of ``fn`` showed (whether it needs the float64 mode),
    which holds for ``loss``, the projections of ``fn``'s outputs.  An
    adapter that would otherwise try to trace and compile the loss (JAX) is
    told that ``loss`` computes with numpy values, so that it does not.
    """
    if getattr(adapter, "target_takes_hints", False):
        values = {r.name: s for r, s in zip(replay.generators, replay.saved)}
        promotion = None if memo is None else memo.get("promotion")
        if promotion is not None and promotion.needed is None:
            promotion = None  # not learnt (the first call raised): the target learns it itself
        return adapter.target(loss, params, float64=float64, rng_values=values, promotion=promotion)
    if getattr(adapter, "takes_numpy_losses", False):  # the projections compute with numpy values
        return adapter.target(loss, params, float64=float64, numpy_loss=True)
    return adapter.target(loss, params, float64=float64)


def _zeros_or_none(output: np.ndarray) -> np.ndarray | None:
    """A zero cotangent for a floating or complex output, None for others."""
    return np.zeros_like(output) if output.dtype.kind in "fc" else None


def _output_reasons(
    adapter: Any, fn: Callable[..., Any], inputs: Any, outputs: list[np.ndarray]
) -> list[str | None]:
    """Why each output is not checked (None: it is), as the framework declares it."""
    declared = getattr(adapter, "nondifferentiable_outputs", None)
    if declared is not None:
        return list(declared(fn, list(inputs)))
    complex_ok = bool(getattr(adapter, "supports_complex", False))
    reasons: list[str | None] = []
    for o in outputs:
        if o.dtype.kind == "c" and not complex_ok:
            reasons.append(f"complex outputs are not checked with {adapter.name}")
        elif o.dtype.kind not in "fc":
            reasons.append(f"{o.dtype} values have no derivative")
        else:
            reasons.append(None)
    return reasons


def _non_finite_entries(output: np.ndarray, finite: np.ndarray) -> str:
    """``"3 of 25 entries are non-finite (nan)"``, for an output with non-finite entries."""
    kinds = sorted({str(v) for v in output[~finite].ravel().tolist()})
    return f"{int((~finite).sum())} of {finite.size} entries are non-finite ({', '.join(kinds)})"


def _nothing_checked(
    adapter: Any, opts: Options, skipped: list[tuple[str, str]], seconds: float, undefined: bool = False
) -> Report:
    """A report that says nothing was checked, and why (every input or output left out).

    Empty or non-differentiable inputs and outputs make it a pass (there is
    nothing to get wrong); outputs that are non-finite at the given inputs
    make it inconclusive (``non_finite_output``): the function is undefined
    there, so its derivative cannot be checked at this point.
    """
    what = ", ".join(w for w, _ in skipped)
    if undefined:
        finding = Finding(
            "non_finite_output",
            None,
            f"nothing could be checked: the outputs are NaN or infinite at the given inputs ({what} left "
            "out; see 'not checked'), so the function has no derivative there. Check it at inputs inside "
            "its domain (a negative base to a fractional power, log of a negative number, 0/0 give NaN).",
            {"skipped": [list(s) for s in skipped]},
        )
    else:
        finding = Finding(
            "nothing_checked",
            None,
            f"nothing was checked: {what} were left out (the reasons are listed under "
            "'not checked'), and no non-empty floating input reaches a differentiable output.",
            {"skipped": [list(s) for s in skipped]},
        )
    return Report(
        verdict="inconclusive" if undefined else "pass",
        rel_error=float("nan") if undefined else 0.0,
        blocks=[],
        findings=[finding],
        nfev=0,
        seconds=seconds,
        method=opts.method,
        step=float("nan"),
        framework=adapter.name,
        rtol=opts.rtol,
        atol=opts.atol,
        what="function",
        skipped=skipped,
    )


def _compare_undefined(
    fi: _FunctionInputs, j: int, with_zeros: list[np.ndarray], undefined: list[np.ndarray]
) -> list[Finding]:
    """Findings where the VJP with the other outputs' gradients undefined differs from the one with zeros."""
    out = []
    for i in fi.floating:
        a = np.asarray(with_zeros[i])
        b = np.asarray(undefined[i])
        if a.size == 0:
            continue
        scale = float(np.max(np.abs(a)))
        diff = float(np.max(np.abs(a - b)))
        # Two computations of the same product: they agree to round-off.
        if not np.isfinite(diff) or diff > 1e-8 * max(scale, float(np.max(np.abs(b)))):
            out.append(
                Finding(
                    "undefined_grad",
                    f"input{i}->output{j}",
                    f"the backward pass gives a different gradient for input {i} when the gradients "
                    f"of the outputs other than output {j} are undefined (None) than when they are "
                    f"zeros (largest difference {diff:.3g}, gradient scale {scale:.3g}); a backward "
                    "must treat an undefined output gradient as zero (in a custom "
                    "autograd.Function with ctx.set_materialize_grads(False), test each grad for None).",
                    {"output": j, "input": i, "max_abs_difference": diff},
                )
            )
    return out


class _FunctionInputs:
    """The inputs of a function under check: the non-empty floating ones are the parameters.

    They are named ``input{i}``; other inputs (integers, Python numbers) are
    held fixed, empty ones and non-finite entries too (listed in ``skipped``).
    An input with non-finite entries is checked through its finite entries
    only: its parameter is the 1-d array of those, in row-major order.
    :meth:`projection` turns output ``j`` into the scalar ``<u, fn(inputs)_j>``
    whose gradient is the vector-Jacobian product.
    """

    def __init__(self, adapter: Any, fn: Callable[..., Any], inputs: tuple[Any, ...] | list[Any]) -> None:
        self.adapter = adapter
        self.fn = fn
        self.inputs = list(inputs)
        self.floating: list[int] = []
        self.skipped: list[tuple[str, str]] = []
        self.masks: dict[int, np.ndarray] = {}
        self.params: dict[str, Any] = {}
        complex_ok = bool(getattr(adapter, "supports_complex", False))
        for i, x in enumerate(self.inputs):
            if isinstance(x, (int, float)):
                continue
            values = _floating_values(adapter, x, True)
            if values is None:
                continue
            if values.dtype.kind == "c" and not complex_ok:
                self.skipped.append((f"input{i}", f"complex inputs are not checked with {adapter.name}"))
                continue
            if values.size == 0:
                self.skipped.append((f"input{i}", f"empty (shape {values.shape}): nothing to check"))
                continue
            finite = np.isfinite(values)
            if not finite.all():
                kinds = sorted({str(v) for v in values[~finite].ravel().tolist()})
                self.skipped.append(
                    (
                        f"input{i}",
                        f"{int((~finite).sum())} non-finite entries ({', '.join(kinds)}) held fixed; "
                        f"the block lists the {int(finite.sum())} finite entries in row-major order",
                    )
                )
                if not finite.any():
                    continue
                self.masks[i] = finite
                self.params[f"input{i}"] = adapter.take(x, finite)
            else:
                self.params[f"input{i}"] = adapter.as_parameter(x)
            self.floating.append(i)

    def tangent(self, i: int, rng: np.random.Generator) -> np.ndarray:
        """A random direction for input ``i``'s JVP: normal entries (complex for a complex input), 0 off its mask."""
        full = np.asarray(self.adapter.to_numpy(self.inputs[i]))
        v = rng.standard_normal(full.shape)
        if full.dtype.kind == "c":
            v = v + 1j * rng.standard_normal(full.shape)
        mask = self.masks.get(i)
        return v if mask is None else np.where(mask, v, 0)

    def restrict(self, i: int, gradient: Any) -> Any:
        """An input's gradient, restricted to the entries that are checked."""
        mask = self.masks.get(i)
        return gradient if mask is None else np.asarray(gradient)[mask]

    def arguments(self, p: dict[str, Any]) -> list[Any]:
        """The function's arguments with the checked inputs taken from ``p``."""
        args = list(self.inputs)
        for i in self.floating:
            mask = self.masks.get(i)
            value = p[f"input{i}"]
            original = self.inputs[i]
            args[i] = (
                self.adapter.like(original, value)
                if mask is None
                else self.adapter.put(original, mask, value)
            )
        return args

    def projection(self, j: int, u: np.ndarray) -> Callable[[dict[str, Any]], float]:
        def phi(p: dict[str, Any]) -> float:
            return project(u, self.adapter.call(self.fn, self.arguments(p))[j])

        return phi


class _SpreadInputs:
    """Inputs that are dicts, lists, tuples or pytree nodes, as one input per array.

    ``check_function(fn, {"w": w, "b": b}, x)`` checks ``fn`` as a function of
    ``w``, ``b`` and ``x``; its blocks are named ``input0.w``, ``input0.b``
    and ``input1`` (``input0[0]`` for a list).  :attr:`names` is None when
    every input is an array or a number already.
    """

    def __init__(self, adapter: Any, fn: Callable[..., Any], inputs: tuple[Any, ...]) -> None:
        self.adapter = adapter
        self.parts: list[tuple[int, Callable[[Any], Any]]] = []  # (leaf count, rebuild) per input
        self.leaves: list[Any] = []
        names: list[str] = []
        spread = False
        for i, x in enumerate(inputs):
            value = adapter.collect(x) if not adapter.is_leaf(x) else x
            if isinstance(value, (dict, list, tuple)) and not adapter.is_leaf(value):
                pairs, rebuild = split_structure(value, adapter.is_leaf)
                names.extend(f"input{i}.{n}" if not n.startswith("[") else f"input{i}{n}" for n, _ in pairs)
                self.leaves.extend(v for _, v in pairs)
                self.parts.append((len(pairs), rebuild))
                spread = True
            else:
                names.append(f"input{i}")
                self.leaves.append(x)
                self.parts.append((1, lambda pieces: pieces[0]))
        self.names = names if spread else None
        self.user_fn = fn

    def rebuild(self, leaves: tuple[Any, ...] | list[Any]) -> list[Any]:
        """The user's inputs from one value per leaf."""
        out, k = [], 0
        for count, rebuild in self.parts:
            out.append(rebuild(list(leaves[k : k + count])))
            k += count
        return out

    def fn(self, *leaves: Any) -> Any:
        """The user's function of one argument per leaf."""
        return self.user_fn(*self.rebuild(leaves))

    def vjp(self, user_vjp: Callable[..., Any]) -> Callable[..., Any]:
        """The user's ``vjp(cotangents, *inputs)`` returning one gradient per leaf."""

        def spread_vjp(cotangents: Any, *leaves: Any) -> list[Any]:
            grads = user_vjp(cotangents, *self.rebuild(leaves))
            grads = list(grads) if isinstance(grads, (list, tuple)) else [grads]
            out: list[Any] = []
            for (count, _), g in zip(self.parts, grads, strict=False):
                if count == 1 and not isinstance(g, (dict, list, tuple)):
                    out.append(g)
                else:
                    out.extend(v for _, v in leaf_items(self.adapter.collect(g), self.adapter.is_leaf))
            return out

        return spread_vjp

    def rename(self, report: Report) -> Report:
        """``input{k}`` in block names and findings becomes the leaf's name."""
        names = self.names or []

        def renamed(name: str | None) -> str | None:
            if name is None or not name.startswith("input"):
                return name
            head, sep, tail = name.partition("->")
            k = int(head[len("input") :])
            return f"{names[k]}{sep}{tail}"

        for b in report.blocks:
            b.name = renamed(b.name) or b.name
        for f in report.findings:
            f.block = renamed(f.block)
        return report


def _rows_of(
    fi: _FunctionInputs,
    checked: list[int],
    us: list[np.ndarray],
    flat: Any,
    opts: Options,
    memo: dict[str, Any] | None = None,
) -> Callable[[np.ndarray], np.ndarray] | None:
    """The projections at many points at once, where the adapter can vectorise ``fn`` (else None).

    Only for real inputs checked entry by entry, in float64, with a scheme that
    does not mix these values with a point-by-point one (forward differences
    subtract the value at the point).
    """
    adapter = fi.adapter
    if not hasattr(adapter, "call_rows") or fi.masks or flat.has_complex or not opts.float64:
        return None
    if opts.method == "forward":
        return None
    leaves = {leaf.name: leaf for leaf in flat.leaves}
    if sorted(leaves) != sorted(f"input{i}" for i in fi.floating):
        return None
    memo = {} if memo is None else memo  # what the adapter learns about fn on one call, for the next

    def rows(points: np.ndarray) -> np.ndarray:
        m = len(points)
        values = {
            i: points[:, leaves[f"input{i}"].slice].reshape((m, *leaves[f"input{i}"].shape))
            for i in fi.floating
        }
        ys = adapter.call_rows(fi.fn, fi.inputs, values, memo=memo)
        return np.stack(
            [
                np.sum(np.where(u != 0, np.real(np.conj(u) * np.asarray(ys[j])), 0.0).reshape(m, -1), axis=1)
                for j, u in zip(checked, us)
            ],
            axis=1,
        )

    return rows


#: ``(i, v, tangents)``: the output tangents of ``fn`` along direction ``v`` of input ``i``.
FirstJvp = tuple[int, np.ndarray, list[np.ndarray]]


def _tangent_generator(opts: Options) -> np.random.Generator:
    """The generator of the JVP check's directions (its own stream, beside the cotangents')."""
    return generator(None if opts.seed is None else opts.seed + 1)


def _check_jvps(
    fi: _FunctionInputs,
    checked: list[int],
    us: list[np.ndarray],
    shared: SharedOutputs,
    ms: list[Measured],
    opts: Options,
    replay: Callable[[], None],
    blocks: list[BlockResult],
    findings: list[Finding],
    first_jvp: FirstJvp | None = None,
) -> None:
    """Forward mode: ``<u_j, J_ij v_i>`` from the framework's JVP against finite differences.

    Appends one block ``input{i}->output{j} (jvp)`` per pair to ``blocks``.
    Where output ``j``'s full sweep settled every entry of input ``i``, the
    numerical ``<u_j, J_ij v_i>`` is its numerical gradient along ``v_i``
    (:func:`_swept_slope`), at no further evaluation.  Otherwise directional
    differences along ``v_i`` are taken at the same points for every output
    (one step, the smallest any output would choose), so one evaluation of
    ``fn`` serves all outputs; each output's value and noise come from its
    VJP check.  A function without forward mode (a
    ``custom_vjp`` rule, a torch Function without ``jvp``) gets a
    ``no_forward_mode`` finding instead.  ``first_jvp``: the JVP along one
    input taken with ``fn``'s first call (its direction drawn as this
    function would draw it), used instead of a call of its own.
    """
    rng = _tangent_generator(opts)
    adapter, inputs = fi.adapter, fi.inputs
    flat = ms[0].ctx.flat
    funs: dict[int, LossFunction] = {}  # output position -> its projection, made where differences need it

    def fun_of(pos: int) -> LossFunction:
        if pos not in funs:
            funs[pos] = LossFunction(shared.output_target(pos), adapter)
        return funs[pos]

    rel = min(fd.relative_step("richardson", m.ctx.noise / abs(m.ctx.f0) if m.ctx.f0 else fd.EPS) for m in ms)
    for i in fi.floating:
        mask = fi.masks.get(i)
        if first_jvp is not None and first_jvp[0] == i:  # taken with fn's first call
            v, out_tangents = first_jvp[1], first_jvp[2]
        else:
            v = fi.tangent(i, rng)
            try:
                replay()
                out_tangents = adapter.jvp(fi.fn, inputs, [v if k == i else None for k in range(len(inputs))])
            except InputError as exc:
                findings.append(Finding("no_forward_mode", f"input{i}", str(exc), {}))
                return
        shape = v.shape
        direction = np.zeros(flat.n)
        group = flat.groups[fi.floating.index(i)]
        entries = (v if mask is None else v[mask]).reshape(-1)
        direction[group[0].slice] = np.real(entries)
        if len(group) == 2:
            direction[group[1].slice] = np.imag(entries)
        # Where an output's sweep measured every entry of the input, its numerical
        # gradient along the direction is <u, J v> already; else directional differences.
        swept = [_swept_slope(m, group, direction) for m in ms]
        if any(sw is None for sw in swept):  # the points directional differences evaluate, at once
            shared.prefetch(np.array(fd.directional_points(flat.x0, direction, rel)))
        for pos, (j, u, m, sw) in enumerate(zip(checked, us, ms, swept)):
            analytic = project(u, out_tangents[j])
            if sw is None:
                numeric, err, _ = fd.directional(
                    fun_of(pos), flat.x0, direction, rel_step=rel, noise=m.ctx.noise, f0=m.ctx.f0
                )
                allowance = 8 * err
            else:
                numeric, allowance = sw
            hidden = False
            if 0 in (analytic, numeric):  # inside one stair of a staircase?
                flat_bound = flat_slope(fun_of(pos), flat.x0, m.ctx.f0, direction)
                if flat_bound is not None:
                    numeric, allowance = 0.0, 8 * flat_bound
                    # flat, and the rule's slope too small for float64 to show over the step
                    # (but not a zero computed with round-off, which the flat function confirms)
                    hidden = not _roundoff_slope(m.ctx, analytic, direction) and m.ctx.below_resolution(
                        analytic, direction
                    )
            # Relative to the terms of <u, J v> as the rule gives them (a rule that is wrong by a
            # factor is caught at any scale of J), and to the estimate; not to |u| |v|.
            terms = float(
                np.linalg.norm(u) * np.linalg.norm(np.where(u != 0, np.asarray(out_tangents[j]), 0))
            )
            tol = opts.atol + opts.rtol * max(terms, abs(numeric)) + allowance
            ok = hidden or (abs(analytic - numeric) <= tol if np.isfinite(allowance) else True)
            verdict = "inconclusive" if hidden else "pass" if ok else "fail"
            if hidden:
                findings.append(
                    Finding(
                        "low_precision",
                        f"input{i}->output{j} (jvp)",
                        f"the function does not change at all along the direction of input {i}, while the "
                        f"forward-mode derivative there ({analytic:.3g}) is too small for float64 to show over "
                        "the step: finite differences cannot tell right from wrong here.",
                        {"analytic": analytic},
                    )
                )
            a_arr, n_arr = np.array([analytic]), np.array([numeric])
            blocks.append(
                BlockResult(
                    name=f"input{i}->output{j} (jvp)",
                    shape=tuple(shape),
                    passed=ok,
                    verdict=verdict,
                    rel_error=rel_error(a_arr, n_arr),
                    max_abs_error=abs(analytic - numeric),
                    worst_index=None,
                    n_checked=0,
                    n_bad=0 if ok else 1,
                    analytic=np.zeros(0),
                    numeric=np.zeros(0),
                    indices=np.zeros(0, dtype=np.int64),
                    tolerance=np.zeros(0),
                    checked_by="directions",
                    directional_analytic=a_arr,
                    directional_numeric=n_arr,
                )
            )
            if not ok:
                findings.append(
                    Finding(
                        "forward_mode",
                        f"input{i}->output{j} (jvp)",
                        f"the forward-mode derivative (JVP) of output {j} along input {i} is {analytic:.6g}, "
                        f"finite differences give {numeric:.6g}: the jvp rule for input {i} is wrong "
                        "(the reverse-mode rule may still be right).",
                        {"analytic": analytic, "numeric": numeric},
                    )
                )


def _swept_slope(m: Measured, group: list[Any], direction: np.ndarray) -> tuple[float, float] | None:
    """``<n, direction>`` from an output's full sweep ``n`` over one input, and its error bound.

    ``group``: the input's leaves (real part, and imaginary part of a complex
    input).  The bound sums each entry's own (its error bound, and ``rtol``
    of its size for the truncation the central scheme does not estimate),
    weighted by ``|direction|``.  None where the sweep did not settle every
    entry of the input: sampled or fast mode, a kink, a block that is not a
    clear pass, a non-finite estimate.
    """
    if m.mode != "full" or m.nondeterministic:
        return None
    opts = m.ctx.opts
    names = [leaf.name for leaf in m.ctx.flat.leaves]
    value = bound = 0.0
    for leaf in group:
        b = m.blocks[names.index(leaf.name)]
        if b.verdict != "pass" or b.n_kink or b.n_checked != leaf.size:
            return None
        n = b.numeric
        # the estimate's own error bound: the tolerance less its atol and rtol parts
        err = b.tolerance - opts.atol - opts.rtol * np.maximum(np.abs(b.analytic), np.abs(n))
        d = direction[leaf.slice][b.indices]
        if not (np.all(np.isfinite(n)) and np.all(np.isfinite(err))):
            return None
        value += float(d @ n)
        bound += float(np.abs(d) @ (np.maximum(err, 0.0) + opts.rtol * np.abs(n)))
    return value, bound


def _roundoff_slope(ctx: Any, slope: float, direction: np.ndarray) -> bool:
    """Whether a directional slope is zero up to round-off (as the full sweep's entries are judged).

    Below :data:`~gradcheck_core.sweep.ROUNDOFF_ZERO` ulps of the value over a
    unit step of the coordinates it moves.
    """
    return abs(slope) * step_span(ctx.flat.x0, direction) <= ROUNDOFF_ZERO * fd.EPS * max(
        abs(ctx.f0), ctx.floor, 1e-300
    )


def project(u: np.ndarray, y: Any) -> float:
    """``<ur, Re y> + <ui, Im y>``, the real inner product of the pairs, over the entries where ``u != 0``.

    An output entry whose cotangent is exactly zero (one that is non-finite at
    the given inputs) takes no part, whatever its value.
    """
    return float(np.sum(np.real(np.conj(u) * np.asarray(y)), where=u != 0))


def _floating_values(adapter: Any, value: Any, complex_ok: bool) -> np.ndarray | None:
    """``value`` as numpy if it is floating (or complex, with ``complex_ok``), else None."""
    try:
        array = np.asarray(adapter.to_numpy(value))
    except Exception:
        return None
    return array if array.dtype.kind == "f" or (complex_ok and array.dtype.kind == "c") else None


def merge_reports(reports: list[Report]) -> Report:
    """One report from several checks of the same function.

    Parameters
    ----------
    reports : list of Report
        At least one; the first gives the method, step, mode and framework.

    Returns
    -------
    Report
        Every block and finding, the worst verdict, summed evaluations and time.
    """
    blocks = [b for r in reports for b in r.blocks]
    compared = [b.compared() for b in blocks]
    findings = [f for r in reports for f in r.findings]
    verdicts = {r.verdict for r in reports}
    verdict = "fail" if "fail" in verdicts else "inconclusive" if "inconclusive" in verdicts else "pass"
    first = reports[0]
    return Report(
        verdict=verdict,
        rel_error=rel_error(
            np.concatenate([c[0] for c in compared]) if compared else np.zeros(0),
            np.concatenate([c[1] for c in compared]) if compared else np.zeros(0),
        ),
        blocks=blocks,
        findings=findings,
        nfev=sum(r.nfev for r in reports),
        seconds=sum(r.seconds for r in reports),
        method=first.method,
        step=first.step,
        mode=first.mode,
        framework=first.framework,
        n_params=sum(r.n_params for r in reports),
        noise=max(r.noise for r in reports),
        loss_value=first.loss_value,
        rtol=first.rtol,
        atol=first.atol,
        what=first.what,
    )
