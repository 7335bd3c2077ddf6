"""What kind of bug a failing parameter shows, in words a student understands.

Each detector looks at the checked entries of one failing parameter: the
analytic values ``a``, the numerical values ``n``, and the parameter's own
values ``x`` at those entries.  A detector fires when one simple model
explains (almost) all of the discrepancy ``a - n``:

* ``zero_gradient``: ``a`` is zero where ``n`` is not.
* ``sign``: ``a = -n``.
* ``scale``: ``a = c n`` for a constant ``c`` (``dW2 * 2`` gives ``c = 2``).
* ``transpose``: ``a`` is ``n`` with its two axes swapped.
* ``missing_term``: ``a - n = -lambda x`` (a forgotten L2 term ``lambda * W``).
* ``sparse_error``: only a few entries disagree.

:func:`saturation_finding` is asked separately, for every failing block:
``saturation`` names entries where the loss is flat (its numerical
derivative is exactly zero) but the analytic gradient is not: a clipped or
saturated loss (Keras's crossentropies clip probabilities at 1e-7).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from .report import BlockResult, Finding

__all__ = ["EXPLAINED", "diagnose_block", "nice_number", "saturation_finding"]

# A model "explains" the discrepancy when what it leaves over is this small a
# fraction of the discrepancy itself.
EXPLAINED = 0.05


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


def _fits(residual: np.ndarray, discrepancy: np.ndarray) -> bool:
    d = float(np.linalg.norm(discrepancy))
    return d > 0 and float(np.linalg.norm(residual)) <= EXPLAINED * d


def diagnose_block(
    block: BlockResult, x: np.ndarray, full: tuple[np.ndarray, np.ndarray] | None = None
) -> list[Finding]:
    """Findings for one failing block.

    Parameters
    ----------
    block : BlockResult
        A failing block (its ``analytic``/``numeric`` are the checked entries).
    x : numpy.ndarray
        The parameter's values at the checked entries.
    full : tuple of numpy.ndarray, optional
        ``(a_full, n_full)`` for every entry of the block, when the whole block
        was swept (needed for ``transpose``).
    """
    a, n = block.analytic, block.numeric
    d = a - n
    name = block.name
    out: list[Finding] = []
    if len(a) == 0 or not np.any(d):
        return out
    if block.size >= 20 and 0 < block.n_bad <= max(3, 0.01 * block.size):
        bad_local = [
            tuple(int(i) for i in np.unravel_index(int(k), block.shape))
            for k in block.indices[np.abs(d) > block.tolerance][:5]
        ]
        out.append(
            Finding(
                "sparse_error",
                name,
                f"only {block.n_bad} of the {block.size} entries of {name} are wrong "
                f"(at {', '.join(map(str, bad_local))}); the rest agree. Look for an indexing, "
                "slicing or broadcasting mistake that touches just those entries.",
                {"entries": bad_local, "n_bad": block.n_bad},
            )
        )
        return out
    na, nn = float(np.linalg.norm(a)), float(np.linalg.norm(n))
    if na <= 1e-12 * nn:
        out.append(
            Finding(
                "zero_gradient",
                name,
                f"the analytic gradient of {name} is zero but the loss does change with {name} "
                f"(numerical gradient norm {nn:.3g}). The gradient is detached or never computed: "
                "look for a missing backward term, a .detach()/stop_gradient, an in-place "
                "overwrite, or a gradient that is not accumulated.",
                {"numeric_norm": nn},
            )
        )
        return out
    if nn > 0:
        c = float(a @ n) / float(n @ n)
        if _fits(a - c * n, d):
            if abs(c + 1) <= 1e-3:
                out.append(
                    Finding(
                        "sign",
                        name,
                        f"the gradient of {name} has the wrong sign (analytic = -1 x numerical). "
                        "Look for a subtraction written the wrong way round, or a loss that is "
                        "maximised where it should be minimised.",
                        {"factor": c},
                    )
                )
            else:
                nice = nice_number(c)
                hint = ""
                if abs(c) > 1.5 and abs(c - round(c)) < 1e-3 * abs(c):
                    hint = " A whole-number factor often means an extra multiplication or a sum where a mean was meant."
                elif abs(c) < 0.75:
                    hint = f" A factor 1/{nice_number(1 / c)} often means a division by the batch size (or a 1/2) too many."
                out.append(
                    Finding(
                        "scale",
                        name,
                        f"the gradient of {name} is {nice} times the numerical gradient: the "
                        f"backward pass multiplies it by {nice} somewhere.{hint} Remove the "
                        "factor from the gradient of this parameter.",
                        {"factor": c, "factor_text": nice},
                    )
                )
            return out
    if full is not None and len(block.shape) == 2 and block.shape[0] > 1 and block.shape[1] > 1:
        af, nf = full
        p, q = block.shape
        swapped = nf.reshape(p, q).T.reshape(-1)  # what a transposed layout would hold
        if _fits(af - swapped, af - nf):
            out.append(
                Finding(
                    "transpose",
                    name,
                    f"the gradient of {name} holds the right numbers in transposed order: it "
                    f"was computed as a ({q}, {p}) array and reshaped instead of transposed. Use "
                    ".T (or swap the operands of the matrix product) rather than reshape.",
                    {},
                )
            )
            return out
    if np.any(x):
        # a missing term proportional to the parameter: fit on the entries that disagree
        tol = block.tolerance
        off = np.abs(d) > tol
        if off.sum() >= 2 and np.any(x[off]):
            xs, ds = x[off], d[off]
            lam = -float(ds @ xs) / float(xs @ xs)
            if lam != 0 and _fits(ds + lam * xs, ds):
                share = "" if off.all() else f" on {int(off.sum())} of {len(off)} checked entries"
                word = "misses" if lam > 0 else "has an extra"
                out.append(
                    Finding(
                        "missing_term",
                        name,
                        f"the gradient of {name} {word} a term proportional to {name} itself "
                        f"(coefficient {abs(lam):.4g}){share}: the analytic gradient equals the numerical "
                        f"one {'minus' if lam > 0 else 'plus'} {abs(lam):.4g} x {name}. This is the "
                        "signature of a regularisation (weight decay) term left out of the backward "
                        "pass, or added twice: add its derivative, lambda/m x W.",
                        {"coefficient": lam, "entries": int(off.sum())},
                    )
                )
                return out
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
