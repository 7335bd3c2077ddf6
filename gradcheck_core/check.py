"""The check: flatten, evaluate, difference, compare, diagnose, report.

This is the one loop of the library.  Adapters prepare the loss (float64,
state snapshots); everything after that is framework-free numpy.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import differences as fd
from .compare import DEFAULT_RTOL, block_result, tolerance, undecidable
from .diagnose import diagnose_block
from .errors import InputError
from .report import BlockResult, Finding, Report

__all__ = ["check", "assert_gradients", "check_loss", "check_function", "Options"]

# Round-off bounds from the noise estimate are multiplied by this: the noise
# figure is a standard deviation, a bound must hold for every coordinate.
ROUNDOFF_SAFETY = 8.0
TRUNCATION_SAFETY = 2.0
# Suspect coordinates looked at again with Richardson, per parameter.
REFINE_PER_BLOCK = 20
REFINE_TOTAL = 400
# mode="auto" sweeps every coordinate when that costs less than this...
AUTO_FULL_SECONDS = 5.0
# ...or when there are at most this many coordinates.
AUTO_FULL_SIZE = 2000
MODES = ("auto", "full", "fast")
# Relative noise above this (about 4500 x float64 round-off) is reported as low precision.
NOISY = 1e-12


class Options:
    """Validated options of a check (see :func:`check` for their meaning)."""

    def __init__(
        self,
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
        max_refine: int = REFINE_PER_BLOCK,
    ) -> None:
        if mode not in MODES:
            raise InputError(f"mode={mode!r} is not one of {', '.join(map(repr, MODES))}.")
        if method not in fd.METHODS:
            raise InputError(f"method={method!r} is not one of {', '.join(map(repr, fd.METHODS))}.")
        if step is not None and not (isinstance(step, (int, float)) and 0 < step < 1):
            raise InputError(f"step={step!r} must be a number between 0 and 1 (a relative step, e.g. 1e-6).")
        if rtol is not None and not (isinstance(rtol, (int, float)) and 0 < rtol < 1):
            raise InputError(f"rtol={rtol!r} must be a number between 0 and 1, e.g. 1e-6.")
        if not (isinstance(atol, (int, float)) and atol >= 0):
            raise InputError(f"atol={atol!r} must be a non-negative number.")
        if sample is not None and not (isinstance(sample, (int, np.integer)) and sample > 0):
            raise InputError(f"sample={sample!r} must be a positive whole number of coordinates per parameter.")
        if sample is not None and mode == "fast":
            raise InputError("sample= picks coordinates for a full sweep; it cannot be combined with mode='fast'.")
        if not (isinstance(directions, int) and directions > 0):
            raise InputError(f"directions={directions!r} must be a positive whole number.")
        self.mode = mode
        self.method = method
        self.step = step
        self.rtol = DEFAULT_RTOL if rtol is None else float(rtol)
        self.atol = float(atol)
        self.sample = None if sample is None else int(sample)
        self.seed = seed
        self.float64 = bool(float64)
        self.progress = progress
        self.executor = executor
        self.directions = directions
        self.max_refine = int(max_refine)


class LossFunction:
    """The user's loss as a counted, validated function of a float64 vector."""

    def __init__(self, target: Any, adapter: Any, executor: Executor | None = None) -> None:
        self.target = target
        self.adapter = adapter
        self.flat = target.flat
        self.nfev = 0
        self.out_dtype: str | None = None
        self.first_output: Any = None  # the raw first loss output, for precision notes
        self.executor = executor
        self._saved = [r.get() for r in target.rngs]
        # Generators the loss actually draws from; decided after the first call.
        self._active: list[int] | None = None
        # While True, a non-finite loss away from x0 comes back as NaN (the
        # sweep then looks closer) instead of raising.
        self.tolerate = False

    # -- RNG replay ---------------------------------------------------------
    def replay(self) -> None:
        for k in range(len(self._saved)) if self._active is None else self._active:
            self.target.rngs[k].set(self._saved[k])

    def _learn_active(self) -> None:
        if self._active is None:
            self._active = [
                k for k, (r, s) in enumerate(zip(self.target.rngs, self._saved)) if not _same_state(r.get(), s)
            ]

    def restore_rngs(self) -> None:
        for r, s in zip(self.target.rngs, self._saved):
            r.set(s)

    # -- values -------------------------------------------------------------
    def scalar(self, out: Any, x: np.ndarray | None) -> float:
        if self.out_dtype is not None and type(out) in (float, np.float64):  # the common case, fast
            value = float(out)
            if not math.isfinite(value):
                return self._non_finite(value, x)
            return value
        array = np.asarray(self.adapter.to_numpy(out) if not isinstance(out, (float, int)) else out)
        if array.size != 1:
            raise InputError(
                f"the loss returned an array of shape {array.shape}, not a scalar; gradient "
                "checks need one number: reduce it, e.g. return loss.mean() or loss.sum()."
            )
        if array.dtype.kind == "c":
            raise InputError(
                "the loss returned a complex number; return a real scalar (use "
                "method='complex' only with a real loss that is evaluated on complex inputs)."
            )
        if array.dtype.kind not in "fiub" and array.dtype.kind != "V":
            raise InputError(f"the loss returned a {array.dtype} value; return a floating point scalar.")
        if self.out_dtype is None:
            self.out_dtype = str(array.dtype)
            self.first_output = out
        value = float(array.reshape(()).astype(np.float64))
        if not math.isfinite(value):
            return self._non_finite(value, x)
        return value

    def _non_finite(self, value: float, x: np.ndarray | None) -> float:
        if self.tolerate and x is not None and not np.array_equal(x, self.flat.x0):
            return float("nan")
        raise InputError(self._not_finite(value, x))

    def _not_finite(self, value: float, x: np.ndarray | None) -> str:
        if x is None or np.array_equal(x, self.flat.x0):
            return (
                f"the loss is {value} at the given parameters; it must be finite to be "
                "differentiated. Look for log(0), division by zero or overflow in the forward pass."
            )
        moved = np.flatnonzero(x != self.flat.x0)
        where = ""
        if len(moved) == 1:
            b, local = self.flat.block_of(int(moved[0]))
            where = f" when {self.flat.leaves[b].name}{list(local)} moved by {x[moved[0]] - self.flat.x0[moved[0]]:.3g}"
        return (
            f"the loss became {value}{where}: it is not finite right next to the given "
            "parameters (a log or division at the edge of its domain). Move the parameters "
            "away from the edge, or pass a smaller step=."
        )

    def __call__(self, x: np.ndarray) -> float:
        self.replay()
        out = self.target.evaluate(x)
        self.nfev += 1
        self._learn_active()
        return self.scalar(out, x)

    def complex(self, z: np.ndarray) -> complex:
        if self.target.evaluate_complex is None:
            raise InputError(
                f"method='complex' needs a loss that takes its parameters as an argument and "
                f"can be evaluated on complex values; this {self.target.framework} loss cannot. "
                "Use method='richardson' for comparable accuracy."
            )
        self.replay()
        out = self.target.evaluate_complex(z)
        self.nfev += 1
        value = complex(np.asarray(self.adapter.to_numpy(out)).reshape(()))
        if not (math.isfinite(value.real) and math.isfinite(value.imag)):
            raise InputError(f"the loss is {value} at a complex-step point; use method='richardson'.")
        return value

    @property
    def batch(self) -> Callable[[np.ndarray], np.ndarray] | None:
        if self.executor is not None:
            return self._executor_batch
        if self.target.evaluate_batch is None:
            return None
        return self._native_batch

    def _native_batch(self, rows: np.ndarray) -> np.ndarray:
        self.replay()
        out = np.asarray(self.target.evaluate_batch(rows), dtype=np.float64).reshape(-1)
        self.nfev += len(rows)
        bad = ~np.isfinite(out)
        if bad.any() and not self.tolerate:
            raise InputError(self._not_finite(float(out[bad][0]), rows[int(np.flatnonzero(bad)[0])]))
        return out

    def _executor_batch(self, rows: np.ndarray) -> np.ndarray:
        worker = self.target.worker if getattr(self.target, "worker", None) is not None else self._row_values
        parts = np.array_split(rows, max(1, min(len(rows), 64)))
        try:
            results = list(self.executor.map(worker, parts))
        except Exception as exc:  # pickling errors and the like
            if isinstance(exc, InputError):
                raise
            raise InputError(
                f"the executor could not evaluate the loss ({type(exc).__name__}: {exc}). A process "
                "pool needs a loss it can pickle (a module-level function, not a lambda); a "
                "ThreadPoolExecutor or a Dask client works with any loss."
            ) from exc
        self.nfev += len(rows)
        out = np.concatenate([np.asarray(r, dtype=np.float64).reshape(-1) for r in results])
        bad = ~np.isfinite(out)
        if bad.any() and not self.tolerate:
            raise InputError(self._not_finite(float(out[bad][0]), rows[int(np.flatnonzero(bad)[0])]))
        return out

    def _row_values(self, rows: np.ndarray) -> np.ndarray:
        return np.array([self.scalar(self.target.evaluate(r), r) for r in rows])


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


def _same_state(a: Any, b: Any) -> bool:
    """Whether two saved generator states are equal (False when unsure)."""
    try:
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
        if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
            return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
        if isinstance(a, (str, bytes, int, float, type(None))):
            return a == b
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except Exception:  # an opaque state: replay it every time
        return False


def _analytic(grad: Any, target: Any, adapter: Any, what: str = "grad") -> np.ndarray:
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
        return vec
    value = target.call_grad(grad) if callable(grad) else grad
    return adapter.gradient_vector(value, flat)


def _indices(flat: Any, sample: int | None, rng: np.random.Generator) -> list[np.ndarray]:
    """Flat indices to check, one array per block (sorted)."""
    out = []
    for leaf in flat.leaves:
        local = np.arange(leaf.size)
        if sample is not None and sample < leaf.size:
            local = np.sort(rng.choice(leaf.size, size=sample, replace=False))
        out.append(local + leaf.offset)
    return out


@contextlib.contextmanager
def _prepared(
    loss: Any, params: Any, opts: Options, adapter: Any = None
) -> Iterator[tuple[Any, Any, LossFunction]]:
    from .adapters import detect

    adapter = adapter if adapter is not None else detect(params)
    with adapter.target(loss, params, float64=opts.float64) as target:
        fun = LossFunction(target, adapter, opts.executor)
        try:
            yield adapter, target, fun
        finally:
            fun.restore_rngs()


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
        mode=mode, method=method, step=step, rtol=rtol, atol=atol, sample=sample, seed=seed,
        float64=float64, progress=progress, executor=executor, directions=directions,
    )
    return run_check(loss, params, grad, opts)


def run_check(
    loss: Any, params: Any, grad: Any, opts: Options, what: str = "gradient", adapter: Any = None
) -> Report:
    """:func:`check` with validated options (``adapter``: default, the one of ``params``)."""
    start = time.perf_counter()
    with _prepared(loss, params, opts, adapter) as (adapter, target, fun):
        flat = target.flat
        rng = np.random.default_rng(opts.seed)
        t0 = time.perf_counter()
        f0 = fun(flat.x0)
        t_eval = time.perf_counter() - t0
        fun.replay()  # the gradient sees the same random draws as every evaluation
        analytic = _analytic(grad, target, adapter)
        findings: list[Finding] = []

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
            mode = "full" if (opts.sample is not None or flat.n <= AUTO_FULL_SIZE or cost <= AUTO_FULL_SECONDS) else "fast"

        ctx = _Context(fun, flat, analytic, f0, noise, noise_rel, opts, rng, findings, t_eval)
        if mode == "fast":
            from .fast import run_fast

            blocks, method_used, step_used = run_fast(ctx)
        else:
            blocks, method_used, step_used = _full(ctx)

        if nondeterministic:  # no verdict either way can be trusted
            for b in blocks:
                b.verdict, b.passed = "inconclusive", False
        for b in blocks:
            if b.verdict == "fail" and len(b.indices):
                leaf = flat.leaves[[l.name for l in flat.leaves].index(b.name)]
                x_local = flat.x0[b.indices + leaf.offset]
                full = None
                if b.n_checked == leaf.size:
                    full = (b.analytic, b.numeric)
                findings.extend(diagnose_block(b, x_local, full))
        kinks = [b for b in blocks if b.n_kink]
        if kinks:
            total = sum(b.n_kink for b in kinks)
            findings.append(
                Finding(
                    "kink",
                    kinks[0].name if len(kinks) == 1 else None,
                    f"{total} coordinate(s) sit at a kink of the loss ({', '.join(b.name for b in kinks)}): "
                    "the slopes left and right differ (ReLU at 0, abs, max), so finite differences "
                    "cannot judge them; they were not counted as wrong. Move the parameters off "
                    "the kink (a small random shift) to check them too.",
                    {"blocks": {b.name: b.n_kink for b in kinks}},
                )
            )
    verdicts = {b.verdict for b in blocks}
    verdict = "fail" if "fail" in verdicts else "inconclusive" if "inconclusive" in verdicts else "pass"
    a_all = np.concatenate([b.compared()[0] for b in blocks]) if blocks else np.zeros(0)
    n_all = np.concatenate([b.compared()[1] for b in blocks]) if blocks else np.zeros(0)
    from .compare import rel_error

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


@dataclass
class _Context:
    """What the sweeps need, gathered in one place."""

    fun: LossFunction
    flat: Any
    analytic: np.ndarray
    f0: float
    noise: float
    noise_rel: float
    opts: Options
    rng: np.random.Generator
    findings: list[Finding]
    t_eval: float

    def rel_step(self, method: str) -> float:
        if self.opts.step is not None and method == self.opts.method:
            return float(self.opts.step)
        return fd.relative_step(method, self.noise_rel)

    def bounds(self, roundoff: np.ndarray, trunc: np.ndarray) -> np.ndarray:
        return ROUNDOFF_SAFETY * roundoff + TRUNCATION_SAFETY * trunc


def _full(ctx: _Context) -> tuple[list[BlockResult], str, float]:
    """Every coordinate (or ``sample`` per parameter), then suspects refined."""
    flat, opts, fun = ctx.flat, ctx.opts, ctx.fun
    per_block = _indices(flat, opts.sample, ctx.rng)
    idx = np.concatenate(per_block)
    method = opts.method
    rel = ctx.rel_step(method)
    from .progress import Progress

    bar = Progress(
        len(idx), enabled=opts.progress,
        expected_seconds=len(idx) * fd.EVALS_PER_COORDINATE[method] * ctx.t_eval,
    )
    fun.tolerate = True
    try:
        numeric, roundoff, trunc = fd.sweep(
            fun, flat.x0, idx, ctx.f0, method=method, rel_step=rel, noise=ctx.noise,
            batch=fun.batch, complex_fun=fun.complex if method == "complex" else None, tick=bar,
        )
    finally:
        bar.close()
    try:
        return _judge(ctx, per_block, idx, numeric, roundoff, trunc, method, rel)
    finally:
        fun.tolerate = False


def _judge(
    ctx: _Context, per_block: list[np.ndarray], idx: np.ndarray, numeric: np.ndarray,
    roundoff: np.ndarray, trunc: np.ndarray, method: str, rel: float,
) -> tuple[list[BlockResult], str, float]:
    """Escalate undecidable parameters, re-examine suspects, summarise per parameter."""
    flat, opts, fun = ctx.flat, ctx.opts, ctx.fun
    if method == "complex":
        _complex_sanity(ctx, idx, numeric)
    err = ctx.bounds(roundoff, trunc)
    a = ctx.analytic[idx]
    scale = float(np.max(np.abs(a))) if len(a) else 0.0
    scale = max(scale, float(np.nanmax(np.abs(numeric))) if np.isfinite(numeric).any() else 0.0)

    # Blocks whose error bounds swamp the gradient: try Richardson at larger steps.
    r_default = fd.relative_step("richardson", ctx.noise_rel)
    r_steps = [r_default] * len(per_block)
    if method in ("central", "forward") and opts.step is None:
        for b, block_idx in enumerate(per_block):
            pos = np.searchsorted(idx, block_idx)
            own = float(np.max(np.maximum(np.abs(a[pos]), np.abs(numeric[pos])))) if len(pos) else 0.0
            unsure = undecidable(a[pos], numeric[pos], err[pos], own)
            if len(pos) and own > 0 and unsure.mean() > 0.5:
                r_steps[b] = _escalate(ctx, block_idx, pos, numeric, err) or r_default
    kink = np.zeros(len(idx), dtype=bool)
    bad = np.zeros(len(idx), dtype=bool)
    unconfirmed = np.zeros(len(idx), dtype=bool)
    tol = tolerance(a, numeric, err, opts.rtol, opts.atol)
    lost = ~np.isfinite(numeric)  # the loss was not finite at a step: look closer
    suspect = (np.abs(a - numeric) > tol) | lost
    budget = REFINE_TOTAL
    for block_idx, r_rel in zip(per_block, r_steps):
        pos = np.searchsorted(idx, block_idx)
        sus = pos[suspect[pos]]
        if not len(sus):
            continue
        excess = np.where(lost[sus], np.inf, np.abs(a[sus] - numeric[sus]) / np.maximum(tol[sus], 1e-300))
        order = sus[np.argsort(-excess, kind="stable")]
        confirmed_bad = 0
        for k, p in enumerate(order):
            if not lost[p] and k >= min(opts.max_refine, budget) and (confirmed_bad or budget <= 0):
                # Enough seen: with confirmed errors the rest count as wrong too;
                # otherwise they stay undecided.
                (bad if confirmed_bad else unconfirmed)[order[k:]] = True
                break
            budget -= 1
            ref = fd.refine(fun, flat.x0, int(idx[p]), ctx.f0, rel_step=r_rel, noise=ctx.noise)
            if not np.isfinite(ref.value):
                b, local = flat.block_of(int(idx[p]))
                raise InputError(
                    f"the loss is not finite next to {flat.leaves[b].name}{list(local)} = "
                    f"{flat.x0[idx[p]]:.6g} at any step tried (down to a relative 1e-15): the "
                    "parameter sits on the edge "
                    "of the loss's domain (a log of 0, a division by 0). Move it away from the edge."
                )
            e = ROUNDOFF_SAFETY * ref.error
            t = opts.atol + opts.rtol * max(abs(a[p]), abs(ref.value)) + e
            if ref.smooth:
                numeric[p], err[p], tol[p] = ref.value, e, t
                if abs(a[p] - ref.value) > t:
                    bad[p] = True
                    confirmed_bad += 1
            else:
                # Not differentiable here: no value is right or wrong.
                kink[p] = True
                numeric[p] = ref.left if abs(a[p] - ref.left) < abs(a[p] - ref.right) else ref.right
    unsure = undecidable(a, numeric, err, scale) | unconfirmed
    blocks = []
    for leaf, block_idx in zip(flat.leaves, per_block):
        pos = np.searchsorted(idx, block_idx)
        blocks.append(
            block_result(
                leaf, block_idx - leaf.offset, a[pos], numeric[pos], tol[pos], bad[pos], kink[pos], unsure[pos]
            )
        )
    return blocks, method, rel


def _escalate(
    ctx: _Context, block_idx: np.ndarray, pos: np.ndarray, numeric: np.ndarray, err: np.ndarray
) -> float | None:
    """Re-differentiate a block with Richardson at steps large enough to beat the noise.

    Keeps whichever estimates have the smallest error bounds and returns the
    Richardson step that gave them (None if the first sweep stays best).
    """
    best = float(np.median(err[pos]))
    chosen = None
    base = fd.relative_step("richardson", ctx.noise_rel)
    for rel in (base, max(base, 1e-2)):
        value, roundoff, trunc = fd.sweep(
            ctx.fun, ctx.flat.x0, block_idx, ctx.f0, method="richardson", rel_step=rel,
            noise=ctx.noise, batch=ctx.fun.batch,
        )
        e = ctx.bounds(roundoff, trunc)
        if float(np.median(e)) < best:
            best = float(np.median(e))
            numeric[pos], err[pos] = value, e
            chosen = rel
    return chosen


def _complex_sanity(ctx: _Context, idx: np.ndarray, numeric: np.ndarray) -> None:
    """A complex step that sees nothing where the gradient is not zero: the loss drops the imaginary part."""
    a = ctx.analytic[idx]
    if np.any(a) and not np.any(numeric):
        raise InputError(
            "method='complex' saw a zero derivative everywhere: the loss does not carry complex "
            "values through (abs, real parts, comparisons or a cast drop the imaginary part). "
            "Use method='richardson' for comparable accuracy."
        )


def assert_gradients(loss: Callable[..., Any], params: Any, grad: Any = None, **options: Any) -> Report:
    """:func:`check`, then raise :class:`GradcheckError` unless it passed.

    Returns the report when the check passed.
    """
    return check(loss, params, grad, **options).raise_if_failed()


def check_loss(loss_fn: Callable[..., Any], y_true: Any, y_pred: Any, grad: Any = None, **options: Any) -> Report:
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
    from .adapters import loss_adapter

    adapter = loss_adapter(loss_fn, y_pred)
    closure = adapter.loss_closure(loss_fn, y_true, y_pred) if hasattr(adapter, "loss_closure") else (
        lambda yp: loss_fn(y_true, yp)
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


def check_function(fn: Callable[..., Any], *inputs: Any, vjp: Callable[..., Any] | None = None, **options: Any) -> Report:
    """Check the derivatives of a vector-valued function through VJPs.

    For every floating output ``j`` a random cotangent ``u_j`` is drawn and the
    scalar ``phi_j(x) = <u_j, fn(x)_j>`` is checked: its analytic gradient is
    the vector-Jacobian product ``u_j^T J`` (from the framework's autodiff, or
    from ``vjp``), its numerical gradient comes from finite differences.  No
    Jacobian is ever built.  Blocks are named ``input{i}->output{j}``.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs)`` returning an array or a tuple of arrays.
    *inputs
        Its arguments; floating ones are checked, others held fixed.
    vjp : callable, optional
        ``vjp(cotangents, *inputs)`` returning one gradient per input, for
        frameworks without autodiff (numpy).
    **options
        As for :func:`check`.
    """
    from .adapters import detect

    if not inputs:
        raise InputError("check_function needs at least one input: check_function(fn, x, ...).")
    from .adapters import framework_of

    # Python numbers are constants of the function, not inputs to differentiate.
    arrays = [x for x in inputs if framework_of(x) is not None and not isinstance(x, (int, float))]
    if not arrays:
        raise InputError("check_function needs at least one array or tensor input to differentiate.")
    adapter = detect(arrays)
    if adapter.name == "numpy" and vjp is None:
        # numpy inputs to a framework function: the output says which framework
        from .adapters import get_adapter

        first = fn(*inputs)
        first = first[0] if isinstance(first, (list, tuple)) and first else first
        fw = framework_of(first)
        if fw not in (None, "numpy"):
            adapter = get_adapter(fw)
    outputs = adapter.call(fn, list(inputs))
    seed = options.get("seed", 0)
    rng = np.random.default_rng(seed)
    cotangents = [rng.standard_normal(o.shape) if o.dtype.kind == "f" else None for o in outputs]
    fi = _FunctionInputs(adapter, fn, inputs)
    if not fi.floating:
        raise InputError("fn has no floating input to differentiate; pass float arrays or tensors.")
    reports = []
    for j, u in enumerate(cotangents):
        if u is None:
            continue
        us = [c if k == j else (None if c is None else np.zeros_like(c)) for k, c in enumerate(cotangents)]
        if vjp is not None:
            g = vjp(us if len(us) > 1 else us[0], *inputs)
            g = list(g) if isinstance(g, (list, tuple)) else [g]
        else:
            g = adapter.vjp(fn, list(inputs), us)
        if len(g) != len(inputs):
            raise InputError(f"the vjp returned {len(g)} gradients for {len(inputs)} inputs; return one per input.")
        report = run_check(
            fi.projection(j, u), fi.params, {f"input{i}": g[i] for i in fi.floating}, Options(**options),
            what="function",
        )
        for b in report.blocks:
            b.name = f"{b.name}->output{j}"
        for f in report.findings:
            if f.block:
                f.block = f"{f.block}->output{j}"
        reports.append(report)
    if not reports:
        raise InputError("fn has no floating output to check.")
    merged = merge_reports(reports)
    if vjp is None and hasattr(adapter, "jvp"):
        _check_jvps(fi, cotangents, merged, Options(**options))
    return merged


class _FunctionInputs:
    """The inputs of a function under check: the floating ones are the parameters.

    They are named ``input{i}``; other inputs (integers, Python numbers) are
    held fixed.  :meth:`projection` turns output ``j`` into the scalar
    ``<u, fn(inputs)_j>`` whose gradient is the vector-Jacobian product.
    """

    def __init__(self, adapter: Any, fn: Callable[..., Any], inputs: tuple[Any, ...] | list[Any]) -> None:
        self.adapter = adapter
        self.fn = fn
        self.inputs = list(inputs)
        self.floating = [
            i for i, x in enumerate(self.inputs) if not isinstance(x, (int, float)) and _is_floating(adapter, x)
        ]
        self.params = {f"input{i}": self.inputs[i] for i in self.floating}

    def projection(self, j: int, u: np.ndarray) -> Callable[[dict[str, Any]], float]:
        def phi(p: dict[str, Any]) -> float:
            args = list(self.inputs)
            for i in self.floating:
                args[i] = p[f"input{i}"]
            return float(np.sum(u * np.asarray(self.adapter.call(self.fn, args)[j], dtype=np.float64)))

        return phi


def _check_jvps(
    fi: _FunctionInputs, cotangents: list[np.ndarray | None], report: Report, opts: Options,
) -> None:
    """Forward mode: ``<u_j, J_ij v_i>`` from the framework's JVP against finite differences.

    Adds one block ``input{i}->output{j} (jvp)`` per pair.  A function without
    forward mode (a ``custom_vjp`` rule, a torch Function without ``jvp``)
    gets a ``no_forward_mode`` finding instead.
    """
    from .compare import rel_error

    rng = np.random.default_rng(None if opts.seed is None else opts.seed + 1)
    adapter, inputs = fi.adapter, fi.inputs
    for i in fi.floating:
        shape = np.shape(adapter.to_numpy(inputs[i]))
        v = rng.standard_normal(shape)
        tangents = [v if k == i else None for k in range(len(inputs))]
        try:
            out_tangents = adapter.jvp(fi.fn, inputs, tangents)
        except InputError as exc:
            report.findings.append(Finding("no_forward_mode", f"input{i}", str(exc), {}))
            return
        for j, u in enumerate(cotangents):
            if u is None:
                continue
            analytic = float(np.sum(u * np.asarray(out_tangents[j], dtype=np.float64)))

            with _prepared(fi.projection(j, u), fi.params, opts) as (_, target, fun):
                f0 = fun(target.flat.x0)
                noise, _ = fd.estimate_noise(fun, target.flat.x0, f0, rng)
                direction = np.zeros(target.flat.n)
                direction[target.flat.leaves[fi.floating.index(i)].slice] = v.reshape(-1)
                rel = fd.relative_step("richardson", noise / abs(f0) if f0 else fd.EPS)
                numeric, err, _ = fd.directional(fun, target.flat.x0, direction, rel_step=rel, noise=noise, f0=f0)
                nfev = fun.nfev
            tol = opts.atol + opts.rtol * float(np.linalg.norm(u) * np.linalg.norm(v)) + 8 * err
            ok = abs(analytic - numeric) <= tol if np.isfinite(err) else True
            verdict = "pass" if ok else "fail"
            a_arr, n_arr = np.array([analytic]), np.array([numeric])
            report.blocks.append(
                BlockResult(
                    name=f"input{i}->output{j} (jvp)", shape=tuple(shape), passed=ok, verdict=verdict,
                    rel_error=rel_error(a_arr, n_arr), max_abs_error=abs(analytic - numeric), worst_index=None,
                    n_checked=0, n_bad=0 if ok else 1, analytic=np.zeros(0), numeric=np.zeros(0),
                    indices=np.zeros(0, dtype=np.int64), tolerance=np.zeros(0), checked_by="directions",
                    directional_analytic=a_arr, directional_numeric=n_arr,
                )
            )
            report.nfev += nfev
            if not ok:
                report.verdict = "fail"
                report.findings.append(
                    Finding(
                        "forward_mode",
                        f"input{i}->output{j} (jvp)",
                        f"the forward-mode derivative (JVP) of output {j} along input {i} is {analytic:.6g}, "
                        f"finite differences give {numeric:.6g}: the jvp rule for input {i} is wrong "
                        "(the reverse-mode rule may still be right).",
                        {"analytic": analytic, "numeric": numeric},
                    )
                )


def _is_floating(adapter: Any, value: Any) -> bool:
    try:
        return np.asarray(adapter.to_numpy(value)).dtype.kind == "f"
    except Exception:
        return False


def merge_reports(reports: list[Report]) -> Report:
    """One report from several checks of the same function."""
    from .compare import rel_error

    blocks = [b for r in reports for b in r.blocks]
    findings = [f for r in reports for f in r.findings]
    verdicts = {r.verdict for r in reports}
    verdict = "fail" if "fail" in verdicts else "inconclusive" if "inconclusive" in verdicts else "pass"
    first = reports[0]
    return Report(
        verdict=verdict,
        rel_error=rel_error(
            np.concatenate([b.compared()[0] for b in blocks]), np.concatenate([b.compared()[1] for b in blocks])
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
