"""One model in several frameworks: values and gradients side by side.

``gc.compare({"torch": (loss, params), "keras": (loss, params)})`` takes the
parameter values of the first candidate, loads them into the others (in
float64, converted to each framework's layout), evaluates every loss and its
gradient, and reports the loss difference and, per parameter, the gradient
difference under both frameworks' names.

Parameters are matched by order, by an explicit ``mapping``, or by shape.
Layout differences are recognised: a torch ``Linear`` weight ``(out, in)``
against a Keras ``Dense`` kernel or a JAX matrix ``(in, out)``; convolution
kernels OIHW (torch) against HWIO (Keras, JAX).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .adapters import detect
from .errors import CheckFailed, InputError
from .flatten import Flat, Leaf
from .table import fixed_width, html_document, html_table

__all__ = ["Comparison", "ParameterRow", "compare"]

# Layout of the other candidate's array, as a permutation of the reference's axes.
IDENTITY = "same"
TRANSPOSED = "transposed"
OIHW_TO_HWIO = "OIHW->HWIO"
HWIO_TO_OIHW = "HWIO->OIHW"
_OIHW_TO_HWIO = (2, 3, 1, 0)
_HWIO_TO_OIHW = (3, 2, 0, 1)
_PERMS: dict[str, tuple[int, ...] | None] = {
    IDENTITY: None,
    TRANSPOSED: (1, 0),
    OIHW_TO_HWIO: _OIHW_TO_HWIO,
    HWIO_TO_OIHW: _HWIO_TO_OIHW,
}


@dataclass
class ParameterRow:
    """One matched parameter: the reference's and the other candidate's view of it."""

    candidate: str
    reference_name: str
    name: str
    shape: tuple[int, ...]
    other_shape: tuple[int, ...]
    layout: str
    rel_error: float
    max_abs_error: float
    passed: bool
    worst_index: tuple[int, ...] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "reference_name": self.reference_name,
            "name": self.name,
            "shape": list(self.shape),
            "other_shape": list(self.other_shape),
            "layout": self.layout,
            "rel_error": self.rel_error,
            "max_abs_error": self.max_abs_error,
            "passed": self.passed,
            "worst_index": None if self.worst_index is None else list(self.worst_index),
        }


@dataclass
class Comparison:
    """The result of :func:`compare`.

    Attributes
    ----------
    passed : bool
        Every loss value and every gradient agrees with the reference.
    reference : str
        The candidate whose parameter values were used everywhere.
    loss_values : dict
        Loss value per candidate, at the same parameter values.
    loss_rel_diff : dict
        Relative difference of each other candidate's loss from the reference's.
    rows : list of ParameterRow
        One row per matched parameter and other candidate.
    messages : list of str
        What differs, in words.
    """

    passed: bool
    reference: str
    loss_values: dict[str, float]
    loss_rel_diff: dict[str, float]
    rows: list[ParameterRow]
    messages: list[str] = field(default_factory=list)
    rtol: float = 0.0
    loss_rtol: float = 0.0

    def __bool__(self) -> bool:
        return self.passed

    def failed(self) -> list[ParameterRow]:
        return [r for r in self.rows if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reference": self.reference,
            "loss_values": self.loss_values,
            "loss_rel_diff": self.loss_rel_diff,
            "rows": [r.to_dict() for r in self.rows],
            "messages": list(self.messages),
            "rtol": self.rtol,
            "loss_rtol": self.loss_rtol,
        }

    def to_json(self, **kwargs: Any) -> str:
        kwargs.setdefault("indent", 2)
        return json.dumps(self.to_dict(), **kwargs)

    def raise_if_failed(self) -> Comparison:
        """Raise :class:`GradcheckError` with the table unless everything agrees."""
        if not self.passed:
            raise CheckFailed("frameworks disagree\n" + str(self), self)
        return self

    def _table(self) -> tuple[list[str], list[list[str]], list[str]]:
        """Header, rows (differing ones first) and each row's verdict."""
        header = [
            "",
            "candidate",
            f"{self.reference} name",
            "name",
            "shape",
            "layout",
            "rel error",
            "max abs err",
        ]
        ordered = sorted(self.rows, key=lambda r: r.passed)
        rows = [
            [
                "ok" if r.passed else "DIFF",
                r.candidate,
                r.reference_name,
                r.name,
                str(r.shape),
                r.layout,
                f"{r.rel_error:.2e}",
                f"{r.max_abs_error:.2e}",
            ]
            for r in ordered
        ]
        return header, rows, ["pass" if r.passed else "fail" for r in ordered]

    def _repr_html_(self) -> str:
        """The loss values, the table and the messages of ``str(comparison)`` as HTML, for Jupyter."""
        losses = [
            f"loss {name}: {value:.12g}"
            + ("" if name == self.reference else f"  rel diff {self.loss_rel_diff[name]:.2e}")
            for name, value in self.loss_values.items()
        ]
        header, rows, verdicts = self._table()
        verdict = "pass" if self.passed else "fail"
        word = f"cross-framework comparison: {'AGREE' if self.passed else 'DIFFER'}"
        grid = html_table(header, rows, verdicts)
        return html_document(verdict, word, f" (reference: {self.reference})", grid, losses + self.messages)

    def __str__(self) -> str:
        lines = [
            f"cross-framework comparison: {'AGREE' if self.passed else 'DIFFER'} (reference: {self.reference})"
        ]
        lines.append("loss values:")
        for name, value in self.loss_values.items():
            diff = "" if name == self.reference else f"  rel diff {self.loss_rel_diff[name]:.2e}"
            lines.append(f"  {name:<12s} {value:.12g}{diff}")
        header, rows, _ = self._table()
        lines += fixed_width([header, *rows])
        lines += [f"- {m}" for m in self.messages]
        return "\n".join(lines)


def _layout_for(ref: Leaf, other: Leaf, forced: str | None = None) -> str:
    """How ``other`` stores ``ref``'s array; raises when the shapes cannot match."""
    if forced is not None:
        if forced not in _PERMS:
            raise InputError(f"layout {forced!r} for {ref.name!r} is not one of {', '.join(_PERMS)}.")
        return forced
    a, b = ref.shape, other.shape
    torch_like = (ref.name.endswith("weight"), other.name.endswith("weight"))
    keras_like = (ref.name.endswith("kernel"), other.name.endswith("kernel"))
    if len(a) == 2 and b == a[::-1] and a != b:
        return TRANSPOSED
    if (
        len(a) == 2
        and a == b
        and a[0] == a[1]
        and ((torch_like[0] and keras_like[1]) or (keras_like[0] and torch_like[1]))
    ):
        return TRANSPOSED  # square: only the names tell
    if len(a) == 4 and b == tuple(a[i] for i in _OIHW_TO_HWIO) and (a != b or torch_like[0]):
        return OIHW_TO_HWIO
    if len(a) == 4 and b == tuple(a[i] for i in _HWIO_TO_OIHW) and (a != b or keras_like[0]):
        return HWIO_TO_OIHW
    if a == b:
        return IDENTITY
    raise InputError(
        f"parameter {ref.name!r} {a} cannot be matched with {other.name!r} {b}: the shapes differ "
        "beyond a known layout change. Pass mapping= to pair the parameters explicitly."
    )


def _to_other(array: np.ndarray, layout: str) -> np.ndarray:
    perm = _PERMS[layout]
    return array if perm is None else np.transpose(array, perm)


def _to_reference(array: np.ndarray, layout: str) -> np.ndarray:
    perm = _PERMS[layout]
    return array if perm is None else np.transpose(array, np.argsort(perm))


def _describe(flat: Flat) -> str:
    return ", ".join(f"{leaf.name} {leaf.shape}" for leaf in flat.leaves)


def _leftovers(ref: Flat, other: Flat) -> tuple[list[Leaf], list[Leaf]]:
    """Leaves without a counterpart: pair equal names first, then equal sizes."""
    left_r, left_o = list(ref.leaves), list(other.leaves)
    for key in (
        lambda leaf: (leaf.name.rsplit(".", 1)[-1].rsplit("/", 1)[-1], leaf.size),
        lambda leaf: leaf.size,
    ):
        for r in list(left_r):
            match = next((o for o in left_o if key(o) == key(r)), None)
            if match is not None:
                left_r.remove(r)
                left_o.remove(match)
    return left_r, left_o


def _match(
    ref_name: str, ref: Flat, other_name: str, other: Flat, mapping: Mapping[str, Any] | None
) -> list[tuple[Leaf, Leaf, str]]:
    """Pairs (reference leaf, other leaf, layout)."""
    by_name = {leaf.name: leaf for leaf in other.leaves}
    if mapping:
        pairs = []
        for leaf in ref.leaves:
            if leaf.name not in mapping:
                raise InputError(
                    f"mapping for {other_name!r} has no entry for {ref_name} parameter {leaf.name!r}; "
                    f"map every parameter ({_describe(ref)})."
                )
            target = mapping[leaf.name]
            name, forced = (target, None) if isinstance(target, str) else (target[0], target[1])
            if name not in by_name:
                raise InputError(
                    f"mapping sends {leaf.name!r} to {name!r}, which {other_name} does not have; "
                    f"it has {', '.join(by_name)}."
                )
            pairs.append((leaf, by_name[name], _layout_for(leaf, by_name[name], forced)))
        return pairs
    if len(ref.leaves) != len(other.leaves) or ref.n != other.n:
        extra_r, extra_o = _leftovers(ref, other)
        unmatched = [f"{ref_name}:{leaf.name} {leaf.shape}" for leaf in extra_r] + [
            f"{other_name}:{leaf.name} {leaf.shape}" for leaf in extra_o
        ]
        raise InputError(
            f"{ref_name} has {len(ref.leaves)} parameters ({ref.n} values) and {other_name} has "
            f"{len(other.leaves)} ({other.n} values), so they cannot be matched"
            + (f"; without a counterpart: {', '.join(unmatched)}" if unmatched else "")
            + ". Did the port forget a parameter (a bias?) or add one? Use mapping= to pair them explicitly."
        )
    try:  # by order
        return [(r, o, _layout_for(r, o)) for r, o in zip(ref.leaves, other.leaves)]
    except InputError:
        pass
    # by shape: each reference leaf takes the first free leaf it can be laid out as
    free = list(other.leaves)
    pairs = []
    for r in ref.leaves:
        for o in free:
            try:
                layout = _layout_for(r, o)
            except InputError:
                continue
            pairs.append((r, o, layout))
            free.remove(o)
            break
        else:
            raise InputError(
                f"{ref_name} parameter {r.name!r} {r.shape} has no counterpart in {other_name} "
                f"({_describe(other)}), by order or by shape. Use mapping= to pair the parameters."
            )
    return pairs


def _scalar(adapter: Any, out: Any) -> tuple[float, str]:
    value = np.asarray(adapter.to_numpy(out))
    if value.size != 1:
        raise InputError(f"a loss returned shape {value.shape}, not a scalar; reduce it (mean or sum).")
    return float(value.reshape(()).astype(np.float64)), str(value.dtype)


# Tolerances for a candidate whose loss does not come out in float64.
LOW_PRECISION_RTOL = 1e-3
LOW_PRECISION_LOSS_RTOL = 1e-5
# An entry near zero inherits the round-off of the larger terms summed into it: it is
# judged against this many units in the last place of its tensor's largest entry as well.
ROUNDOFF_ULPS = 64


def _entry_floor(a: np.ndarray, b: np.ndarray, low: bool) -> float:
    if a.size == 0:
        return 0.0
    eps = float(np.finfo(np.float32 if low else np.float64).eps)
    return ROUNDOFF_ULPS * eps * float(max(np.abs(a).max(), np.abs(b).max()))


def _low_precision_note(name: str, dtype: str, target: Any) -> str:
    why = "; ".join(target.precision) if target.precision else "the loss itself computes in that precision"
    return (
        f"{name}'s loss comes out as {dtype}, not float64 ({why}); it was compared at that precision "
        f"(gradients to a relative {LOW_PRECISION_RTOL:g}, the loss to {LOW_PRECISION_LOSS_RTOL:g}). "
        "Build its loss in float64 (a Keras loss with dtype='float64', say) for a full-precision comparison."
    )


def _gradient(target: Any, adapter: Any, grad: Any, x: np.ndarray, name: str) -> np.ndarray:
    if grad is None:
        if target.gradient is None:
            raise InputError(
                f"candidate {name!r} ({target.framework}) has no autodiff; give it a gradient: "
                "(loss, params, grad)."
            )
        try:
            vec = target.gradient(x)
        except TypeError as exc:
            raise InputError(
                f"the {target.framework} adapter cannot take gradients at other parameter values "
                f"({exc}); compare needs it."
            ) from exc
        return np.asarray(vec, dtype=np.float64).reshape(-1)
    value = target.call_grad(grad, x) if callable(grad) else grad
    return adapter.gradient_vector(value, target.flat)


def compare(
    candidates: Mapping[str, tuple[Any, ...]],
    *,
    mapping: Mapping[str, Any] | None = None,
    rtol: float = 1e-6,
    atol: float = 0.0,
    loss_rtol: float = 1e-9,
    float64: bool = True,
) -> Comparison:
    """Compare one model's loss and gradients across frameworks.

    Parameters
    ----------
    candidates : dict
        ``{"torch": (loss, params), "keras": (loss, params), ...}``; a third
        element is a handwritten gradient (needed for numpy).  The first
        candidate is the reference: its parameter values are loaded into the
        others.
    mapping : dict, optional
        Pairs parameters explicitly: ``{reference_name: other_name}`` (or
        ``{reference_name: (other_name, layout)}`` with layout ``"same"``,
        ``"transposed"``, ``"OIHW->HWIO"``, ``"HWIO->OIHW"``); with more than
        two candidates, one such dict per other candidate, keyed by its name.
    rtol, atol : float
        Per-entry tolerance on gradient differences. An entry also passes within
        64 units in the last place (of float64, or of float32 for a candidate that
        computes in float32) of its tensor's largest entry: the round-off that an
        entry near zero inherits from the larger terms summed into it.
    loss_rtol : float
        Relative tolerance on loss values.
    float64 : bool
        Evaluate every candidate in float64 where its framework allows.

    Returns
    -------
    Comparison
    """
    if not isinstance(candidates, Mapping) or len(candidates) < 2:
        raise InputError(
            "compare needs at least two candidates: {'torch': (loss, params), 'jax': (loss, params)}."
        )
    entries = {}
    for name, cand in candidates.items():
        if not isinstance(cand, (tuple, list)) or len(cand) not in (2, 3):
            raise InputError(f"candidate {name!r} must be (loss, params) or (loss, params, grad).")
        loss, params = cand[0], cand[1]
        entries[name] = (loss, params, cand[2] if len(cand) == 3 else None)
    names = list(entries)
    ref_name = names[0]
    with contextlib.ExitStack() as stack:
        targets = {}
        for name in names:
            loss, params, grad = entries[name]
            adapter = detect(params)
            targets[name] = (
                adapter,
                stack.enter_context(adapter.target(loss, params, float64=float64)),
                grad,
            )
        ref_adapter, ref_target, ref_grad = targets[ref_name]
        x_ref = ref_target.flat.x0
        ref_value, ref_dtype = _scalar(ref_adapter, ref_target.evaluate(x_ref))
        losses = {ref_name: ref_value}
        messages: list[str] = []
        ref_low = ref_dtype not in ("float64", "float128")
        if ref_low:
            messages.append(_low_precision_note(ref_name, ref_dtype, ref_target))
        g_ref = _gradient(ref_target, ref_adapter, ref_grad, x_ref, ref_name)
        rows: list[ParameterRow] = []
        rel_diff: dict[str, float] = {}
        limits: dict[str, float] = {}
        for name in names[1:]:
            adapter, target, grad = targets[name]
            own_map = mapping
            if mapping and len(names) > 2:
                own_map = mapping.get(name)
            pairs = _match(ref_name, ref_target.flat, name, target.flat, own_map)
            x = target.flat.x0.copy()
            for r, o, layout in pairs:
                x[o.slice] = _to_other(x_ref[r.slice].reshape(r.shape), layout).reshape(-1)
            losses[name], dtype = _scalar(adapter, target.evaluate(x))
            low = ref_low or dtype not in ("float64", "float128")
            if dtype not in ("float64", "float128"):
                messages.append(_low_precision_note(name, dtype, target))
            own_rtol = max(rtol, LOW_PRECISION_RTOL) if low else rtol
            limits[name] = max(loss_rtol, LOW_PRECISION_LOSS_RTOL) if low else loss_rtol
            scale = max(abs(losses[ref_name]), 1e-300)
            rel_diff[name] = abs(losses[name] - losses[ref_name]) / scale
            g = _gradient(target, adapter, grad, x, name)
            for r, o, layout in pairs:
                a = g_ref[r.slice].reshape(r.shape)
                b = _to_reference(g[o.slice].reshape(o.shape), layout)
                diff = np.abs(a - b)
                floor = atol + _entry_floor(a, b, low)
                ok_entries = diff <= floor + own_rtol * np.maximum(np.abs(a), np.abs(b))
                denom = np.linalg.norm(a) + np.linalg.norm(b)
                worst = (
                    tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), r.shape))
                    if diff.size
                    else None
                )
                rows.append(
                    ParameterRow(
                        candidate=name,
                        reference_name=r.name,
                        name=o.name,
                        shape=r.shape,
                        other_shape=o.shape,
                        layout=layout,
                        rel_error=float(np.linalg.norm(a - b) / denom) if denom > 0 else 0.0,
                        max_abs_error=float(diff.max()) if diff.size else 0.0,
                        passed=bool(ok_entries.all()),
                        worst_index=worst,
                    )
                )
            if rel_diff[name] > limits[name]:
                messages.append(
                    f"{name}'s loss differs from {ref_name}'s by a relative {rel_diff[name]:.2e} at the same "
                    "parameter values: the two compute different functions (an activation, a missing "
                    "term, a reduction, a layout loaded the wrong way)."
                )
            bad = [r for r in rows if r.candidate == name and not r.passed]
            if bad:
                messages.append(
                    f"{name}'s gradients differ for {', '.join(f'{r.reference_name} ({r.name})' for r in bad)}"
                    + (
                        "; the losses agree, so the backward pass differs"
                        if rel_diff[name] <= limits[name]
                        else ""
                    )
                    + "."
                )
    passed = all(r.passed for r in rows) and all(d <= limits[n] for n, d in rel_diff.items())
    return Comparison(
        passed=passed,
        reference=ref_name,
        loss_values=losses,
        loss_rel_diff=rel_diff,
        rows=rows,
        messages=messages,
        rtol=rtol,
        loss_rtol=loss_rtol,
    )
