"""The check: flatten, evaluate, difference, compare, diagnose, report.

This is the one loop of the library.  Adapters prepare the loss (float64,
state snapshots); everything after that is framework-free numpy: the loss
becomes a :class:`~gradcheck_core.problem.Problem`, which the full sweep
(:mod:`gradcheck_core.sweep`) or fast mode (:mod:`gradcheck_core.fast`)
turns into one result per parameter.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import differences as fd
from .adapters import clip_note
from .counted_loss import PART_SECONDS, prepared
from .diagnose import (
    diagnose_block,
    explain_verdicts,
    mismatch,
    non_finite_findings,
    saturation_finding,
    unpermuted,
)
from .errors import InputError
from .fast import confirms, run_fast
from .options import Options, generator
from .problem import Problem
from .report import Finding, Report
from .second_order import run_second_order
from .sweep import run_full
from .tolerance import rel_error

__all__ = ["Measured", "assert_gradients", "check", "judge", "measured", "report_of", "run_check"]

# mode="auto" sweeps every coordinate when that costs less than this...
AUTO_FULL_SECONDS = 5.0
# ...or when there are at most this many coordinates.
AUTO_FULL_SIZE = 2000
# Relative noise above this (about 4500 x float64 round-off) is reported as low precision.
NOISY = 1e-12
#: Parameters from which a noisy-looking probe along all of them is checked along single tensors.
WIDE_PROBE = 100_000
#: The probe's rows go to an executor only up to this many floats in all (8 MiB).
PROBE_ROWS_MOST = 1 << 20
# mode="full" is refused above this many coordinates (the sweep keeps a few
# float64 vectors of this length per batch row)...
FULL_MAX_SIZE = 20_000_000
# ...or when its evaluations are estimated to take longer than this.
FULL_MAX_SECONDS = 24 * 3600.0


def _check_loss_callable(loss: Any) -> None:
    """A loss must be callable as ``loss(p)`` or ``loss()``: say so before the first call."""
    if not callable(loss):
        raise InputError(
            f"loss must be a function, but it is a {type(loss).__name__} ({_short(loss)}); pass "
            "a callable such as `lambda p: ...` that returns the loss as a number."
        )
    try:
        sig = inspect.signature(loss)
    except (TypeError, ValueError):  # builtins and C extensions without a signature
        return
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if len(required) > 1:
        names = ", ".join(p.name for p in required)
        raise InputError(
            f"the loss takes {len(required)} positional arguments ({names}); it is called as "
            "loss(p) with the parameters, or as loss() when it reads them itself. Bind the other "
            f"arguments first, e.g. functools.partial(loss, {required[1].name}=...) or "
            f"lambda p: loss(p, {', '.join(p.name for p in required[1:])})."
        )
    keyword_only = [p.name for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    if keyword_only:
        raise InputError(
            f"the loss has a required keyword-only argument {keyword_only[0]!r}, which the check "
            f"cannot supply; give it a default or bind it first: functools.partial(loss, "
            f"{keyword_only[0]}=...)."
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_finite_parameters(flat: Any) -> None:
    """NaN or inf in the parameters themselves (not at a step): name the entry."""
    bad = fd.non_finite(flat.x0)
    if not bad.size:
        return
    b, local = flat.block_of(int(bad[0]))
    raise InputError(
        f"parameter {flat.leaves[b].name!r} holds {flat.x0[bad[0]]} at index {list(local)} "
        f"({bad.size} non-finite entr{'y' if bad.size == 1 else 'ies'} in all) before any step is "
        "taken; a gradient check needs finite parameter values: initialise them, or find where "
        "the NaN/inf came from (a diverged training step, log(0), 0/0)."
    )


def _refuse_huge_full_sweep(n: int, evaluations: int, seconds: float | None) -> None:
    too_big = n > FULL_MAX_SIZE
    too_long = seconds is not None and seconds > FULL_MAX_SECONDS
    if not (too_big or too_long):
        return
    estimate = f", about {seconds / 3600:.3g} hours at the measured time per evaluation" if seconds else ""
    raise InputError(
        f"mode='full' on {n:,} parameters means {evaluations:,} evaluations of the loss{estimate}, "
        f"and vectors of {n:,} float64 values per point"
        f"{' (more than the limit of ' + format(FULL_MAX_SIZE, ',') + ' parameters)' if too_big else ''}. "
        "Use mode='fast' (random directions, then localisation of wrong entries) or sample= (a "
        "number of coordinates per parameter) instead."
    )


def _kinks_left_out(
    fun: Any, flat: Any, f0: float, noise: float, rng: np.random.Generator, batch: Any
) -> float:
    """The noise of a large model, looked at again where it seems far above float64's.

    The probe moves every parameter at once; in a large network of ReLUs or
    hard-swishes that segment switches many units, and the difference table
    reads the kinks as noise (MobileNetV3Small, 932,768 weights: 1e-14 on some
    directions, 4e-8 on others).  Then the first and the largest parameter are
    probed alone, crossing far fewer, and the smallest level counts: a loss that
    really computes in low precision is noisy along each of them too.
    """
    if flat.n < WIDE_PROBE or len(flat.leaves) < 2 or noise <= NOISY * max(abs(f0), 1e-300):
        return noise
    leaves = [flat.leaves[0], max(flat.leaves, key=lambda leaf: leaf.size)]
    for leaf in leaves[: 1 if leaves[0] is leaves[1] else 2]:
        try:
            again, _ = fd.estimate_noise(fun, flat.x0, f0, rng, batch=batch, block=leaf.slice)
        except InputError:
            continue
        noise = min(noise, again)
    return noise


def _probe_to_executor(fun: Any, n: int, t_eval: float) -> bool:
    """Whether the noise probe's points go to the check's executor, as the sweep's do.

    Where an executor is given and the probe's evaluations are worth at least one
    part of rows (:data:`~gradcheck_core.counted_loss.PART_SECONDS`, which pays
    for the round trips), and its rows are short enough to send: the probe's
    eight points then take about the time of four.
    """
    if getattr(fun, "executor", None) is None:
        return False
    return fd.NOISE_POINTS * t_eval >= PART_SECONDS and fd.NOISE_POINTS * n <= PROBE_ROWS_MOST


def _generators(framework: str) -> str:
    names = ["numpy's", "Python's"] + ([] if framework == "numpy" else [f"{framework}'s"])
    return ", ".join(names[:-1]) + " and " + names[-1]


def _rounding_floor(dtype: str | None, f0: float) -> float:
    """The rounding error of the loss's own result type: noise cannot be smaller.

    A float16 or float32 result is quantised to its last bit; a noise probe
    with small steps can miss that and underestimate the noise.
    """
    return 0.5 * _eps_of(dtype) * abs(f0)


@functools.lru_cache(maxsize=64)
def _eps_of(dtype: str | None) -> float:
    """Machine epsilon of a result type named ``dtype`` (float64's for None)."""
    try:
        return float(np.finfo(np.dtype(dtype)).eps) if dtype else fd.EPS
    except TypeError:  # bfloat16 and other extension types
        return 2.0**-7 if dtype and "bfloat16" in dtype else fd.EPS


# A gradient given in a narrow float type is judged at that type's precision:
# relative tolerance this many of its machine epsilons, plus an absolute one of
# this many epsilons times the gradient's largest entry (for entries computed by
# summing larger terms).
GIVEN_RTOL_EPS = 16.0
GIVEN_ATOL_EPS = 16.0


def _narrowest_dtype(value: Any, adapter: Any) -> str | None:
    """The narrowest floating dtype below float64 among the leaves of a given gradient, or None."""
    from .flatten import leaf_items

    try:
        leaves = [leaf for _, leaf in leaf_items(adapter.collect(value), adapter.is_leaf)]
    except Exception:
        return None
    narrowest: tuple[float, str] | None = None
    for leaf in leaves:
        dt = getattr(leaf, "dtype", None)
        name = str(getattr(dt, "name", dt)).replace("torch.", "")
        eps = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23}.get(name)
        if eps is not None and (narrowest is None or eps > narrowest[0]):
            narrowest = (eps, name)
    return None if narrowest is None else narrowest[1]


def _given_precision(dtype: str, analytic: np.ndarray, opts: Options) -> tuple[Options, Finding]:
    """Options that judge a gradient given in ``dtype`` at its precision, and the finding that says so."""
    eps = {"float16": 2.0**-10, "bfloat16": 2.0**-7}.get(dtype, 2.0**-23)
    widened = copy.copy(opts)
    widened.rtol = max(opts.rtol, GIVEN_RTOL_EPS * eps)
    scale = float(np.max(np.abs(analytic))) if analytic.size else 0.0
    widened.atol = max(opts.atol, GIVEN_ATOL_EPS * eps * scale)
    finding = Finding(
        "low_precision",
        None,
        f"the gradient was given in {dtype}, so it is only as precise as {dtype} (machine epsilon "
        f"{eps:.2g}): it was judged at that precision (rtol {widened.rtol:.2g}, atol "
        f"{widened.atol:.2g}) rather than float64's. Compute it in float64 (float64 parameters, "
        "jax.config x64 mode, .double()) to check it more tightly.",
        {"dtype": dtype, "rtol": widened.rtol, "atol": widened.atol, "reasons": [f"gradient in {dtype}"]},
    )
    return widened, finding


def _no_autodiff(target: Any) -> InputError:
    return InputError(
        f"{target.framework} has no automatic differentiation, so there is no gradient to "
        "check: pass your backward pass as grad= (a function called like the loss, or "
        "the gradient values: the structure of params, a dict such as {'dW1': ..., "
        "'db1': ...}, or one flat vector)."
    )


def _analytic_and_dtype(grad: Any, target: Any, adapter: Any) -> tuple[np.ndarray, str | None]:
    """The gradient to check as a flat vector, and its dtype when it was given narrower than float64."""
    flat = target.flat
    if grad is None:
        if target.gradient is None:
            raise _no_autodiff(target)
        vec = np.asarray(target.gradient(), dtype=np.float64).reshape(-1)
        if vec.size != flat.n:
            raise InputError(f"the framework's gradient has {vec.size} entries, the parameters {flat.n}.")
        return vec, None
    # A callable that holds arrays (an Equinox or nnx module) is the gradient itself.
    is_function = callable(grad) and not adapter.gradient_is_values(grad)
    value = target.call_grad(grad) if is_function else grad
    return adapter.gradient_vector(value, flat), _narrowest_dtype(value, adapter)


def check(
    loss: Callable[..., Any],
    params: Any,
    grad: Any = None,
    *,
    mode: str = "auto",
    method: str = "central",
    step: float | None = None,
    rtol: float | None = None,
    atol: float = 0.0,
    sample: int | None = None,
    seed: int | None = 0,
    float64: bool = True,
    progress: bool | None = None,
    executor: Executor | str | None = None,
    directions: int = 3,
    order: int = 1,
    hessian: Any = None,
    hvp: Callable[..., Any] | None = None,
) -> Report:
    """Check a gradient against finite differences.

    Parameters
    ----------
    loss : callable
        Returns a scalar.  Called as ``loss(p)`` with ``p`` shaped like
        ``params`` when it takes an argument; called as ``loss()`` when it
        takes none (then ``params`` are arrays, tensors or variables that the
        loss reads, perturbed in place and restored bit for bit afterwards).
    params : array, tensor, module, model or nested dict/list/tuple of them
        The parameters to differentiate with respect to (one framework).
    grad : callable or values, optional
        The gradient to check.  ``None`` uses the framework's autodiff.  A
        callable is called like ``loss``.  Values (or what the callable
        returns) may be: the structure of ``params``; a dict keyed by parameter
        names or by names with a ``d`` prefix (``dW1``; other keys ignored);
        one flat vector in flatten order.
    mode : {"auto", "full", "fast"}
        ``"full"`` differentiates along every coordinate (2 evaluations each
        with central differences); ``"fast"`` compares random directional
        derivatives per parameter and localises wrong entries by group testing;
        ``"auto"`` sweeps small problems fully and uses fast mode for large ones.
    method : {"central", "forward", "richardson", "complex"}
        The finite difference scheme of the sweep.
    step : float, optional
        Relative step: coordinate ``i`` moves by ``step * max(1, |x_i|)``.
        Default: chosen from the measured noise of the loss.
    rtol, atol : float
        Relative (default 1e-6) and absolute (default 0) tolerance per entry,
        on top of the error bound of the numerical estimate.
    sample : int, optional
        Check this many random coordinates per parameter instead of all.
    seed : int, optional
        Seed for sampled coordinates, directions and the noise probe.
    float64 : bool
        Evaluate in float64 where the framework allows (default True).
    progress : bool, optional
        Show a progress bar (default: on a terminal, when the sweep is expected
        to take more than about 2 s).
    executor : concurrent.futures.Executor or "threads", optional
        Evaluate the sweep's points in parallel (a thread or process pool, or a
        Dask client's executor); ``"threads"``: a thread pool made for the
        check and shut down after it.  An exception the loss raises in a
        worker reaches the caller as it is.
    directions : int
        Random directions per parameter in fast mode.
    order : {1, 2}
        ``2`` checks the Hessian instead of the gradient: for a random
        direction ``w``, the Hessian-vector product ``H w`` (autodiff double
        backward, or ``hessian=``/``hvp=``) against finite differences of the
        gradient ``<grad L, w>`` (the framework's, or ``grad=`` as a function).
    hessian : array or callable, optional
        With ``order=2``: the Hessian as an ``(n, n)`` matrix in flatten order,
        or a function called like the loss returning one.
    hvp : callable, optional
        With ``order=2``: ``hvp(p, w)`` (``hvp(w)`` for a loss without
        argument) returning the Hessian-vector product; ``w`` has the
        structure of ``params``, holding float64 numpy arrays.

    Returns
    -------
    Report
        ``report.passed``, ``report.verdict``, one ``BlockResult`` per
        parameter, findings, evaluation count and timing.

    Raises
    ------
    GradcheckError
        For unusable input (non-scalar or non-finite loss, a gradient of the
        wrong shape, integer parameters, mixed frameworks, ...).
    """
    opts = Options(
        mode=mode,
        method=method,
        step=step,
        rtol=rtol,
        atol=atol,
        sample=sample,
        seed=seed,
        float64=float64,
        progress=progress,
        executor=executor,
        directions=directions,
        order=order,
        hessian=hessian,
        hvp=hvp,
    )
    return run_check(loss, params, grad, opts)


def run_check(
    loss: Any, params: Any, grad: Any, opts: Options, what: str = "gradient", adapter: Any = None
) -> Report:
    """:func:`check` with validated options (``adapter``: default, the one of ``params``)."""
    _check_loss_callable(loss)
    if opts.order == 2:
        return run_second_order(loss, params, grad, opts, adapter, run_check)
    with measured(loss, params, grad, opts, adapter) as m:
        judge(m)
    return report_of(m, what)


@dataclass
class Measured:
    """A check measured but not yet swept: its :class:`Problem` and what the report needs.

    ``mode`` is the requested one until :func:`judge` decides ``"auto"``;
    :func:`judge` fills ``blocks``, ``method`` and ``step``.
    """

    ctx: Problem
    target: Any
    fun: Any
    findings: list[Finding]
    nondeterministic: bool
    mode: str
    start: float
    blocks: list[Any] = field(default_factory=list)
    method: str = ""
    step: float = float("nan")
    loss: Any = None


@contextlib.contextmanager
def measured(
    loss: Any, params: Any, grad: Any, opts: Options, adapter: Any = None, batch_probe: bool = False
) -> Iterator[Measured]:
    """Open the loss, evaluate it at the point, its gradient, repeats and noise: a :class:`Measured`.

    The loss stays open (and the random generators replayable) inside the
    ``with`` block, where :func:`judge` sweeps it.  ``batch_probe``: the noise
    probe evaluates its points at once through the target's batch evaluation.
    A user's loss is validated by the caller (:func:`run_check`); the
    projections :func:`~gradcheck_core.functions.check_function` builds need no
    signature check.
    """
    start = time.perf_counter()
    with prepared(loss, params, opts, adapter) as (adapter, target, fun):
        flat = target.flat
        _check_finite_parameters(flat)
        per_coord = fd.EVALS_PER_COORDINATE[opts.method]
        if opts.mode == "full" and opts.sample is None:
            _refuse_huge_full_sweep(flat.n, per_coord * flat.n, None)
        rng = generator(opts.seed)
        t0 = time.perf_counter()
        f0 = fun(flat.x0)
        t_eval = time.perf_counter() - t0
        if opts.mode == "full" and opts.sample is None:
            _refuse_huge_full_sweep(flat.n, per_coord * flat.n, per_coord * flat.n * t_eval)
        if grad is None and target.gradient is None:
            raise _no_autodiff(target)  # before the probe's evaluations
        # The noise probe comes before the gradient: its direction and the gradient,
        # each as long as the parameters, are then never held at once.
        probe_batch = fun.batch if batch_probe or _probe_to_executor(fun, flat.n, t_eval) else None
        try:
            noise, _ = fd.estimate_noise(fun, flat.x0, f0, rng, batch=probe_batch)
        except InputError:  # the probe left the loss's domain; the sweep will say where
            noise = fd.EPS * abs(f0)
        noise = _kinks_left_out(fun, flat, f0, noise, rng, probe_batch)
        fun.replay()  # the gradient sees the same random draws as every evaluation
        analytic, given_dtype = _analytic_and_dtype(grad, target, adapter)
        findings: list[Finding] = []
        if opts.method == "complex" and flat.has_complex:
            opts = copy.copy(opts)
            opts.method = "richardson"
            findings.append(
                Finding(
                    "method_changed",
                    None,
                    "method='complex' (the complex step) needs real parameters, and these are "
                    f"complex: {', '.join(repr(g[0].value_name) for g in flat.groups if len(g) == 2)}; "
                    "Richardson differences (of comparable accuracy) were used instead.",
                    {"requested": "complex", "used": "richardson"},
                )
            )
        if given_dtype is not None:
            opts, given_finding = _given_precision(given_dtype, analytic, opts)
            findings.append(given_finding)

        # Repeated evaluation at the same point: nondeterminism?
        f_again = [fun(flat.x0) for _ in range(2)]
        spread = float(np.ptp([f0, *f_again]))
        nondeterministic = spread > 1e-9 * max(abs(f0), 1e-300)
        if nondeterministic:
            findings.append(
                Finding(
                    "nondeterministic",
                    None,
                    f"the loss gave different values for the same parameters ({f0:.10g}, "
                    f"{f_again[0]:.10g}, {f_again[1]:.10g}) even with {_generators(target.framework)} "
                    "random generators replayed. Finite differences cannot "
                    "be trusted, so no coordinate is called wrong. Remove the randomness for the "
                    "check (dropout off / eval mode, a fixed seed inside the loss, a generator "
                    "created inside the loss rather than captured from outside).",
                    {"values": [f0, *f_again], "spread": spread},
                )
            )

        noise = max(noise, spread, _rounding_floor(fun.out_dtype, f0))
        # Noise relative to the loss's scale: its value, or (for a loss that is
        # near 0 here, like a residual at its optimum) how much it changes over
        # a unit move, which the gradient tells.
        magnitude = max(abs(f0), fd.max_abs(analytic, finite=True))
        noise_rel = noise / magnitude if magnitude > 0 else fd.EPS
        low_precision = fun.out_dtype not in ("float64", "float128", "longdouble", "complex128", None)
        reasons = list(target.precision)
        if low_precision:
            from .adapters import precision_notes

            reasons.insert(0, f"the loss returns {fun.out_dtype}, not float64")
            if not target.precision:  # the adapter's own explanation comes first
                reasons.extend(precision_notes(fun.first_output, target.framework))
        elif noise_rel > NOISY and not nondeterministic:
            reasons.insert(
                0,
                f"its measured round-off is {noise_rel / fd.EPS:.0f} times that of float64 arithmetic, "
                "so part of it runs in lower precision (a float32 array or constant, a float32 "
                "framework default) or sums many terms with cancellation",
            )
        if reasons:
            findings.append(
                Finding(
                    "low_precision",
                    None,
                    f"the loss is not computed in full float64 precision ({'; '.join(reasons)}). "
                    f"Measured noise: {noise:.2g} (relative {noise_rel:.1g}, float64 would be about "
                    f"{fd.EPS:.1g}). Steps and tolerances were widened to match, so a correct "
                    "gradient is not called wrong, but small errors can hide in the noise.",
                    {"noise": noise, "noise_rel": noise_rel, "reasons": reasons, "dtype": fun.out_dtype},
                )
            )

        floor = _rounding_floor(fun.out_dtype, f0)
        ctx = Problem(fun, flat, analytic, f0, noise, noise_rel, opts, rng, t_eval, floor)
        yield Measured(ctx, target, fun, findings, nondeterministic, opts.mode, start, loss=loss)


def judge(m: Measured) -> None:
    """Sweep a measured check (inside its :func:`measured` block) and diagnose what fails."""
    ctx, flat, findings, opts = m.ctx, m.ctx.flat, m.findings, m.ctx.opts
    analytic = ctx.analytic
    mode = m.mode
    if mode == "auto":
        cost = fd.EVALS_PER_COORDINATE[opts.method] * flat.n * ctx.t_eval
        mode = (
            "full"
            if (opts.sample is not None or flat.n <= AUTO_FULL_SIZE or cost <= AUTO_FULL_SECONDS)
            else "fast"
        )
    m.mode = mode
    if mode == "fast":
        blocks, m.method, m.step = run_fast(ctx)
    else:
        blocks, m.method, m.step = run_full(ctx)
    m.blocks = blocks
    if m.nondeterministic:  # no verdict either way can be trusted
        for b in blocks:
            b.verdict, b.passed = "inconclusive", False
    findings.extend(non_finite_findings(analytic, flat))
    for b in blocks:
        if b.verdict == "fail" and len(b.indices) and np.all(np.isfinite(b.analytic)):
            leaf = flat.leaves[[lf.name for lf in flat.leaves].index(b.name)]
            x_local = flat.x0[b.indices + leaf.offset]
            found: list[Finding] = []
            flat_finding = saturation_finding(b, clip_note(m.loss))
            # entries where the loss is flat explain the failure better than a bug pattern
            if flat_finding is None or flat_finding.detail["n_flat"] < b.n_bad:
                found = diagnose_block(b, x_local, analytic[leaf.slice])
                if mode == "fast" and found and found[0].kind == "transpose":
                    # a few sampled entries suggested it: confirm along whole directions
                    meant = unpermuted(analytic[leaf.slice], leaf.shape, tuple(found[0].detail["axes"]))
                    if not confirms(ctx, leaf, meant):
                        found = [mismatch(b)]
            findings.extend(found)
            if flat_finding is not None:
                findings.append(flat_finding)
    kinks = [b for b in blocks if b.n_kink]
    if kinks:
        total = sum(b.n_kink for b in kinks)
        findings.append(
            Finding(
                "kink",
                kinks[0].name if len(kinks) == 1 else None,
                f"{total} coordinate(s) sit at a kink or a step of the loss "
                f"({', '.join(b.name for b in kinks)}): the slopes left and right differ (ReLU at "
                "0, abs, max, the edge of a clip), or the loss jumps there (floor, round or sign at "
                "the edge of a stair), so finite differences cannot judge them; they were not "
                "counted as wrong. Move the parameters off the kink (a small random shift) to check "
                "them too.",
                {"blocks": {b.name: b.n_kink for b in kinks}},
            )
        )


def report_of(m: Measured, what: str) -> Report:
    """The report of a judged check."""
    flat, opts, blocks = m.ctx.flat, m.ctx.opts, m.blocks
    # An empty parameter has nothing to check: left out of the table, and said so.
    skipped = [
        (leaf.name, f"empty (shape {leaf.shape}): nothing to check") for leaf in flat.leaves if not leaf.size
    ]
    blocks = [b for b in blocks if b.size]
    m.findings.extend(explain_verdicts(blocks, m.findings))
    verdicts = {b.verdict for b in blocks}
    verdict = "fail" if "fail" in verdicts else "inconclusive" if "inconclusive" in verdicts else "pass"
    a_all = np.concatenate([b.compared()[0] for b in blocks]) if blocks else np.zeros(0)
    n_all = np.concatenate([b.compared()[1] for b in blocks]) if blocks else np.zeros(0)
    return Report(
        verdict=verdict,
        rel_error=rel_error(a_all, n_all),
        blocks=blocks,
        findings=m.findings,
        nfev=m.fun.nfev,
        seconds=time.perf_counter() - m.start,
        method=m.method,
        step=m.step,
        mode=m.mode,
        framework=m.target.framework,
        n_params=flat.n,
        noise=m.ctx.noise,
        loss_value=m.ctx.f0,
        rtol=opts.rtol,
        atol=opts.atol,
        what=what,
        skipped=skipped,
    )


def assert_gradients(loss: Callable[..., Any], params: Any, grad: Any = None, **options: Any) -> Report:
    """:func:`check`, then raise :class:`GradcheckError` unless it passed.

    Returns the report when the check passed.
    """
    return check(loss, params, grad, **options).raise_if_failed()
