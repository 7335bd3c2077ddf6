"""The finite difference engine: schemes, step sizes, noise estimate.

Everything here works on a scalar function ``fun`` of one float64 vector
(built by the check loop around the user's loss) and plain numpy.

* :func:`relative_step` picks the step for a scheme from the measured noise of
  the loss (the textbook optimum ``(noise/|f|)**(1/3)`` for central
  differences, ``**(1/2)`` for forward, ``**(1/5)`` for Richardson).
* :func:`taken_steps` turns relative steps into the steps actually taken:
  ``(x + h) - x`` in floating point, which is what every quotient divides by.
* :func:`sweep` differentiates along chosen coordinates with one scheme and
  returns the estimates with a bound on their round-off error.
* :func:`refine` re-examines one coordinate with Richardson extrapolation and
  one-sided differences: a better estimate, a truncation error estimate, and
  whether the function has a kink there.
* :func:`estimate_noise` measures the loss's round-off noise with the ECnoise
  difference-table method of More and Wild (2011).
* :func:`directional` is the Richardson directional derivative used by fast mode.
* :func:`random_direction` draws its random directions; :func:`scaled` is the
  ``s * w`` every move along one computes, in float64.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "EPS",
    "METHODS",
    "NOISE_POINTS",
    "Refined",
    "add_scaled",
    "along",
    "direction_bounds",
    "directional",
    "directional_points",
    "estimate_noise",
    "max_abs",
    "random_direction",
    "refine",
    "relative_step",
    "scaled",
    "sweep",
    "sweep_points",
    "taken_steps",
]

EPS = float(np.finfo(np.float64).eps)
METHODS = ("central", "forward", "richardson", "complex")

# Random directions at least this long are kept small.  Fast mode's test
# directions are whole numbers in int8 (:func:`random_direction`): an eighth of
# the memory of float64 entries (at 10M parameters, 10 MB where float64 would
# take 80).  The noise probe's direction, scaled by the point's entries, is
# float32.  Their entries are float64 numbers like any others; every sum and
# product with them is taken in float64 (see :func:`scaled`).
LONG_DIRECTION = 1 << 19

# A long test direction holds standard normal draws times this, rounded to whole
# numbers: 255 levels from -127 to 127 (5.3 standard deviations), steps of 1/24
# of one.  A direction's scale is arbitrary: the entries are used as they are.
WHOLE_SCALE = 24

# Evaluations per coordinate of each scheme (the central value f(x0) is shared).
EVALS_PER_COORDINATE = {"central": 2, "forward": 1, "richardson": 4, "complex": 1}


def relative_step(method: str, noise_rel: float = EPS) -> float:
    """Relative step for ``method`` given the loss's relative noise level.

    ``noise_rel`` is the noise of the loss divided by its magnitude (machine
    epsilon for a clean float64 loss, about 6e-8 for a float32 loss).
    """
    noise_rel = float(min(max(noise_rel, EPS), 1e-2))
    if method == "central":
        return float(np.clip(noise_rel ** (1 / 3), 1e-7, 5e-2))
    if method == "forward":
        return float(np.clip(noise_rel ** (1 / 2), 1e-9, 5e-2))
    if method == "richardson":
        return float(np.clip(noise_rel ** (1 / 5), 1e-4, 1e-1))
    if method == "complex":
        return 1e-20
    raise ValueError(method)


def taken_steps(x: np.ndarray, rel: float) -> np.ndarray:
    """Steps scaled to each coordinate's magnitude, as actually representable.

    ``h_i = rel * max(1, |x_i|)`` pointing away from zero, then replaced by
    ``(x_i + h_i) - x_i`` so that a quotient divides by the step really taken.
    """
    x = np.asarray(x, dtype=np.float64)
    sign = np.where(x >= 0, 1.0, -1.0)
    h = rel * sign * np.maximum(1.0, np.abs(x))
    return (x + h) - x


# Central differences along at most this many coordinates evaluate both
# sides in one batch (more: one side at a time, for the progress bar).
_BOTH_SIDES_AT_ONCE = 256


def _evaluate_shifted(
    fun: Callable[[np.ndarray], float],
    batch: Callable[[np.ndarray], np.ndarray] | None,
    x0: np.ndarray,
    idx: np.ndarray,
    shift: np.ndarray,
    tick: Callable[[int], None] | None,
) -> np.ndarray:
    """``fun(x0 + shift_k e_{idx_k})`` for every k, batched where possible."""
    out = np.empty(len(idx))
    if batch is not None:
        shifted = getattr(fun, "shifted", None)  # the target builds the points itself
        chunk = max(1, min(len(idx), (32 << 20) // (8 * max(x0.size, 1))))
        for start in range(0, len(idx), chunk):
            part = np.arange(start, min(start + chunk, len(idx)))
            values = None if shifted is None else shifted(x0, idx[part], shift[part])
            if values is None:
                values = batch(_shifted_rows(x0, idx[part], shift[part]))
            out[part] = values
            if tick:
                tick(len(part))
        return out
    along = getattr(fun, "along", None)
    if getattr(fun, "moves_entries", False):
        along = None  # the target builds one-entry moves itself, in the loop of ``moves`` below
    if along is not None:  # one entry moved in the target's own tensors: no copy of the point
        for k, i in enumerate(idx.tolist()):
            out[k] = along(slice(i, i + 1), _ONE, float(shift[k]))
            if tick:
                tick(1)
        return out
    moves = getattr(fun, "moves", None)  # the counted loss evaluates them in one loop of its own
    if moves is not None:
        values = moves(x0, idx, shift, tick)
        if values is not None:
            return values
    x = x0.copy()
    # Python numbers: the same float64 sums, without numpy scalars in the loop
    for k, (i, s) in enumerate(zip(idx.tolist(), shift.tolist())):
        xi = x[i]
        x[i] = xi + s
        out[k] = fun(x)
        x[i] = xi
        if tick:
            tick(1)
    return out


def _shifted_rows(x0: np.ndarray, idx: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Rows ``x0 + shift_k e_{idx_k}``: ``x0`` with ``x0[idx_k] + shift_k`` at coordinate ``idx_k``."""
    rows = np.repeat(x0[None, :], len(idx), axis=0)
    rows[np.arange(len(idx)), idx] += shift
    return rows


def _back_step(xi: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The backward step actually taken from ``xi`` for a forward step ``h``: ``xi - (xi - h)``."""
    return xi - (xi - h)


def sweep_points(
    x0: np.ndarray, idx: Sequence[int] | np.ndarray, *, method: str, rel_step: float
) -> np.ndarray:
    """Every point :func:`sweep` evaluates for ``method`` (central or Richardson), as rows, bit for bit.

    The same sums as the sweep's: ``x0`` with ``x0[i] + shift`` at coordinate
    ``i``, for the steps :func:`taken_steps` gives (forward and backward),
    so a caller can have them evaluated ahead (in one batch with other
    points) and the sweep finds their values by the points themselves.
    """
    where = np.asarray(idx, dtype=np.int64)
    xi = x0[where]
    if method == "central":
        rels = [rel_step]
    elif method == "richardson":
        rels = [rel_step, rel_step / 2]
    else:
        raise ValueError(f"sweep_points takes central or Richardson differences, not {method!r}")
    shifts = []
    for rel in rels:
        h = taken_steps(xi, rel)
        shifts += [h, -_back_step(xi, h)]
    return _shifted_rows(x0, np.tile(where, len(shifts)), np.concatenate(shifts))


def sweep(
    fun: Callable[[np.ndarray], float],
    x0: np.ndarray,
    idx: Sequence[int] | np.ndarray,
    f0: float,
    *,
    method: str,
    rel_step: float,
    noise: float,
    batch: Callable[[np.ndarray], np.ndarray] | None = None,
    complex_fun: Callable[[np.ndarray], complex] | None = None,
    tick: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Numerical partial derivatives along the coordinates ``idx``.

    Returns
    -------
    numeric : numpy.ndarray
        One estimate per index.
    roundoff : numpy.ndarray
        A bound on each estimate's round-off error, from the noise level.
    truncation : numpy.ndarray
        A truncation error estimate where the scheme gives one (Richardson),
        else zeros.
    """
    where = np.asarray(idx, dtype=np.int64)
    xi = x0[where]
    noise = max(noise, EPS * abs(f0))
    zeros = np.zeros(len(where))
    if method == "complex":
        if complex_fun is None:
            raise ValueError("complex step needs a complex evaluation")
        h = rel_step * np.maximum(1.0, np.abs(xi))
        out = np.empty(len(where))
        z = x0.astype(np.complex128)
        for k, i in enumerate(where):
            z[i] = x0[i] + 1j * h[k]
            out[k] = complex_fun(z).imag / h[k]
            z[i] = x0[i]
            if tick:
                tick(1)
        return out, 4 * EPS * np.abs(out) + 1e-300, zeros
    h = taken_steps(xi, rel_step)
    if method == "forward":
        fp = _evaluate_shifted(fun, batch, x0, where, h, tick)
        return (fp - f0) / h, 2 * noise / np.abs(h), zeros
    hm = _back_step(xi, h)
    if method == "central":
        if batch is not None and len(where) <= _BOTH_SIDES_AT_ONCE:  # both sides in one batch
            both = _evaluate_shifted(
                fun, batch, x0, np.concatenate([where, where]), np.concatenate([h, -hm]), None
            )
            fp, fm = both[: len(where)], both[len(where) :]
            if tick:
                tick(len(where))
        else:
            fp = _evaluate_shifted(fun, batch, x0, where, h, None)
            fm = _evaluate_shifted(fun, batch, x0, where, -hm, tick)
        return (fp - fm) / (h + hm), 2 * noise / np.abs(h + hm), zeros
    if method == "richardson":
        h2 = taken_steps(xi, rel_step / 2)
        h2m = _back_step(xi, h2)
        f1p = _evaluate_shifted(fun, batch, x0, where, h, None)
        f1m = _evaluate_shifted(fun, batch, x0, where, -hm, None)
        f2p = _evaluate_shifted(fun, batch, x0, where, h2, None)
        f2m = _evaluate_shifted(fun, batch, x0, where, -h2m, tick)
        d1 = (f1p - f1m) / (h + hm)
        d2 = (f2p - f2m) / (h2 + h2m)
        value = (4 * d2 - d1) / 3
        roundoff = (4 * noise / np.abs(h2) + noise / np.abs(h)) / 3
        return value, roundoff, np.abs(d2 - d1) / 3
    raise ValueError(f"unknown method {method!r}")


@dataclass
class Refined:
    """A second, closer look at one coordinate."""

    value: float  # Richardson-extrapolated central difference
    error: float  # truncation + round-off estimate of ``value``
    smooth: bool  # False where one-sided differences reveal a kink
    left: float  # backward one-sided derivative (small step)
    right: float  # forward one-sided derivative (small step)
    nfev: int
    resolution: float = 0.0  # smallest slope gap the kink test can see at this step


_ONE = np.ones(1)


def _refine_once(
    fun: Callable[[np.ndarray], float], x0: np.ndarray, i: int, f0: float, rel_step: float, noise: float
) -> Refined:
    """One Richardson + kink look at coordinate ``i`` with steps ``h`` and ``h/2``."""
    xi = x0[i : i + 1]
    h = float(taken_steps(xi, rel_step)[0])
    h2 = float(taken_steps(xi, rel_step / 2)[0])

    at = _Line(fun, x0, slice(i, i + 1), _ONE)
    f1p, f1m, f2p, f2m = at(h), at(-h), at(h2), at(-h2)
    d1 = (f1p - f1m) / (2 * h)
    d2 = (f2p - f2m) / (2 * h2)
    value = (4 * d2 - d1) / 3
    roundoff = (4 * noise / abs(h2) + noise / abs(h)) / 3
    trunc = abs(d2 - d1) / 3
    right1, left1 = (f1p - f0) / h, (f0 - f1m) / h
    right2, left2 = (f2p - f0) / h2, (f0 - f2m) / h2
    gap1, gap2 = right1 - left1, right2 - left2
    # Smooth: gap(h) = h f'' + O(h^3), so gap1 - 2 gap2 is round-off only.
    resolution = 20 * noise / abs(h2)
    smooth = bool(abs(gap1 - 2 * gap2) <= resolution + 1e-3 * abs(gap1))
    return Refined(float(value), float(trunc + roundoff), smooth, float(left2), float(right2), 4, resolution)


# Step ladder of :func:`refine`: each level divides the step by this.
REFINE_SHRINK = 16.0
REFINE_LEVELS = 5


def refine(
    fun: Callable[[np.ndarray], float],
    x0: np.ndarray,
    i: int,
    f0: float,
    *,
    rel_step: float,
    noise: float,
) -> Refined:
    """Richardson extrapolation and a kink test at coordinate ``i``.

    Four evaluations per step, at ``x_i +- h`` and ``x_i +- h/2``.  For a
    smooth function the one-sided slopes differ by about ``h f''``, so halving
    ``h`` halves the gap; at a kink (ReLU at 0, ``abs``, ``max``) the gap stays
    put.  Steps shrink by 16 from ``rel_step`` while that lowers the error
    estimate, for coordinates where the loss curves sharply or ends nearby (a
    probability of 1e-9 under a log); the smooth level with the smallest error
    estimate is returned.  Points where the loss is not finite disqualify
    their level; a value of NaN means no level worked.
    """
    noise = max(noise, EPS * abs(f0))
    best: Refined | None = None
    rough: Refined | None = None
    after_best: Refined | None = None  # the first finite level below the best one
    nfev = 0
    rel = rel_step
    usable = 0
    while usable < REFINE_LEVELS and rel > 1e-15:
        r = _refine_once(fun, x0, i, f0, rel, noise)
        nfev += 4
        rel /= REFINE_SHRINK
        if not np.isfinite(r.value) or not np.isfinite(r.error):
            continue  # outside the loss's domain: shrink further
        if best is not None and after_best is None:
            after_best = r
        if not r.smooth:
            # A kink within reach (a clip, a ReLU): a smaller step may get past
            # it; one exactly at x_i stays rough at every step.
            rough = rough or r
            continue
        if rough is not None and best is None and r.resolution > 0.5 * abs(rough.right - rough.left):
            break  # the noise now hides the kink: smaller steps cannot tell any more
        usable += 1
        if best is not None and r.error > 4 * best.error:
            break  # round-off has taken over
        if best is None or r.error < best.error:
            best, after_best = r, None
        if best.error <= 1e-12 * abs(best.value):
            break
    if best is not None and after_best is not None:
        best.error = _checked_against(best, after_best)
    chosen = best or rough or Refined(float("nan"), float("inf"), True, float("nan"), float("nan"), 0)
    chosen.nfev = nfev
    return chosen


def _checked_against(best: Refined, smaller: Refined) -> float:
    """``best``'s error estimate, widened where the next smaller step contradicts it.

    Two levels of the ladder estimate the same derivative, so their values may
    differ by no more than their errors together; what the smaller step's own
    error cannot explain is an error of ``best`` its Richardson gap missed (a
    step too long for a function that curves on a much shorter scale, such as a
    saturated softmax, can give two close but wrong slopes).  A smaller step
    that looks rough while ``best``'s step looked smooth is no independent
    check (a real kink shows at the longer step first), so then the whole
    disagreement and its error count.
    """
    gap = abs(best.value - smaller.value)
    if smaller.smooth:
        return max(best.error, gap - smaller.error)
    return max(best.error, gap + smaller.error)


#: Points of one segment of the noise probe (:func:`estimate_noise`).
NOISE_POINTS = 8


def estimate_noise(
    fun: Callable[[np.ndarray], float],
    x0: np.ndarray,
    f0: float,
    rng: np.random.Generator,
    *,
    points: int = NOISE_POINTS,
    rel_step: float = 1e-6,
    batch: Callable[[np.ndarray], np.ndarray] | None = None,
    block: slice | None = None,
) -> tuple[float, int]:
    """Round-off noise of ``fun`` near ``x0`` by ECnoise (More and Wild, 2011).

    Evaluates ``fun`` at ``points`` equally spaced points on a short segment
    from ``x0`` along a random direction, builds the difference table and
    takes the noise level from the first order at which the scaled
    differences agree and change sign (where they measure noise, not the
    function's curvature).

    ``batch``, where given, evaluates the points of the segment at once;
    ``block``, where given, limits the direction to those coordinates.

    Returns
    -------
    noise : float
        The estimated standard deviation of the loss's round-off noise.
    nfev : int
        Evaluations used.
    """
    n = x0.size
    # Steps relative to each coordinate's own size: a probability of 1e-9 is
    # moved by 1e-15, not by 1e-6 (which would cross a clip or leave the domain);
    # a zero coordinate moves by the median size of the others.
    block = block if block is not None else slice(0, n)
    vb = _probe_direction(x0[block], rng)  # the direction on the block (zero elsewhere)
    line = _Line(fun, x0, block, vb)
    v: np.ndarray | None = None  # the whole direction, built only for the rows of a batch
    floor = EPS * abs(f0)
    nfev = 0
    for scale in (rel_step, 100 * rel_step, 1e4 * rel_step):
        # One-sided points: a kink exactly at x0 (a ReLU at 0, abs(0)) then
        # sits at the end of the segment, not in the middle of the table.
        ts = np.arange(0, points + 1) * scale
        values = np.empty(len(ts))
        if batch is not None:  # all points at once (``batch``: the values at the rows)
            if v is None and block == slice(0, n):
                v = vb
            elif v is None:
                v = np.zeros(n)
                v[block] = vb
            values[0] = f0
            values[1:] = batch(x0[None, :] + ts[1:, None] * v[None, :])
        else:
            for k, t in enumerate(ts):
                values[k] = f0 if t == 0 else line(t)
        nfev += len(ts) - 1
        # A loss that does not move at all under these steps is quantised
        # (float32 parameters, say): look again with larger steps.
        if len(np.unique(values)) >= 3:
            break
    else:
        return floor, nfev
    sigmas, signs = _difference_levels(values)
    for k in range(len(sigmas) - 2):
        trio = sigmas[k : k + 3]
        if min(trio) > 0 and max(trio) <= 4 * min(trio) and signs[k]:
            return max(float(np.max(trio)), floor), nfev
    # No clean plateau: the differences are dominated by curvature or by
    # irregular noise; the highest-order value is a safe over-estimate.
    return max(sigmas[-1], min(sigmas), floor), nfev


def _difference_levels(values: np.ndarray) -> tuple[list[float], list[bool]]:
    """ECnoise's scaled differences: per order ``k``, ``sqrt(gamma_k mean(d_k**2))`` and whether ``d_k`` changes sign.

    ``d_k`` is the ``k``-th difference of ``values`` and ``gamma_k =
    (k!)**2 / (2k)!``.  On Python floats: the table has a few entries, on
    which numpy's calls cost far more than the arithmetic.  The differences
    and squares are the same operations numpy does, and the means are summed
    in numpy's order (:func:`_pairwise_sum`), so the levels are numpy's bit
    for bit.
    """
    table = [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]
    sigmas, signs = [], []
    for k in range(1, len(table)):
        table = [b - a for a, b in itertools.pairwise(table)]
        gamma = math.factorial(k) ** 2 / math.factorial(2 * k)
        sigmas.append(math.sqrt(gamma * (_pairwise_sum([d * d for d in table]) / len(table))))
        signs.append(any(d > 0 for d in table) and any(d < 0 for d in table))
    return sigmas, signs


def _pairwise_sum(a: list[float]) -> float:
    """``sum(a)`` in the order numpy's pairwise summation adds a short contiguous array.

    Fewer than 8 entries are added one after another; up to 128, into 8
    running sums combined as a tree, then the remainder (numpy's
    ``pairwise_sum``).  Longer lists are left to numpy itself.
    """
    n = len(a)
    if n < 8:
        total = 0.0
        for x in a:
            total += x
        return total
    if n > 128:
        return float(np.add.reduce(np.array(a)))
    r = a[:8]
    i = 8
    while i < n - n % 8:
        for j in range(8):
            r[j] += a[i + j]
        i += 8
    total = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    for x in a[i:]:
        total += x
    return total


# Blocks longer than this are reduced in chunks (no temporary as long as the
# block): 512 KiB temporaries, which stay in cache and which the allocator reuses.
_CHUNK = 1 << 16


def _chunks(n: int) -> range:
    return range(0, n, _CHUNK)


def max_abs(a: np.ndarray, finite: bool = False) -> float:
    """``max |a|`` (0 for an empty array), without a temporary as long as ``a``.

    ``finite``: over the finite entries only (0 where there are none).
    """

    def part(chunk: np.ndarray) -> float:
        size = np.abs(chunk)
        if finite:
            size = size[np.isfinite(size)]
        return float(np.max(size)) if size.size else 0.0

    parts = [part(a[k : k + _CHUNK]) for k in _chunks(a.size)]
    return float(np.max(parts)) if parts else 0.0  # NaN if any part is NaN, as np.max says


def non_finite(a: np.ndarray) -> np.ndarray:
    """The flat indices of the NaN and infinite entries of ``a``, without a temporary as long as ``a``."""
    a = a.reshape(-1)
    if a.size <= _CHUNK:
        return np.flatnonzero(~np.isfinite(a))
    parts = [k + np.flatnonzero(~np.isfinite(a[k : k + _CHUNK])) for k in _chunks(a.size)]
    return np.concatenate(parts)


def _sum_abs(a: np.ndarray) -> float:
    if a.size <= _CHUNK:
        return float(np.sum(np.abs(a), dtype=np.float64))
    return float(sum(float(np.sum(np.abs(a[k : k + _CHUNK]), dtype=np.float64)) for k in _chunks(a.size)))


def _norm_of_product(a: np.ndarray, b: np.ndarray) -> float:
    if a.size <= _CHUNK:
        return float(np.linalg.norm(a * b))
    squares = 0.0
    for k in _chunks(a.size):
        part = a[k : k + _CHUNK] * b[k : k + _CHUNK]
        squares += float(part @ part)
    return float(np.sqrt(squares))


def direction_bounds(analytic: np.ndarray, w: np.ndarray) -> tuple[float, float, float]:
    """``g . w``, ``sum |w|`` and ``||g * w||`` of a direction ``w`` on a block whose gradient is ``analytic``.

    Long blocks are reduced in chunks, without temporaries as long as the block.
    """
    if w.dtype == analytic.dtype or w.size <= _CHUNK:
        dot = float(analytic @ w)
    else:  # a float32 or int8 direction: products in float64, a chunk at a time (no float64 copy of w)
        dot = float(sum(float(analytic[k : k + _CHUNK] @ w[k : k + _CHUNK]) for k in _chunks(w.size)))
    return dot, _sum_abs(w), _norm_of_product(analytic, w)


class _Line:
    """``fun`` at the points ``x0 + s v`` of a direction ``v`` that is zero outside ``support``.

    Only the entries in ``support`` move.  Where ``fun`` can evaluate such a
    point itself (``fun.along(block, w, s)``: the point equal to ``x0`` but for
    ``x0[block] + s * w`` on ``block``, see
    :meth:`gradcheck_core.counted_loss.LossFunction.along`), no vector as long
    as ``x0`` is built; otherwise one copy of ``x0`` serves every point.
    """

    def __init__(
        self, fun: Callable[[np.ndarray], float], x0: np.ndarray, support: slice | np.ndarray, vs: np.ndarray
    ) -> None:
        self.fun, self.x0, self.support, self.vs = fun, x0, support, vs
        along = getattr(fun, "along", None)
        self.along = along if isinstance(support, slice) else None
        self.x: np.ndarray | None = None
        self.buffer: np.ndarray | None = None

    def __call__(self, s: float) -> float:
        if self.along is not None:
            return float(self.along(self.support, self.vs, s))
        if self.x is None:
            self.x = self.x0.copy()
        if isinstance(self.support, slice):  # the block written in place, no temporaries as long
            moved = self.x[self.support]
            moved[...] = self.x0[self.support]
            self.buffer = add_scaled(moved, self.vs, s, self.buffer)
        else:
            self.x[self.support] = self.x0[self.support] + scaled(self.vs, s)
        return self.fun(self.x)


def along(fun: Callable[[np.ndarray], float], x0: np.ndarray, direction: np.ndarray, t: float) -> float:
    """``fun(x0 + t * direction)``, moving only the entries where ``direction`` is not zero."""
    support = _support(direction)
    return _Line(fun, x0, support, direction[support])(t)


def _probe_direction(x0: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A standard normal direction scaled by ``|x0|`` entry by entry (zeros: by the median of the others).

    Built in chunks: no temporary as long as ``x0`` beside the direction.
    """
    zeros = sum(int(np.count_nonzero(x0[k : k + _CHUNK] == 0)) for k in _chunks(x0.size))
    typical = 1.0  # unused where no entry is zero
    if 0 < zeros < x0.size:
        typical = float(np.median(np.abs(x0[x0 != 0]), overwrite_input=True))
    v = random_direction(
        rng, x0.size, whole=False
    )  # scaled in place: float32 stays float32 (a direction still)
    for k in _chunks(x0.size):
        part = np.abs(x0[k : k + _CHUNK])
        if zeros:
            part[part == 0] = typical
        v[k : k + _CHUNK] *= part
    return v


def random_direction(rng: np.random.Generator, size: int, *, whole: bool = True) -> np.ndarray:
    """A random direction of ``size`` entries: standard normal float64, or smaller entries when long.

    From :data:`LONG_DIRECTION` entries on, each entry is a standard normal
    draw times :data:`WHOLE_SCALE`, rounded, in ``[-127, 127]``, in int8: a
    normal direction scaled by 24, to within half a unit per entry, in one
    byte; every use of a direction is indifferent to its scale.  ``whole=False``
    keeps long draws in float32 instead (the noise probe, which scales its
    direction in place).  An int8 or float32 entry is a float64 number too;
    callers move along the direction with :func:`scaled`, whose products are
    float64.  Long directions are drawn by :func:`_box_muller`.
    """
    if size >= LONG_DIRECTION:
        return _box_muller(rng, size, whole=whole)
    return rng.standard_normal(size)


def _box_muller(rng: np.random.Generator, size: int, whole: bool = False) -> np.ndarray:
    """``size`` standard normal float32 entries by the Box-Muller transform, a chunk at a time.

    Each chunk takes uniform float32 draws ``u, v`` and gives ``r cos(2 pi v)``
    and ``r sin(2 pi v)`` with ``r = sqrt(-2 log(1 - u))``: three times faster
    than numpy's float32 ziggurat on a 10M-entry direction (28 ms against 88),
    a cost every directional test on a large parameter pays.  With 24-bit
    uniforms the tails end at 5.77 (a probability of 1e-8 beyond).
    ``whole``: int8 entries, each draw times :data:`WHOLE_SCALE` rounded to a
    whole number in ``[-127, 127]``.
    """
    out = np.empty(size, dtype=np.int8 if whole else np.float32)
    two_pi = np.float32(2 * np.pi)
    for a in range(0, size, _CHUNK):
        b = min(a + _CHUNK, size)
        half = (b - a + 1) // 2
        u = rng.random(2 * half, dtype=np.float32)
        r = np.sqrt(np.float32(-2) * np.log1p(-u[:half]))  # 1 - u lies in (0, 1]
        angle = two_pi * u[half:]
        z = np.concatenate([r * np.cos(angle), r * np.sin(angle)])[: b - a]
        if whole:
            z *= np.float32(WHOLE_SCALE)
            np.rint(z, out=z)
            np.clip(z, -127, 127, out=z)
        out[a:b] = z
    return out


def scaled(w: np.ndarray, s: float, out: np.ndarray | None = None) -> np.ndarray:
    """``s * w`` computed and returned in float64, whatever the dtype of ``w`` (floating or int8).

    Parameters
    ----------
    w : numpy.ndarray
        A direction (float64; float32 or int8 where long, see :func:`random_direction`).
    s : float
        The step along it.
    out : numpy.ndarray, optional
        A float64 array of ``w``'s shape to write the product into.

    Returns
    -------
    numpy.ndarray
        The float64 products, ``out`` where given.
    """
    return np.multiply(w, s, out=out, dtype=np.float64)


def add_scaled(x: np.ndarray, w: np.ndarray, s: float, buffer: np.ndarray | None = None) -> np.ndarray | None:
    """``x += scaled(w, s)`` in place, a chunk at a time: the sums of ``x + s * w``, bit for bit.

    No temporary as long as ``x`` is made: the products go through a buffer
    of at most :data:`_CHUNK` float64 entries.

    Parameters
    ----------
    x : numpy.ndarray
        A 1-d float64 array (a view of a point, say), changed in place.
    w : numpy.ndarray
        A direction of ``x``'s length (float64; float32 or int8 where long).
    s : float
        The step along it.
    buffer : numpy.ndarray, optional
        A float64 scratch array to reuse between calls; a larger one is made
        where it is too short.

    Returns
    -------
    numpy.ndarray or None
        The buffer used, to pass again (``buffer`` as given where ``x`` was
        too short to need one).
    """
    size = x.size
    if size <= 1:
        x += scaled(w, s)
        return buffer
    if buffer is None or buffer.size < min(size, _CHUNK):
        buffer = np.empty(min(size, _CHUNK))
    for a in range(0, size, _CHUNK):
        b = min(a + _CHUNK, size)
        step = buffer[: b - a]
        scaled(w[a:b], s, out=step)
        x[a:b] += step
    return buffer


def _support(v: np.ndarray) -> slice | np.ndarray:
    """Where ``v`` is not zero: a slice when that is one run of entries (one block), else the indices."""
    nz = np.flatnonzero(v)
    if len(nz) and int(nz[-1]) - int(nz[0]) + 1 == len(nz):
        return slice(int(nz[0]), int(nz[-1]) + 1)
    return nz


def _steps(xs: np.ndarray, vs: np.ndarray, rel_step: float) -> tuple[float, float, float]:
    """The steps ``t, t/2, t/4`` of :func:`directional`, from the entries of ``x0`` and ``v`` where ``v`` is not zero."""
    vmax = max_abs(vs) if len(vs) else 1.0
    t = rel_step * max(1.0, max_abs(xs) if len(xs) else 1.0) / vmax
    return (t, t / 2, t / 4)


# Each retry of :func:`directional` past a kink divides the steps by this.
KINK_SHRINK = 16.0


def directional_points(x0: np.ndarray, v: np.ndarray, rel_step: float) -> list[np.ndarray]:
    """The points :func:`directional` evaluates, in its order: ``x0 + s v``, ``x0 - s v`` per step.

    Only the entries where ``v`` is not zero move; the others are ``x0``'s own.
    """
    support = _support(v)
    xs, vs = x0[support], v[support]
    points = []
    for s in _steps(xs, vs, rel_step):
        step = scaled(vs, s)
        for moved in (xs + step, xs - step):
            x = x0.copy()
            x[support] = moved
            points.append(x)
    return points


def directional(
    fun: Callable[[np.ndarray], float],
    x0: np.ndarray,
    v: np.ndarray,
    *,
    rel_step: float,
    noise: float,
    f0: float,
    block: slice | None = None,
    kink_shrinks: int = 0,
    settle: Callable[[float, float], bool] | None = None,
) -> tuple[float, float, int]:
    """Directional derivative ``d/dt f(x0 + t v)`` at 0 by repeated Richardson extrapolation.

    Central differences at steps ``t``, ``t/2``, ``t/4`` give two Richardson
    values ``R1`` (steps t, t/2) and ``R2`` (t/2, t/4); the result is the third
    extrapolation ``R2 + (R2 - R1)/15`` and its error estimate is
    ``|R2 - R1|`` plus the round-off.  ``t`` is chosen so that no coordinate
    moves by more than ``rel_step * max(1, |x|)``.

    ``block``, where given, is the one block the direction covers and ``v``
    holds only its entries there (the direction is zero elsewhere): the work
    is then in proportion to the block, not to ``x0``.

    ``kink_shrinks``: where the segment crosses a kink (a ReLU switching
    somewhere along the direction, not at ``x0``), try again up to this many
    times with steps :data:`KINK_SHRINK` times smaller, which leave a kink
    near ``x0`` outside the segment, while the smaller steps can still see a
    kink of the size found (above the noise).

    ``settle``, where given, is asked after the first two steps whether the
    value ``R1`` of steps ``t, t/2`` and its (larger) error estimate
    ``|D(t/2) - D(t)| / 3`` plus the round-off already decide the caller's
    question; if so the step ``t/4`` is not taken.  A clear verdict at the
    coarser estimate is the verdict the finer one gives.

    Returns the value, an error estimate (infinite where the one-sided slopes
    reveal a kink on the segment), and the evaluations used (6 per try, 4
    where ``settle`` stopped it).
    """
    support = _support(v) if block is None else block
    vs = v[support] if block is None else v
    at = _Line(fun, x0, support, vs)
    noise = max(noise, EPS * abs(f0))
    steps = _steps(x0[support], vs, rel_step)
    value, err, rough, nfev = _richardson_along(at, steps, noise, f0, settle)
    for _ in range(kink_shrinks):
        if np.isfinite(err):
            break
        steps = (steps[0] / KINK_SHRINK, steps[1] / KINK_SHRINK, steps[2] / KINK_SHRINK)
        if 80 * noise / steps[0] >= 0.5 * rough:
            break  # a kink of the size seen would hide in the noise at smaller steps
        value, err, rough, used = _richardson_along(at, steps, noise, f0, settle)
        nfev += used
    return value, err, nfev


def _richardson_along(
    at: Callable[[float], float],
    steps: tuple[float, float, float],
    noise: float,
    f0: float,
    settle: Callable[[float, float], bool] | None = None,
) -> tuple[float, float, float, int]:
    """:func:`directional`'s estimate at the given steps: value, error estimate, the kink's slope gap, evaluations.

    The error estimate is infinite where the one-sided slopes reveal a kink
    on the segment; the slope gap then says how large the kink looked.
    """
    d: list[float] = []
    gap: list[float] = []

    def take(s: float) -> None:
        fp, fm = at(s), at(-s)
        d.append((fp - fm) / (2 * s))
        gap.append(((fp - f0) - (f0 - fm)) / s)  # right slope - left slope

    take(steps[0])
    take(steps[1])
    r1, roundoff1 = _extrapolated(d[0], d[1], steps[0], steps[1], noise)
    if settle is not None and _bend(gap, 0, steps, noise) == 0:
        early_err = abs(d[1] - d[0]) / 3 + roundoff1
        if np.isfinite(r1) and np.isfinite(early_err) and settle(float(r1), float(early_err)):
            return float(r1), float(early_err), 0.0, 4
    take(steps[2])
    r2, roundoff = _extrapolated(d[1], d[2], steps[1], steps[2], noise)
    value = r2 + (r2 - r1) / 15
    # For a smooth function the slope gap halves with the step; along a line
    # through a kink it does not, and then no derivative exists to compare.
    rough = max(_bend(gap, 0, steps, noise), _bend(gap, 1, steps, noise))
    if rough > 0 or not np.isfinite(rough):
        return float(value), float("inf"), float(rough), 6
    return float(value), float(abs(r2 - r1) + roundoff), 0.0, 6


def _extrapolated(
    d_long: float, d_short: float, long: float, short: float, noise: float
) -> tuple[float, float]:
    """One Richardson step from central differences at steps ``long`` and ``short = long / 2``: value, round-off."""
    return (4 * d_short - d_long) / 3, (4 * noise / short + noise / long) / 3


def _bend(gap: list[float], k: int, steps: tuple[float, float, float], noise: float) -> float:
    """How far the slope gap at step ``k`` fails to halve at the next step (0 where it halves, as when smooth)."""
    excess = abs(gap[k] - 2 * gap[k + 1])
    return excess if excess > 20 * noise / steps[k + 1] + 1e-3 * abs(gap[k]) else 0.0
