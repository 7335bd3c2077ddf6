"""Fast mode: random directional derivatives, then localisation by group testing.

Per parameter, a few random Gaussian directions ``v`` (supported on that
parameter) compare the analytic ``g . v`` with a
Richardson-extrapolated directional derivative (4 or 6 evaluations each,
whatever the parameter's size; the first failing direction decides).
The tolerance is the numerical error estimate plus ``rtol * ||g * v||``: the
directional form of the per-entry rule, so a single wrong entry among 100,000
shows up.

When a parameter fails, its wrong entries are found by adaptive group testing:
the coordinates are halved, the first half is tested along the group's own
direction and the second judged by difference, and only failing halves are
split further.  ``s`` wrong entries among ``n`` cost about ``s log2(n)``
tests instead of ``2 n`` evaluations.  When
both halves of a parameter fail, a sample of 12 entries is compared one by one;
if at least 2 of them are wrong the error is dense (a scale factor, a missing
term) and the search stops there, with that sample for the diagnosis.  Where
every group keeps failing for three levels the search also stops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from . import differences as fd
from .flatten import Leaf
from .problem import Problem
from .report import BlockResult
from .tolerance import block_result, rel_error, tolerance, undecidable

__all__ = [
    "DENSE_FOUND",
    "DENSE_LEVEL",
    "DENSE_SAMPLE",
    "ENTRY_SAMPLE",
    "MAX_LOCATED",
    "confirms",
    "run_fast",
]

SAFETY = 8.0
# Stop splitting when this many groups fail at one level...
MAX_LOCATED = 16
# ...or when every group has failed for this many levels (a dense error).
DENSE_LEVEL = 3
# Entries compared one by one in a densely wrong parameter.
ENTRY_SAMPLE = 12
# Entries sampled when both halves of a parameter fail, and how many of them
# must be wrong for the error to count as dense (the search then stops).  The
# sample is what the diagnosis sees: 8 entries of a max pooling's gradient
# (mostly zeros) made a scale look like a missing term.
DENSE_SAMPLE = ENTRY_SAMPLE
DENSE_FOUND = 2
# Extra directions tried when a direction's error estimate is too large to decide.
RETRIES = 3
# Smaller steps tried along a direction whose segment crosses a kink (a ReLU
# network switches units along almost every direction at the usual step).
KINK_SHRINKS = 2


class _Look(NamedTuple):
    """One plain directional test: its direction (on the group's entries), ``g . w``, ``D_w f`` and error estimate."""

    w: np.ndarray
    a_dot: float
    d: float
    err: float


class _Tester:
    """Directional tests on groups of coordinates.

    After each test, :attr:`last` holds the test's :class:`_Look` where it
    was a plain directional estimate with a finite error (None after a
    staircase or a flat stretch was judged instead).
    """

    def __init__(self, ctx: Problem) -> None:
        self.ctx = ctx
        self.rel = (
            ctx.rel_step("richardson")
            if ctx.opts.method == "richardson"
            else fd.relative_step("richardson", ctx.noise_rel)
        )
        self.evals = 0
        self.last: _Look | None = None

    def test(self, idx: slice, w: np.ndarray | None = None) -> tuple[bool, bool, float, float]:
        """(passed, decidable, analytic g.v, numerical D_v f) for a random v on the entries ``idx``.

        ``w``: the direction's entries on ``idx``, where not a new random one.
        When the error estimate swamps the derivative (a loss whose gradient is
        tiny next to its value, or a noisy one), the same direction is tried
        again with a larger step.  The work is in proportion to the entries
        ``idx`` covers, not to the whole vector.
        """
        ctx = self.ctx
        self.last = None
        if w is None:
            w = fd.random_direction(ctx.rng, _size(idx))
        a_dot, base = self._bounds(idx, w)
        result = (True, False, a_dot, 0.0)
        x0 = ctx.flat.x0
        settle = _settled(a_dot, base)
        for rel in (self.rel, max(self.rel, 1e-2)):
            d, err, used = fd.directional(
                ctx.fun,
                x0,
                w,
                rel_step=rel,
                noise=ctx.noise,
                f0=ctx.f0,
                block=idx,
                kink_shrinks=KINK_SHRINKS,
                settle=settle,
            )
            self.evals += used
            tol = base + SAFETY * err
            passed = abs(a_dot - d) <= tol
            decidable = (
                not passed or SAFETY * err <= 0.25 * max(abs(a_dot), abs(d)) or max(abs(a_dot), abs(d)) == 0
            )
            if (a_dot == 0 or d == 0) and (not passed or not decidable or d == a_dot):
                # a staircase or a saturated function: judge it inside one stair
                v = np.zeros_like(x0)
                v[idx] = w
                bound = ctx.flat_slope(v)
                self.evals += 4
                if bound is not None and a_dot != 0:
                    if ctx.below_resolution(a_dot, v):
                        return True, False, a_dot, 0.0  # too small a slope to show: undecided
                    return abs(a_dot) <= base + SAFETY * bound, True, a_dot, 0.0
                if bound is not None:
                    # A zero gradient, flat at the probe step: right, unless the
                    # function moves faintly at larger steps (not by whole stairs)
                    # and there shows a slope (a gradient too small for the probe).
                    self.evals += 6
                    if not ctx.moves_faintly(v):
                        return True, True, a_dot, 0.0
                    wide, wide_err, used = fd.directional(
                        ctx.fun, x0, w, rel_step=1e-2, noise=ctx.noise, f0=ctx.f0, block=idx
                    )
                    self.evals += used
                    if SAFETY * wide_err <= 0.25 * abs(wide):
                        return False, True, a_dot, wide
                    return True, False, a_dot, 0.0  # moves, but too faintly to tell
            result = (passed, decidable, a_dot, d)
            self.last = _Look(w, a_dot, d, err) if np.isfinite(err) else None
            if decidable or rel >= 1e-2:
                break
        return result

    def rest(self, parent: _Look, first: _Look, idx: slice) -> bool:
        """Whether the second half ``idx`` of a group passes, from the group's test and its first half's.

        The first half was tested along the group's own direction, cut to its
        entries; directional derivatives add up, so the second half's along
        the rest of that direction is the group's minus the first half's, at
        no evaluation.  Its error bound is the sum of both (and their
        round-off).  :attr:`last` then holds the second half's look.
        """
        w = parent.w[len(first.w) :]
        a_dot, base = self._bounds(idx, w)
        d = parent.d - first.d
        err = parent.err + first.err + 4 * fd.EPS * (abs(parent.d) + abs(first.d))
        self.last = _Look(w, a_dot, d, err)
        return abs(a_dot - d) <= base + SAFETY * err

    def _bounds(self, idx: slice, w: np.ndarray) -> tuple[float, float]:
        """``g . w`` on the entries ``idx`` and the tolerance before the error estimate, ``atol sum|w| + rtol ||g * w||``."""
        opts = self.ctx.opts
        a_dot, w_sum, aw_norm = fd.direction_bounds(self.ctx.analytic[idx], w)
        return a_dot, opts.atol * w_sum + opts.rtol * aw_norm


def _settled(a_dot: float, base: float) -> Callable[[float, float], bool]:
    """Whether a directional value ``d`` with error estimate ``err`` already decides ``a_dot``.

    Clearly wrong: the gap exceeds twice the whole tolerance ``base + SAFETY *
    err``.  Clearly right: the gap is within ``base`` alone and the error is
    small next to the values (the test is decidable).  A slope of zero on
    either side is left to the full test, which looks for stairs.
    """

    def settle(d: float, err: float) -> bool:
        if a_dot == 0 or d == 0:
            return False
        gap = abs(a_dot - d)
        if gap > 2 * (base + SAFETY * err):
            return True
        return gap <= base and SAFETY * err <= 0.25 * max(abs(a_dot), abs(d))

    return settle


def _size(group: slice) -> int:
    return int(group.stop) - int(group.start)


def _entries(groups: list[slice]) -> np.ndarray:
    """The coordinates of contiguous groups, in order."""
    return np.concatenate([np.arange(g.start, g.stop) for g in groups])


def _locate(
    tester: _Tester, idx: slice, looks_dense: Callable[[], bool] | None = None, look: _Look | None = None
) -> tuple[list[slice], int, bool]:
    """Split failing groups (contiguous runs of coordinates) level by level.

    ``looks_dense``, where given, is asked once, when both halves of ``idx``
    fail: whether a sample of single entries shows the error everywhere (a
    scale factor, a missing term), which ends the search at once.  One wrong
    entry fails only one half and costs nothing extra.

    ``look``: the failing test of ``idx`` itself.  A group whose failing test
    is known has its first half tested along the same direction, and its
    second half judged from the difference (:meth:`_Tester.rest`): one test
    per level instead of two on one wrong entry.

    Returns the failing groups of the last level searched, the number of
    coordinates they cover, and whether the error looked dense.
    """
    looks: dict[tuple[int, int], _Look] = {} if look is None else {(idx.start, idx.stop): look}
    failing = [idx]
    dense_levels = 0
    first = True
    while True:
        if all(_size(g) == 1 for g in failing):
            return failing, len(failing), False
        children = []
        for g in failing:
            if _size(g) == 1:
                children.append(g)
                continue
            half = g.start + _size(g) // 2
            pair = [slice(g.start, half), slice(half, g.stop)]
            parent = looks.pop((g.start, g.stop), None)
            results = []
            if parent is not None:
                results.append(tester.test(pair[0], parent.w[: half - g.start])[0])
                left = tester.last
                if left is not None:
                    _keep(looks, pair[0], left, results[0])
                    results.append(tester.rest(parent, left, pair[1]))
                    _keep(looks, pair[1], tester.last, results[1])
            if len(results) < 2:
                results = _tested(tester, pair, looks)
            tries = 0
            while all(results) and tries < 2:  # the bug hid behind small weights: look again
                results = _tested(tester, pair, looks)
                tries += 1
            children.extend(c for c, ok in zip(pair, results) if not ok)
        tested = sum(2 if _size(g) > 1 else 0 for g in failing)
        dense_levels = (
            dense_levels + 1
            if tested and len(children) == sum(2 if _size(g) > 1 else 1 for g in failing)
            else 0
        )
        if not children:
            return failing, sum(_size(g) for g in failing), False
        if first and looks_dense is not None and dense_levels and looks_dense():
            return [idx], _size(idx), True
        first = False
        failing = children
        if dense_levels >= DENSE_LEVEL or len(failing) > MAX_LOCATED:
            return failing, sum(_size(g) for g in failing), True


def _tested(tester: _Tester, pair: list[slice], looks: dict[tuple[int, int], _Look]) -> list[bool]:
    """Both halves tested along new directions of their own; their looks kept where they fail."""
    results = []
    for c in pair:
        results.append(tester.test(c)[0])
        _keep(looks, c, tester.last, results[-1])
    return results


def _keep(looks: dict[tuple[int, int], _Look], group: slice, look: _Look | None, passed: bool) -> None:
    """Remember the failing test of ``group`` for its own split."""
    key = (int(group.start), int(group.stop))
    if look is not None and not passed:
        looks[key] = look
    else:
        looks.pop(key, None)


def _compare_entries(
    ctx: Problem, entries: np.ndarray, rel: float, quick: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Entry-by-entry comparison (Richardson + kink test) of a few coordinates.

    With ``quick``, each entry is first tried by :func:`_quick_entry` (4 or 6
    evaluations), and takes the full look only where that cannot decide.

    Returns the analytic and numerical values, the tolerances, and which
    entries are wrong, at a kink, or undecidable (a flat function whose
    analytic slope is too small for float64 to show).
    """
    opts = ctx.opts
    a = ctx.analytic[entries]
    n = np.empty(len(entries))
    tol = np.empty(len(entries))
    bad = np.zeros(len(entries), dtype=bool)
    kink = np.zeros(len(entries), dtype=bool)
    hidden = np.zeros(len(entries), dtype=bool)
    direction = np.zeros(ctx.flat.n)

    def direction_of(i: int) -> np.ndarray:
        unit = np.zeros(ctx.flat.n)
        unit[i] = 1.0
        return unit

    for k, i in enumerate(entries):
        if not np.isfinite(a[k]):  # wrong whatever the numbers say
            bad[k] = True
        elif quick and a[k] != 0:
            estimate = _quick_entry(ctx, int(i), float(a[k]), rel)
            if estimate is not None:
                n[k], tol[k] = estimate
                bad[k] = abs(a[k] - n[k]) > tol[k]
                continue
        direction[i] = 1.0
        bound = ctx.flat_slope(direction)
        direction[i] = 0.0
        if bound is not None and a[k] == 0 and ctx.moves_faintly(direction_of(i)):
            wide = fd.refine(ctx.fun, ctx.flat.x0, int(i), ctx.f0, rel_step=1e-2, noise=ctx.noise)
            if wide.smooth and SAFETY * wide.error <= 0.25 * abs(wide.value):
                bound = None  # a clear slope at larger steps: judged below
            else:
                hidden[k] = True  # moves, but too faintly to tell
        if bound is not None and a[k] != 0 and ctx.below_resolution(float(a[k]), direction_of(i)):
            # flat, with a slope too small to show: an error bound as large as the slope
            n[k], tol[k], hidden[k] = 0.0, opts.atol + (1 + opts.rtol) * abs(a[k]), True
            continue
        if bound is not None:  # inside one stair of a staircase, or saturated
            n[k], tol[k] = 0.0, opts.atol + opts.rtol * abs(a[k]) + SAFETY * bound
            bad[k] |= abs(a[k]) > tol[k]
            continue
        ref = fd.refine(ctx.fun, ctx.flat.x0, int(i), ctx.f0, rel_step=rel, noise=ctx.noise)
        t = float(
            tolerance(
                np.array([a[k]]), np.array([ref.value]), np.array([SAFETY * ref.error]), opts.rtol, opts.atol
            )[0]
        )
        tol[k] = t
        if ref.smooth:
            n[k] = ref.value
            bad[k] |= abs(a[k] - ref.value) > t
        elif not bad[k]:  # not differentiable here: no value is right or wrong
            kink[k] = True
            n[k] = ref.left if abs(a[k] - ref.left) < abs(a[k] - ref.right) else ref.right
    return a, n, tol, bad, kink, hidden


def _quick_entry(ctx: Problem, i: int, a: float, rel: float) -> tuple[float, float] | None:
    """Entry ``i`` by the directional estimate along its unit vector: (value, tolerance), or None.

    Four evaluations where the two longer steps already decide, six
    otherwise.  None where the estimate cannot decide (a kink, a flat
    stretch, an error bound too large next to the values): the caller then
    takes the full look (stairs, kinks, shorter steps).
    """
    opts = ctx.opts

    def base(d: float) -> float:
        return opts.atol + opts.rtol * max(abs(a), abs(d))

    def settle(d: float, err: float) -> bool:
        return _settled(a, base(d))(d, err)

    d, err, _ = fd.directional(
        ctx.fun,
        ctx.flat.x0,
        _UNIT,
        rel_step=rel,
        noise=ctx.noise,
        f0=ctx.f0,
        block=slice(i, i + 1),
        settle=settle,
    )
    if not np.isfinite(err) or d == 0 or SAFETY * err > 0.25 * max(abs(a), abs(d)):
        return None
    return d, base(d) + SAFETY * err


_UNIT = np.ones(1)


def _dense_probe(
    ctx: Problem, idx: slice, rel: float, sampled: list[tuple[np.ndarray, tuple[np.ndarray, ...]]]
) -> Callable[[], bool]:
    """:func:`_locate`'s ``looks_dense`` for the block ``idx``: it appends the sample it compared to ``sampled``."""

    def looks_dense() -> bool:
        if _size(idx) <= 2 * DENSE_SAMPLE:
            return False
        chosen = np.sort(ctx.rng.choice(_entries([idx]), size=DENSE_SAMPLE, replace=False))
        compared = _compare_entries(ctx, chosen, rel)
        sampled.append((chosen, compared))
        return int(compared[3].sum()) >= DENSE_FOUND

    return looks_dense


def run_fast(ctx: Problem) -> tuple[list[BlockResult], str, float]:
    """Fast mode over every parameter.

    Parameters
    ----------
    ctx : Problem
        The check.

    Returns
    -------
    blocks, method, step
        One :class:`BlockResult` per parameter, ``"richardson (directional)"``
        and the relative step of the directional derivatives.
    """
    tester = _Tester(ctx)
    blocks: list[BlockResult] = []
    scale = fd.max_abs(ctx.analytic)
    for leaf in ctx.flat.leaves:
        idx = leaf.slice
        broken = leaf.offset + fd.non_finite(ctx.analytic[idx])
        if len(broken):
            blocks.append(_broken_block(ctx, leaf, broken, tester.rel))
            continue
        da, dn = [], []
        failed = False
        failed_look: _Look | None = None
        unsure = 0
        budget = ctx.opts.directions + RETRIES
        done = 0
        while done < ctx.opts.directions and budget > 0 and not failed:
            budget -= 1
            passed, decidable, a_dot, d = tester.test(idx)
            if not decidable and passed:
                unsure += 1
                continue
            da.append(a_dot)
            dn.append(d)
            done += 1
            failed = not passed  # one failing direction decides the parameter
            if failed:
                failed_look = tester.last
            tester.last = None  # a direction as long as the parameter: not kept past its test
        da_arr, dn_arr = np.array(da), np.array(dn)
        if not failed:
            if done == 0:
                # Directions cannot decide (kinks or noise along every direction):
                # fall back to a sample of entries.
                entries = np.sort(ctx.rng.choice(_entries([idx]), size=min(leaf.size, 32), replace=False))
                # (no directional estimate along each entry first: here they are kinked or flat)
                a, n, tol, bad, kink, hidden = _compare_entries(ctx, entries, tester.rel, quick=False)
                err = np.maximum(tol - ctx.opts.rtol * np.maximum(np.abs(a), np.abs(n)), 0)
                blk = block_result(
                    leaf, entries - leaf.offset, a, n, tol, bad, kink, undecidable(a, n, err, scale) | hidden
                )
                blocks.append(blk)
                continue
            blocks.append(_directional_block(leaf, da_arr, dn_arr, "pass"))
            continue
        sampled: list[tuple[np.ndarray, tuple[np.ndarray, ...]]] = []
        groups, covered, dense = _locate(
            tester, idx, _dense_probe(ctx, idx, tester.rel, sampled), failed_look
        )
        tester.last = failed_look = None
        candidates = _entries(groups)
        if dense and sampled and covered == leaf.size:
            entries, (a, n, tol, bad, kink, hidden) = sampled[0]
        else:
            if dense or len(candidates) > ENTRY_SAMPLE:
                entries = np.sort(
                    ctx.rng.choice(candidates, size=min(len(candidates), ENTRY_SAMPLE), replace=False)
                )
            else:
                entries = np.sort(candidates)
            a, n, tol, bad, kink, hidden = _compare_entries(ctx, entries, tester.rel)
        blk = block_result(leaf, entries - leaf.offset, a, n, tol, bad, kink, hidden)
        blk.checked_by = "directions"
        blk.directional_analytic, blk.directional_numeric = da_arr, dn_arr
        blk.rel_error = rel_error(da_arr, dn_arr)
        if dense:
            frac = bad.mean() if len(bad) else 1.0
            blk.n_bad = max(int(bad.sum()), round(frac * covered))
        else:
            blk.n_bad = (
                int(bad.sum()) if len(entries) == len(candidates) else max(int(bad.sum()), len(groups))
            )
        if blk.n_bad == 0:
            # The directions failed but no entry could be pinned down (the error is
            # spread thinly): still a failure, reported at the largest gap seen.
            blk.n_bad = max(1, covered)
        blk.verdict, blk.passed = "fail", False
        blocks.append(blk)
    return blocks, "richardson (directional)", tester.rel


def confirms(ctx: Problem, leaf: Leaf, meant: np.ndarray, directions: int = 2) -> bool:
    """Whether ``meant`` (a candidate gradient of ``leaf``) agrees with finite differences.

    Fast mode's confirmation of a suspected bug model (a transposed gradient):
    ``directions`` random directional derivatives of the whole parameter, each
    compared with ``meant . v`` under fast mode's rule.
    """
    original = ctx.analytic
    trial = original.copy()
    trial[leaf.slice] = meant
    ctx.analytic = trial
    try:
        tester = _Tester(ctx)
        return all(tester.test(leaf.slice)[0] for _ in range(directions))
    finally:
        ctx.analytic = original


def _broken_block(ctx: Problem, leaf: Leaf, broken: np.ndarray, rel: float) -> BlockResult:
    """A parameter whose analytic gradient has non-finite entries: they are wrong.

    A sample of them is compared with finite differences (for the report's
    numbers); every one counts as wrong.
    """
    entries = broken[:ENTRY_SAMPLE]
    a, n, tol, bad, kink, hidden = _compare_entries(ctx, entries, rel)
    blk = block_result(leaf, entries - leaf.offset, a, n, tol, bad, kink, hidden)
    blk.n_bad = len(broken)
    return blk


def _directional_block(leaf: Leaf, da: np.ndarray, dn: np.ndarray, verdict: str) -> BlockResult:
    empty = np.zeros(0)
    return BlockResult(
        name=leaf.name,
        shape=leaf.shape,
        passed=verdict == "pass",
        verdict=verdict,
        rel_error=rel_error(da, dn),
        max_abs_error=float(np.max(np.abs(da - dn))) if len(da) else 0.0,
        worst_index=None,
        n_checked=len(da),
        n_bad=0,
        analytic=empty,
        numeric=empty,
        indices=np.zeros(0, dtype=np.int64),
        tolerance=empty,
        dtype=leaf.dtype,
        checked_by="directions",
        directional_analytic=da,
        directional_numeric=dn,
    )
