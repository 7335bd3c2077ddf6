"""The full sweep: every coordinate (or a sample of each parameter), then the judgement.

:func:`run_full` differentiates along every coordinate with the chosen scheme;
:func:`_judge` applies the per-entry rule of :mod:`gradcheck_core.tolerance`.
Parameters whose error bounds swamp the gradient are re-differentiated with
Richardson at larger steps (:func:`_escalate`); coordinates that break the
rule are only suspects until Richardson and one-sided differences confirm
them (or find a kink).  Coordinates with an exactly zero derivative on either
side are probed for flatness first (:func:`_probe_flat`: a staircase seen
inside one stair, a saturated region), and non-finite analytic entries are
wrong whatever the differences say.
"""

from __future__ import annotations

import numpy as np

from . import differences as fd
from .errors import InputError
from .flatten import Flat
from .problem import ROUNDOFF_SAFETY, Problem
from .report import BlockResult
from .tolerance import block_result, tolerance, undecidable

__all__ = ["FLAT_PROBES", "REFINE_TOTAL", "ROUNDOFF_ZERO", "run_full"]

# Suspect coordinates looked at again with Richardson, over the whole check
# (per parameter: Options.max_refine).
REFINE_TOTAL = 400
# An analytic entry below this many ulps of the loss per unit step is a zero computed with
# cancellation (see _at_roundoff).
ROUNDOFF_ZERO = 64.0
# Zero (round-off) analytic entries whose finite differences see no slope are probed at
# large steps for a function constant up to rounding, at most this many per check.
ROUNDING_PROBES = 64
# Undecided entries looked at for a kink, at most this many per check.
KINK_PROBES = 64
# Coordinates probed for flatness (a staircase, a saturated function), over the whole check.
FLAT_PROBES = 400


def _indices(flat: Flat, sample: int | None, rng: np.random.Generator) -> list[np.ndarray]:
    """Flat indices to check, one array per block (sorted)."""
    out = []
    for leaf in flat.leaves:
        local = np.arange(leaf.size)
        if sample is not None and sample < leaf.size:
            local = np.sort(rng.choice(leaf.size, size=sample, replace=False))
        out.append(local + leaf.offset)
    return out


def run_full(ctx: Problem) -> tuple[list[BlockResult], str, float]:
    """Every coordinate (or ``sample`` per parameter), then suspects refined.

    Parameters
    ----------
    ctx : Problem
        The check.

    Returns
    -------
    blocks, method, step
        One :class:`BlockResult` per parameter, the scheme and the relative
        step of the sweep.
    """
    flat, opts, fun = ctx.flat, ctx.opts, ctx.fun
    per_block = _indices(flat, opts.sample, ctx.rng)
    idx = np.concatenate(per_block)
    method = opts.method
    rel = ctx.rel_step(method)
    from .progress import Progress

    bar = Progress(
        len(idx),
        enabled=opts.progress,
        expected_seconds=len(idx) * fd.EVALS_PER_COORDINATE[method] * ctx.t_eval,
    )
    fun.tolerate = True
    try:
        numeric, roundoff, trunc = fd.sweep(
            fun,
            flat.x0,
            idx,
            ctx.f0,
            method=method,
            rel_step=rel,
            noise=ctx.noise,
            batch=fun.batch,
            complex_fun=fun.complex if method == "complex" else None,
            tick=bar,
        )
    finally:
        bar.close()
    try:
        return _judge(ctx, per_block, idx, numeric, roundoff, trunc, method, rel)
    finally:
        fun.tolerate = False


def _judge(
    ctx: Problem,
    per_block: list[np.ndarray],
    idx: np.ndarray,
    numeric: np.ndarray,
    roundoff: np.ndarray,
    trunc: np.ndarray,
    method: str,
    rel: float,
) -> tuple[list[BlockResult], str, float]:
    """Escalate undecidable parameters, re-examine suspects, summarise per parameter."""
    flat, opts, fun = ctx.flat, ctx.opts, ctx.fun
    if method == "complex":
        _complex_sanity(ctx, idx, numeric)
    err = ctx.bounds(roundoff, trunc)
    a = ctx.analytic[idx]
    settled_tol = _all_clear(a, numeric, err, opts.rtol, opts.atol)
    if settled_tol is not None:  # nothing to look at again: no entry bad, on a kink or unsure
        none = np.zeros(len(idx), dtype=bool)
        return _blocks(flat, per_block, idx, a, numeric, settled_tol, none, none, none), method, rel
    # A non-finite analytic entry is wrong whatever finite differences say; the
    # rest of the comparison runs on the finite entries.
    broken = ~np.isfinite(a)
    a = np.where(broken, 0.0, a)
    finite_a = a[~broken]
    scale = float(np.max(np.abs(finite_a))) if len(finite_a) else 0.0
    scale = max(scale, float(np.nanmax(np.abs(numeric))) if np.isfinite(numeric).any() else 0.0)
    flat_at, faint = _probe_flat(ctx, idx, a, numeric, err, scale, broken)

    # Blocks whose error bounds swamp the gradient: try Richardson at larger steps.
    r_default = fd.relative_step("richardson", ctx.noise_rel)
    r_steps = [r_default] * len(per_block)
    if method in ("central", "forward") and opts.step is None:
        for b, block_idx in enumerate(per_block):
            pos = np.searchsorted(idx, block_idx)
            own = float(np.max(np.maximum(np.abs(a[pos]), np.abs(numeric[pos])))) if len(pos) else 0.0
            unsure = undecidable(a[pos], numeric[pos], err[pos], own) & ~flat_at[pos]
            if len(pos) and ((own > 0 and unsure.mean() > 0.5) or faint[pos].any()):
                kept = pos[flat_at[pos]]
                saved = numeric[kept].copy(), err[kept].copy()
                r_steps[b] = _escalate(ctx, block_idx, pos, numeric, err) or r_default
                # A flat entry stays flat (the larger steps cross stairs) unless it
                # moves faintly and the larger steps see a clear slope there: a
                # gradient too small for the probe, which the refinement judges.
                clear = faint[kept] & (numeric[kept] != 0) & (err[kept] <= 0.25 * np.abs(numeric[kept]))
                flat_at[kept[clear]] = False
                faint[kept[clear]] = False
                # No slope at the larger steps either: if the function moves by its rounding
                # only, even at steps of its coordinate's size, its zero derivative is right.
                faint[kept[~clear]] &= ~_rounding_only(ctx, idx, kept[~clear])
                keep = kept[~clear]
                numeric[keep], err[keep] = saved[0][~clear], saved[1][~clear]
    kink = np.zeros(len(idx), dtype=bool)
    unconfirmed = np.zeros(len(idx), dtype=bool)
    tol = tolerance(a, numeric, err, opts.rtol, opts.atol)
    lost = ~np.isfinite(numeric)  # the loss was not finite at a step: look closer
    suspect = ((np.abs(a - numeric) > tol) | lost) & ~flat_at & ~broken
    # Flat entries are judged as they stand: the function does not move within
    # the probe step, so Richardson at larger steps would only measure stairs.
    hidden = _below_resolution(ctx, idx, a, flat_at)
    bad = (flat_at & ~hidden & (np.abs(a - numeric) > tol)) | broken
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
    # A zero (round-off) analytic entry whose differences see no slope is decided where the
    # function moves by its rounding only, even when the whole gradient is zero and no
    # larger entry gives a scale to judge the error bound against.
    unsure = undecidable(a, numeric, err, scale) & ~flat_at
    zero = np.flatnonzero(unsure & _at_roundoff(ctx, idx, a) & (np.abs(numeric) <= err))
    unsure[zero] &= ~_rounding_only(ctx, idx, zero)
    # An undecided entry may sit on a kink (|x| at 0: the symmetric difference agrees, the
    # noise probe measures the corner): say so, rather than call the differences inaccurate.
    for p in np.flatnonzero(unsure & ~kink & ~bad)[:KINK_PROBES]:
        ref = fd.refine(fun, flat.x0, int(idx[p]), ctx.f0, rel_step=r_default, noise=ctx.noise)
        if np.isfinite(ref.value) and not ref.smooth:
            kink[p], unsure[p] = True, False
    unsure |= unconfirmed | hidden
    unsure |= faint & flat_at
    a = np.where(broken, ctx.analytic[idx], a)
    return _blocks(flat, per_block, idx, a, numeric, tol, bad, kink, unsure), method, rel


def _all_clear(
    a: np.ndarray, numeric: np.ndarray, err: np.ndarray, rtol: float, atol: float
) -> np.ndarray | None:
    """The tolerances, where the sweep settled every coordinate as it stands (else None).

    Settled: both derivatives finite and nonzero, no entry undecidable whatever
    the scale (every error bound at most a quarter of its entry), and every gap
    within tolerance (the pass rule of :mod:`~gradcheck_core.tolerance`).  Then no step of :func:`_judge` after the sweep
    (the flat probes, the escalation to Richardson, the refinement of suspects,
    the kink and rounding probes) has anything to look at, and the blocks are
    summarised at once.
    """
    tol = tolerance(a, numeric, err, rtol, atol)
    # (a NaN anywhere makes a comparison false: not settled; scale 0 is the widest test of undecidable)
    settled = (a != 0) & (numeric != 0) & ~undecidable(a, numeric, err, 0.0) & (np.abs(a - numeric) <= tol)
    return tol if settled.all() and np.isfinite(a).all() and np.isfinite(numeric).all() else None


def _blocks(
    flat: Flat,
    per_block: list[np.ndarray],
    idx: np.ndarray,
    a: np.ndarray,
    numeric: np.ndarray,
    tol: np.ndarray,
    bad: np.ndarray,
    kink: np.ndarray,
    unsure: np.ndarray,
) -> list[BlockResult]:
    """One :class:`BlockResult` per parameter, from the judged coordinates ``idx``."""
    blocks = []
    for leaf, block_idx in zip(flat.leaves, per_block):
        pos = np.searchsorted(idx, block_idx)
        blocks.append(
            block_result(
                leaf,
                block_idx - leaf.offset,
                a[pos],
                numeric[pos],
                tol[pos],
                bad[pos],
                kink[pos],
                unsure[pos],
            )
        )
    return blocks


def _probe_flat(
    ctx: Problem,
    idx: np.ndarray,
    a: np.ndarray,
    numeric: np.ndarray,
    err: np.ndarray,
    scale: float,
    broken: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates where the function is flat (a stair, a saturated region); sets their estimates.

    Looked at: coordinates where the analytic or numerical derivative is exactly
    zero and the sweep could not confirm the agreement (a gap, or an error bound
    that swamps the entry).  Where the function does not move within the probe
    step, the numerical derivative is exactly 0 with the output's resolution as
    its error bound (:meth:`Problem.flat_slope`).  Also returns which flat
    coordinates with a zero analytic entry move faintly at larger steps
    (:meth:`Problem.moves_faintly`): there a tiny slope may hide.
    """
    flat_at = np.zeros(len(idx), dtype=bool)
    faint = np.zeros(len(idx), dtype=bool)
    tol = tolerance(a, numeric, err, ctx.opts.rtol, ctx.opts.atol)
    looked = ((a == 0) | (numeric == 0)) & ~broken
    looked &= (np.abs(a - numeric) > tol) | ~np.isfinite(numeric) | undecidable(a, numeric, err, scale)
    direction = np.zeros(ctx.flat.n)
    zero = _at_roundoff(ctx, idx, a)
    for p in np.flatnonzero(looked)[:FLAT_PROBES]:
        direction[idx[p]] = 1.0
        bound = ctx.flat_slope(direction)
        direction[idx[p]] = 0.0
        # Taken where it decides: a zero analytic entry (or one at round-off level), or one
        # the bound is small next to.
        if bound is not None and (zero[p] or ROUNDOFF_SAFETY * bound <= 0.25 * abs(a[p])):
            flat_at[p] = True
            numeric[p], err[p] = 0.0, ROUNDOFF_SAFETY * bound
            if zero[p]:
                direction[idx[p]] = 1.0
                faint[p] = ctx.moves_faintly(direction)
                direction[idx[p]] = 0.0
    return flat_at, faint


def _at_roundoff(ctx: Problem, idx: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Analytic entries that are zero up to round-off: a true zero computed with cancellation.

    Autodiff of a function that is constant in a coordinate (``x / |x|``, the
    correlation of one row) often gives a few ulps instead of 0.  An entry is
    taken as zero when it is below :data:`ROUNDOFF_ZERO` ulps of the loss per
    unit of the coordinate (``max(1, |x|)``): far below any slope float64 could
    resolve, and far below the smallest real gradients (1e-11 at a loss of 3).
    """
    return (a == 0) | (np.abs(a) <= ROUNDOFF_ZERO * fd.EPS * _roundoff_scale(ctx, idx))


def _rounding_only(ctx: Problem, idx: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """For each of ``positions`` (at most :data:`ROUNDING_PROBES`, the rest False): whether the
    function moves along that coordinate by its rounding only (:meth:`Problem.rounding_only`)."""
    out = np.zeros(len(positions), dtype=bool)
    direction = np.zeros(ctx.flat.n)
    for k, p in enumerate(positions[:ROUNDING_PROBES]):
        direction[idx[p]] = 1.0
        out[k] = ctx.rounding_only(direction)
        direction[idx[p]] = 0.0
    return out


def _roundoff_scale(ctx: Problem, idx: np.ndarray) -> np.ndarray:
    """One ulp's worth of slope per coordinate: ``max(|f0|, floor) / max(1, |x|)`` over ``fd.EPS``."""
    return max(abs(ctx.f0), ctx.floor, 1e-300) / np.maximum(1.0, np.abs(ctx.flat.x0[idx]))


def _below_resolution(ctx: Problem, idx: np.ndarray, a: np.ndarray, flat_at: np.ndarray) -> np.ndarray:
    """Flat coordinates whose nonzero analytic slope float64 could not show (undecidable)."""
    hidden = np.zeros(len(idx), dtype=bool)
    direction = np.zeros(ctx.flat.n)
    for p in np.flatnonzero(flat_at & ~_at_roundoff(ctx, idx, a)):
        direction[idx[p]] = 1.0
        hidden[p] = ctx.below_resolution(float(a[p]), direction)
        direction[idx[p]] = 0.0
    return hidden


def _escalate(
    ctx: Problem, block_idx: np.ndarray, pos: np.ndarray, numeric: np.ndarray, err: np.ndarray
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
            ctx.fun,
            ctx.flat.x0,
            block_idx,
            ctx.f0,
            method="richardson",
            rel_step=rel,
            noise=ctx.noise,
            batch=ctx.fun.batch,
        )
        e = ctx.bounds(roundoff, trunc)
        if float(np.median(e)) < best:
            best = float(np.median(e))
            numeric[pos], err[pos] = value, e
            chosen = rel
    return chosen


def _complex_sanity(ctx: Problem, idx: np.ndarray, numeric: np.ndarray) -> None:
    """A complex step that sees nothing where the gradient is not zero: the loss drops the imaginary part."""
    a = ctx.analytic[idx]
    if np.any(a) and not np.any(numeric):
        raise InputError(
            "method='complex' saw a zero derivative everywhere: the loss does not carry complex "
            "values through (abs, real parts, comparisons or a cast drop the imaginary part). "
            "Use method='richardson' for comparable accuracy."
        )
