"""The check: flatten, evaluate, difference, compare, diagnose, report.

This is the one loop of the library.  Adapters prepare the loss (float64,
state snapshots); everything after that is framework-free numpy: the loss
becomes a :class:`~gradcheck_core.problem.Problem`, which the full sweep
(:mod:`gradcheck_core.sweep`) or fast mode (:mod:`gradcheck_core.fast`)
turns into one result per parameter.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np

from . import differences as fd
from .counted_loss import prepared
from .diagnose import diagnose_block, saturation_finding
from .errors import InputError
from .fast import run_fast
from .options import Options
from .problem import Problem
from .report import Finding, Report
from .sweep import run_full
from .tolerance import rel_error

__all__ = ["assert_gradients", "check", "run_check"]

# mode="auto" sweeps every coordinate when that costs less than this...
AUTO_FULL_SECONDS = 5.0
# ...or when there are at most this many coordinates.
AUTO_FULL_SIZE = 2000
# Relative noise above this (about 4500 x float64 round-off) is reported as low precision.
NOISY = 1e-12


def _generators(framework: str) -> str:
    names = ["numpy's", "Python's"] + ([] if framework == "numpy" else [f"{framework}'s"])
    return ", ".join(names[:-1]) + " and " + names[-1]


def _rounding_floor(dtype: str | None, f0: float) -> float:
    """The rounding error of the loss's own result type: noise cannot be smaller.

    A float16 or float32 result is quantised to its last bit; a noise probe
    with small steps can miss that and underestimate the noise.
    """
    try:
        eps = float(np.finfo(np.dtype(dtype)).eps) if dtype else fd.EPS
    except TypeError:  # bfloat16 and other extension types
        eps = 2.0**-7 if dtype and "bfloat16" in dtype else fd.EPS
    return 0.5 * eps * abs(f0)


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


def _clip_note(loss: Any) -> str | None:
    """Why the loss is clipped, when an adapter can tell (Keras's crossentropies)."""
    from .adapters import clip_note

    return clip_note(loss)


def _analytic_and_dtype(grad: Any, target: Any, adapter: Any) -> tuple[np.ndarray, str | None]:
    """The gradient to check as a flat vector, and its dtype when it was given narrower than float64."""
    flat = target.flat
    if grad is None:
        if target.gradient is None:
            raise InputError(
                f"{target.framework} has no automatic differentiation, so there is no gradient to "
                "check: pass your backward pass as grad= (a function called like the loss, or "
                "the gradient values: the structure of params, a dict such as {'dW1': ..., "
                "'db1': ...}, or one flat vector)."
            )
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
    executor: Executor | None = None,
    directions: int = 3,
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
    executor : concurrent.futures.Executor, optional
        Evaluate the sweep's points in parallel (a thread or process pool, or a
        Dask client's executor).
    directions : int
        Random directions per parameter in fast mode.

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
    )
    return run_check(loss, params, grad, opts)


def run_check(
    loss: Any, params: Any, grad: Any, opts: Options, what: str = "gradient", adapter: Any = None
) -> Report:
    """:func:`check` with validated options (``adapter``: default, the one of ``params``)."""
    start = time.perf_counter()
    with prepared(loss, params, opts, adapter) as (adapter, target, fun):
        flat = target.flat
        rng = np.random.default_rng(opts.seed)
        t0 = time.perf_counter()
        f0 = fun(flat.x0)
        t_eval = time.perf_counter() - t0
        fun.replay()  # the gradient sees the same random draws as every evaluation
        analytic, given_dtype = _analytic_and_dtype(grad, target, adapter)
        findings: list[Finding] = []
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

        try:
            noise, _ = fd.estimate_noise(fun, flat.x0, f0, rng)
        except InputError:  # the probe left the loss's domain; the sweep will say where
            noise = fd.EPS * abs(f0)
        noise = max(noise, spread, _rounding_floor(fun.out_dtype, f0))
        # Noise relative to the loss's scale: its value, or (for a loss that is
        # near 0 here, like a residual at its optimum) how much it changes over
        # a unit move, which the gradient tells.
        magnitude = max(abs(f0), float(np.max(np.abs(analytic))) if analytic.size else 0.0)
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

        mode = opts.mode
        per_coord = fd.EVALS_PER_COORDINATE[opts.method]
        if mode == "auto":
            cost = per_coord * flat.n * t_eval
            mode = (
                "full"
                if (opts.sample is not None or flat.n <= AUTO_FULL_SIZE or cost <= AUTO_FULL_SECONDS)
                else "fast"
            )

        ctx = Problem(fun, flat, analytic, f0, noise, noise_rel, opts, rng, t_eval)
        if mode == "fast":
            blocks, method_used, step_used = run_fast(ctx)
        else:
            blocks, method_used, step_used = run_full(ctx)

        if nondeterministic:  # no verdict either way can be trusted
            for b in blocks:
                b.verdict, b.passed = "inconclusive", False
        for b in blocks:
            if b.verdict == "fail" and len(b.indices):
                leaf = flat.leaves[[lf.name for lf in flat.leaves].index(b.name)]
                x_local = flat.x0[b.indices + leaf.offset]
                full = None
                if b.n_checked == leaf.size:
                    full = (b.analytic, b.numeric)
                flat_finding = saturation_finding(b, _clip_note(loss))
                # entries where the loss is flat explain the failure better than a bug pattern
                if flat_finding is None or flat_finding.detail["n_flat"] < b.n_bad:
                    findings.extend(diagnose_block(b, x_local, full))
                if flat_finding is not None:
                    findings.append(flat_finding)
        kinks = [b for b in blocks if b.n_kink]
        if kinks:
            total = sum(b.n_kink for b in kinks)
            findings.append(
                Finding(
                    "kink",
                    kinks[0].name if len(kinks) == 1 else None,
                    f"{total} coordinate(s) sit at a kink of the loss ({', '.join(b.name for b in kinks)}): "
                    "the slopes left and right differ (ReLU at 0, abs, max, the edge of a clip), so finite differences "
                    "cannot judge them; they were not counted as wrong. Move the parameters off "
                    "the kink (a small random shift) to check them too.",
                    {"blocks": {b.name: b.n_kink for b in kinks}},
                )
            )
    verdicts = {b.verdict for b in blocks}
    verdict = "fail" if "fail" in verdicts else "inconclusive" if "inconclusive" in verdicts else "pass"
    a_all = np.concatenate([b.compared()[0] for b in blocks]) if blocks else np.zeros(0)
    n_all = np.concatenate([b.compared()[1] for b in blocks]) if blocks else np.zeros(0)
    return Report(
        verdict=verdict,
        rel_error=rel_error(a_all, n_all),
        blocks=blocks,
        findings=findings,
        nfev=fun.nfev,
        seconds=time.perf_counter() - start,
        method=method_used,
        step=step_used,
        mode=mode,
        framework=target.framework,
        n_params=flat.n,
        noise=noise,
        loss_value=f0,
        rtol=opts.rtol,
        atol=opts.atol,
        what=what,
    )


def assert_gradients(loss: Callable[..., Any], params: Any, grad: Any = None, **options: Any) -> Report:
    """:func:`check`, then raise :class:`GradcheckError` unless it passed.

    Returns the report when the check passed.
    """
    return check(loss, params, grad, **options).raise_if_failed()
