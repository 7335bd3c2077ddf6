"""What kind of bug a failing parameter shows, in words a student understands.

Each detector looks at the checked entries of one failing parameter: the
analytic values ``a``, the numerical values ``n``, and the parameter's own
values ``x`` at those entries.  A detector fires when one simple model
explains (almost) all of the discrepancy ``a - n``:

* ``zero_gradient``: ``a`` is zero where ``n`` is not.
* ``saturation``: ``n`` is exactly zero (the function does not move: a
  staircase, a clipped or saturated region) where ``a`` is not.
* ``transpose``: ``a`` holds the entries of ``n`` under a permutation of the
  parameter's axes (any rank: ``(1, 0)`` for a matrix, ``(0, 2, 1)`` for a
  batch of matrices, ...), or ``n`` computed in a transposed layout and
  reshaped.
* ``sparse_error``: a few entries disagree, the rest agree (an indexing
  mistake); never called a scale error.
* ``sign``: ``a = -n`` over the whole parameter.
* ``scale``: ``a = c n`` for a constant ``c`` over the whole parameter
  (``dW2 * 2`` gives ``c = 2``; a sum where a mean was meant gives the batch size).
* ``missing_term``: ``a - n = -lambda x`` (a forgotten L2 term ``lambda * W``).
* ``mismatch``: the last resort, when no model explains the discrepancy.

Besides, :func:`non_finite_findings` names non-finite analytic entries and
:func:`explain_verdicts` makes sure no failing or inconclusive parameter is
left without a finding.

:func:`saturation_finding` is asked separately, for every failing block:
``saturation`` names entries where the loss is flat (its numerical
derivative is exactly zero) but the analytic gradient is not: a clipped or
saturated loss (Keras's crossentropies clip probabilities at 1e-7).
"""

from __future__ import annotations

from fractions import Fraction
from itertools import permutations

import numpy as np

from .differences import non_finite
from .flatten import Flat
from .report import BlockResult, Finding

__all__ = [
    "EXPLAINED",
    "SPARSE_SHARE",
    "axis_permutations",
    "diagnose_block",
    "entries_text",
    "explain_verdicts",
    "mismatch",
    "nice_number",
    "non_finite_findings",
    "saturation_finding",
    "unpermuted",
]

# A model "explains" the discrepancy when what it leaves over is this small a
# fraction of the discrepancy itself.
EXPLAINED = 0.05
# Wrong entries up to this share of the entries that carry a gradient are "a few".
SPARSE_SHARE = 0.25
# Axis permutations tried for ``transpose`` (all of them up to this rank).
MAX_PERMUTED_RANK = 4


def nice_number(c: float) -> str:
    """2.0000001 -> '2', 0.2500002 -> '1/4', 0.0013 -> '0.0013'."""
    if c == 0 or not np.isfinite(c):
        return f"{c:g}"
    for value in (c, 1 / c):
        r = round(value)
        if r != 0 and abs(value - r) <= 1e-3 * abs(value):
            return str(int(r)) if value is c else f"1/{int(r)}"
    frac = Fraction(c).limit_denominator(16)
    if abs(float(frac) - c) <= 1e-4 * abs(c) and frac.denominator > 1:
        return f"{frac.numerator}/{frac.denominator}"
    return f"{c:.4g}"


def _left_over(residual: np.ndarray, discrepancy: np.ndarray) -> float:
    """The share of the discrepancy a model leaves unexplained (inf for no discrepancy)."""
    d = float(np.linalg.norm(discrepancy))
    return float(np.linalg.norm(residual)) / d if d > 0 else np.inf


def _fits(residual: np.ndarray, discrepancy: np.ndarray) -> bool:
    return _left_over(residual, discrepancy) <= EXPLAINED


def entries_text(count: int, total: int, name: str, wrong: str = "wrong") -> str:
    """``'1 of the 20 entries of V is wrong'``, ``'3 of the 20 entries of V are wrong'``."""
    verb = "is" if count == 1 else "are"
    if total == 1:
        return f"the only entry of {name} {verb} {wrong}"
    return f"{count} of the {total} entries of {name} {verb} {wrong}"


def axis_permutations(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Axis orders other than the identity that move some entry (size-1 axes stay put)."""
    rank = len(shape)
    if rank < 2 or rank > MAX_PERMUTED_RANK:
        return []
    moving = [k for k in range(rank) if shape[k] > 1]
    out = []
    for perm in permutations(range(rank)):
        # Only the order of the axes longer than 1 matters for the flat layout.
        if [k for k in perm if shape[k] > 1] != moving:
            out.append(perm)
    seen, unique = set(), []
    for perm in out:
        key = tuple(k for k in perm if shape[k] > 1)
        if key not in seen:
            seen.add(key)
            unique.append(perm)
    return unique


def unpermuted(values: np.ndarray, shape: tuple[int, ...], perm: tuple[int, ...]) -> np.ndarray:
    """The gradient a backward pass meant, if it returned it with its axes in the order ``perm``.

    A backward pass that returns ``transpose(g, perm)`` (reshaped to the
    parameter's ``shape`` where the permuted axes have other lengths) gives the
    flat ``values``; this recovers the flat ``g``.
    """
    moved = tuple(shape[k] for k in perm)
    return np.transpose(values.reshape(moved), np.argsort(perm)).reshape(-1)


def _axes_text(perm: tuple[int, ...]) -> str:
    swapped = [k for k in range(len(perm)) if perm[k] != k]
    if len(swapped) == 2:
        i, j = swapped
        return f"axes {i} and {j} swapped"
    return f"axes in the order {perm}"


def _find_transpose(block: BlockResult, a_full: np.ndarray) -> tuple[int, ...] | None:
    """The axis order under which the analytic gradient holds the numerical values, if any."""
    a, n = block.analytic, block.numeric
    d = a - n
    wrong = np.abs(d) > block.tolerance
    if wrong.sum() < 2:
        return None
    for perm in axis_permutations(block.shape):
        candidate = unpermuted(a_full, block.shape, perm)[block.indices]
        if _fits(candidate - n, d):
            return perm
    return None


def _informative(block: BlockResult) -> int:
    """How many checked entries carry a gradient a small relative error would show in."""
    n = np.abs(block.numeric)
    top = float(n.max()) if len(n) else 0.0
    return int(np.sum(n > 1e-3 * top)) if top > 0 else len(n)


def _few_wrong(block: BlockResult) -> bool:
    """A few entries wrong, the rest right: s wrong among n is not a dense (scale) error."""
    if block.size < 2 or block.n_bad == 0:
        return False
    if block.checked_by == "coordinates":  # every entry, or a sample of them
        reference = _informative(block)
    else:  # fast mode: n_bad estimates the wrong entries of the whole parameter
        reference = block.size
    return block.n_bad <= max(1, SPARSE_SHARE * reference) and block.n_bad < block.size


def diagnose_block(block: BlockResult, x: np.ndarray, a_full: np.ndarray | None = None) -> list[Finding]:
    """Findings for one failing block.

    Parameters
    ----------
    block : BlockResult
        A failing block (its ``analytic``/``numeric`` are the checked entries).
    x : numpy.ndarray
        The parameter's values at the checked entries.
    a_full : numpy.ndarray, optional
        The analytic gradient of every entry of the block (needed for
        ``transpose``: the numbers of the checked entries may sit elsewhere).

    Returns
    -------
    list of Finding
        At least one finding when the checked entries disagree.
    """
    a, n = block.analytic, block.numeric
    d = a - n
    name = block.name
    if len(a) == 0 or not np.any(d):
        return []
    bad = np.abs(d) > block.tolerance
    na, nn = float(np.linalg.norm(a)), float(np.linalg.norm(n))
    if na <= 1e-12 * nn:
        return [
            Finding(
                "zero_gradient",
                name,
                f"the analytic gradient of {name} is zero but the loss does change with {name} "
                f"(numerical gradient norm {nn:.3g}). The gradient is detached or never computed: "
                "look for a missing backward term, a .detach()/stop_gradient, an in-place "
                "overwrite, or a gradient that is not accumulated.",
                {"numeric_norm": nn},
            )
        ]
    if bad.any() and np.all(n[bad] == 0):
        where = _where(block, bad)
        return [
            Finding(
                "saturation",
                name,
                f"{entries_text(block.n_bad, block.size, name)}: the loss does not change at all "
                f"with them (finite differences are exactly 0 at steps down to a relative 1e-7) "
                f"but the analytic gradient is not zero (at {where}). The function is flat there: "
                "a staircase (floor, round, sign), a clip or a saturated region, whose derivative "
                "is 0. A straight-through or surrogate gradient is a deliberate choice, not the "
                "derivative; otherwise look for the clip's mask missing from the backward pass.",
                {"entries": _where_list(block, bad), "n_bad": block.n_bad},
            )
        ]
    if a_full is not None:
        perm = _find_transpose(block, a_full)
        if perm is not None:
            return [_transpose_finding(name, block.shape, perm)]
    if _few_wrong(block):
        where = _where(block, bad)
        return [
            Finding(
                "sparse_error",
                name,
                f"{entries_text(block.n_bad, block.size, name)} (at {where}); the rest agree. Look "
                "for an indexing, slicing or broadcasting mistake that touches just those entries.",
                {"entries": _where_list(block, bad), "n_bad": block.n_bad},
            )
        ]
    # A factor, or a term proportional to the parameter: whichever leaves less unexplained.
    scale_left = missing_left = np.inf
    c = lam = 0.0
    if nn > 0:
        c = float(a @ n) / float(n @ n)
        scale_left = _left_over(a - c * n, d)
    if bad.sum() >= 2 and np.any(x[bad]):
        xs, ds = x[bad], d[bad]
        lam = -float(ds @ xs) / float(xs @ xs)
        if lam != 0:
            missing_left = _left_over(ds + lam * xs, ds)
    if min(scale_left, missing_left) <= EXPLAINED:
        if scale_left <= missing_left:
            return [_scale_finding(name, c)]
        share = "" if bad.all() else f" on {int(bad.sum())} of {len(bad)} checked entries"
        word = "misses" if lam > 0 else "has an extra"
        return [
            Finding(
                "missing_term",
                name,
                f"the gradient of {name} {word} a term proportional to {name} itself "
                f"(coefficient {abs(lam):.4g}){share}: the analytic gradient equals the numerical "
                f"one {'minus' if lam > 0 else 'plus'} {abs(lam):.4g} x {name}. This is the "
                "signature of a regularisation (weight decay) term left out of the backward "
                "pass, or added twice: add its derivative, lambda/m x W.",
                {"coefficient": lam, "entries": int(bad.sum())},
            )
        ]
    return [mismatch(block)]


def _where_list(block: BlockResult, bad: np.ndarray) -> list[tuple[int, ...]]:
    return [tuple(int(i) for i in np.unravel_index(int(k), block.shape)) for k in block.indices[bad][:5]]


def _where(block: BlockResult, bad: np.ndarray) -> str:
    spots = _where_list(block, bad)
    more = ", ..." if int(bad.sum()) > len(spots) else ""
    return ", ".join(map(str, spots)) + more


def _scale_finding(name: str, c: float) -> Finding:
    if abs(c + 1) <= 1e-3:
        return Finding(
            "sign",
            name,
            f"the gradient of {name} has the wrong sign (analytic = -1 x numerical). "
            "Look for a subtraction written the wrong way round, or a loss that is "
            "maximised where it should be minimised.",
            {"factor": c},
        )
    nice = nice_number(c)
    hint = ""
    if abs(c) > 1.5 and abs(c - round(c)) < 1e-3 * abs(c):
        hint = " A whole-number factor often means an extra multiplication or a sum where a mean was meant."
    elif abs(c) < 0.75:
        hint = (
            f" A factor 1/{nice_number(1 / c)} often means a division by the batch size (or a 1/2) too many."
        )
    return Finding(
        "scale",
        name,
        f"the gradient of {name} is {nice} times the numerical gradient: the "
        f"backward pass multiplies it by {nice} somewhere.{hint} Remove the "
        "factor from the gradient of this parameter.",
        {"factor": c, "factor_text": nice},
    )


def _transpose_finding(name: str, shape: tuple[int, ...], perm: tuple[int, ...]) -> Finding:
    moved = tuple(shape[k] for k in perm)
    how = (
        f"it was computed as a {moved} array and reshaped instead of transposed"
        if moved != shape
        else f"with {_axes_text(perm)}"
    )
    return Finding(
        "transpose",
        name,
        f"the gradient of {name} holds the right numbers in the wrong order: {how} "
        f"(axis order {perm}). Transpose (permute) the axes back, or swap the operands of the "
        "matrix product, rather than reshaping.",
        {"axes": list(perm)},
    )


def mismatch(block: BlockResult) -> Finding:
    """The last-resort finding for a failing block: where it is most wrong, and by how much."""
    name = block.name
    d = np.abs(block.analytic - block.numeric)
    k = int(np.argmax(d))
    spot = tuple(int(i) for i in np.unravel_index(int(block.indices[k]), block.shape))
    return Finding(
        "mismatch",
        name,
        f"{entries_text(block.n_bad, block.size, name)}: at {spot} the analytic gradient is "
        f"{block.analytic[k]:.6g}, finite differences give {block.numeric[k]:.6g}. No simple model "
        "(a factor, a sign, a transpose, a missing term, a few entries) explains the difference: "
        "re-derive this parameter's backward pass term by term.",
        {"entry": list(spot), "analytic": float(block.analytic[k]), "numeric": float(block.numeric[k])},
    )


def non_finite_findings(analytic: np.ndarray, flat: Flat) -> list[Finding]:
    """One ``non_finite_gradient`` finding per parameter whose analytic gradient has NaN or inf."""
    out = []
    for leaf in flat.leaves:
        g = analytic[leaf.slice]
        broken = non_finite(g)
        if not len(broken):
            continue
        spots = [tuple(int(i) for i in np.unravel_index(int(k), leaf.shape)) for k in broken[:5]]
        values = sorted({str(float(g[k])) for k in broken})
        more = ", ..." if len(broken) > len(spots) else ""
        out.append(
            Finding(
                "non_finite_gradient",
                leaf.name,
                f"the analytic gradient of {leaf.name} is {' / '.join(values)} at "
                f"{', '.join(map(str, spots))}{more} ({entries_text(len(broken), leaf.size, leaf.name, 'not finite')}) "
                "while the loss itself is finite there: a non-finite gradient is never right. "
                "The usual cause is a where/select whose untaken branch is NaN or infinite "
                "(where(x > 0, x**2, sqrt(x)), a log or division guarded only in the forward "
                "pass): its NaN still flows through the backward pass, since 0 x NaN is NaN. "
                "Use the double-where trick: make the untaken branch's input safe first "
                "(sqrt(where(x > 0, 1, x)) in the branch) so that both branches are finite.",
                {"entries": spots, "n_bad": len(broken)},
            )
        )
    return out


_GLOBAL_REASONS = ("nondeterministic", "low_precision", "kink", "inaccurate")


def explain_verdicts(blocks: list[BlockResult], findings: list[Finding]) -> list[Finding]:
    """Findings for the failing or inconclusive blocks that no finding explains yet.

    A failing block needs a finding that names it; an inconclusive one is also
    explained by a finding about the whole check (noise, randomness, kinks).
    The last resort is said plainly: ``mismatch`` for a failure,
    ``inaccurate`` for an undecided parameter.
    """
    named = {f.block for f in findings}
    for f in findings:
        if f.kind == "kink":
            named.update(f.detail.get("blocks", {}))
    general = any(f.block is None and f.kind in _GLOBAL_REASONS for f in findings)
    out = []
    for b in blocks:
        if b.verdict == "pass" or b.name in named:
            continue
        if b.verdict == "fail":
            if len(b.analytic):
                out.append(mismatch(b))
            else:
                da, dn = b.directional_analytic, b.directional_numeric
                out.append(
                    Finding(
                        "mismatch",
                        b.name,
                        f"the derivative of {b.name} along a random direction is "
                        f"{', '.join(f'{v:.6g}' for v in da)}, finite differences give "
                        f"{', '.join(f'{v:.6g}' for v in dn)}.",
                        {"analytic": da.tolist(), "numeric": dn.tolist()},
                    )
                )
        elif np.any((b.numeric == 0) & (b.analytic != 0)):
            out.append(
                Finding(
                    "low_precision",
                    b.name,
                    f"the function does not change at all with {b.name} (finite differences are "
                    "exactly 0) while the analytic gradient is nonzero but smaller than float64 "
                    "can show at a value of size max(1, |f|): the forward pass loses it (an "
                    "underflow, or a cancellation such as 1 + erf(x) at very negative x, which is "
                    "exactly 0). Finite differences cannot tell right from wrong here; compute "
                    "the forward without the cancellation (erfc, log-space) to check it.",
                    {},
                )
            )
        elif not general:
            out.append(
                Finding(
                    "inaccurate",
                    b.name,
                    f"finite differences of {b.name} are too inaccurate to decide: their error "
                    "bounds are larger than a quarter of the gradient entries they estimate (a "
                    "gradient that is tiny next to the loss's value or its round-off). Check at "
                    "a point where the gradient is larger, or with method='richardson'.",
                    {},
                )
            )
    return out


def saturation_finding(block: BlockResult, clip_note: str | None = None) -> Finding | None:
    """A ``saturation`` finding for a failing block where the loss is flat.

    Entries whose numerical derivative is exactly zero (the loss did not
    change at all when the entry moved) while the analytic one is beyond the
    tolerance sit where the loss is clipped or saturated (a ``clip``, a
    ``minimum``/``maximum`` against a constant, a probability clipped by a
    crossentropy): the loss's true derivative is zero there, and a gradient
    written from the unclipped formula disagrees.

    Parameters
    ----------
    block : BlockResult
        A failing block.
    clip_note : str, optional
        Why this loss clips (for instance Keras's crossentropy and its
        1e-7); when given, the finding is made even without exact zeros.

    Returns
    -------
    Finding or None
        None when no entry is flat and no ``clip_note`` is given.
    """
    a, n = block.analytic, block.numeric
    if not len(a):
        return None
    flat = (n == 0) & (np.abs(a - n) > block.tolerance)
    count = int(flat.sum())
    if count == 0 and clip_note is None:
        return None
    entries = [tuple(int(i) for i in np.unravel_index(int(k), block.shape)) for k in block.indices[flat][:5]]
    parts = []
    if count:
        parts.append(
            f"at {count} entr{'y' if count == 1 else 'ies'} of {block.name} "
            f"({', '.join(map(str, entries))}{', ...' if count > 5 else ''}) the loss does not change "
            "at all (numerical derivative exactly 0) while the analytic gradient is not 0: the loss "
            "is clipped or saturated there (a clip, a minimum/maximum against a constant, a "
            "probability clipped inside the loss), so its true derivative is 0 and a gradient "
            "written from the unclipped formula disagrees"
        )
    if clip_note:
        parts.append(clip_note)
    message = "; ".join(parts)
    return Finding(
        "saturation",
        block.name,
        message[0].upper() + message[1:] + ".",
        {"entries": entries, "n_flat": count, "clip": clip_note is not None},
    )
