"""Figures of a gradient check (needs matplotlib: ``pip install 'gradcheck-core[plot]'``).

* :func:`plot_report` (``gc.plot_report(report, path)``): the relative error
  of every parameter against its tolerance on a log scale, and for failing
  parameters a heat map that shows *which* entries are off and by how much.
* :func:`step_curve` / :func:`step_errors`: the error of a central difference
  against the step size for one coordinate.  The curve is V-shaped: on the
  right the truncation error grows like ``h**2``, on the left the round-off
  of the loss grows like ``noise / h``.  The bottom of the V is the best a
  finite difference can do: around ``1e-6`` for a float32 loss, ``1e-11``
  for a float64 one (iris softmax regression: 9e-7 and 1e-11), and a wrong gradient has no V at all (the
  error never drops below the size of the mistake).

Figures are built with ``matplotlib.figure.Figure`` and saved with the Agg
canvas, so nothing here touches pyplot's global state or needs a display.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import differences as fd
from .adapters import detect
from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .report import BlockResult, Report

__all__ = ["StepCurve", "plot_errors", "plot_heatmap", "plot_report", "step_curve", "step_errors"]

_COLOUR = {"fail": "#d62728", "inconclusive": "#ff9f1c", "pass": "#2ca02c"}
_FLOOR = 1e-17  # exact agreement drawn at this height on the log axis


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(
            "plotting needs matplotlib, which is not installed: pip install 'gradcheck-core[plot]'"
        ) from exc
    return matplotlib


def _new_figure(figsize: tuple[float, float]) -> Figure:
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Any, dpi: int) -> None:
    fig.savefig(path, dpi=dpi, bbox_inches="tight")


# ----------------------------------------------------------------------------- report


def _block_tolerance(b: BlockResult) -> float:
    """The block's tolerance on the scale of its relative error.

    Every entry passes when ``|a_i - n_i| <= tol_i``; then
    ``||a - n|| <= ||tol||``, so a block whose relative error
    ``||a - n|| / (||a|| + ||n||)`` exceeds ``||tol|| / (||a|| + ||n||)``
    cannot pass.  That ratio is drawn next to the bar.
    """
    if b.checked_by != "coordinates":  # the relative error is one of directional derivatives
        return float("nan")
    denom = float(np.linalg.norm(b.analytic) + np.linalg.norm(b.numeric))
    if denom == 0 or len(b.tolerance) == 0:
        return float("nan")
    return float(np.linalg.norm(b.tolerance)) / denom


def plot_errors(report: Report, ax: Axes) -> None:
    """Bars: each parameter's relative error, with its tolerance, on a log axis.

    Parameters
    ----------
    report : Report
        The result of a check.
    ax : matplotlib.axes.Axes
        Where to draw.
    """
    names = [b.name for b in report.blocks]
    x = np.arange(len(names))
    heights = np.array(
        [max(b.rel_error, _FLOOR) if b.rel_error == b.rel_error else _FLOOR for b in report.blocks]
    )
    colours = [_COLOUR.get(b.verdict, "grey") for b in report.blocks]
    ax.bar(x, heights, color=colours, width=0.6, zorder=2)
    tols = np.array([_block_tolerance(b) for b in report.blocks])
    shown = np.isfinite(tols)
    if shown.any():
        ax.hlines(
            np.maximum(tols[shown], _FLOOR),
            x[shown] - 0.4,
            x[shown] + 0.4,
            colors="black",
            linewidth=2.2,
            zorder=3,
            label="tolerance of the parameter",
        )
    ax.axhline(1e-7, color="grey", linestyle=":", linewidth=1, zorder=1, label="the usual 1e-7 rule of thumb")
    for xi, h, b in zip(x, heights, report.blocks):
        ax.annotate(
            f"{b.rel_error:.1e}" if b.rel_error > 0 else "0",
            (xi, h),
            textcoords="offset points",
            xytext=(0, 3),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_yscale("log")
    low = min(float(heights.min()), float(np.nanmin(tols)) if shown.any() else 1.0, 1e-7)
    high = max(float(heights.max()), float(np.nanmax(tols)) if shown.any() else 1e-7, 1e-7)
    ax.set_ylim(low / 10, min(high * 30, 1e3))
    ax.set_xticks(x)
    rotate = len(names) > 6 or max((len(n) for n in names), default=0) > 10
    ax.set_xticklabels(names, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_ylabel("relative error  ||a - n|| / (||a|| + ||n||)")
    pad = max(0.0, (3 - len(names)) / 2)
    ax.set_xlim(-0.6 - pad, len(names) - 0.4 + pad)
    ax.grid(axis="y", which="major", alpha=0.3, zorder=0)
    from matplotlib.patches import Patch

    handles, labels = ax.get_legend_handles_labels()
    for verdict in ("fail", "inconclusive", "pass"):
        if any(b.verdict == verdict for b in report.blocks):
            handles.append(Patch(color=_COLOUR[verdict]))
            labels.append(verdict)
    ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.set_title(
        f"gradient check: {report.verdict.upper()}  (rel_error {report.rel_error:.2e}, "
        f"{report.framework}, {report.method} differences)",
        fontsize=11,
    )


def _grid(b: BlockResult) -> np.ndarray:
    """``log10(|a - n| / tolerance)`` at the checked entries, NaN elsewhere, as 2-D."""
    values = np.full(b.size, np.nan)
    ratio = np.abs(b.analytic - b.numeric) / np.maximum(b.tolerance, 1e-300)
    values[b.indices] = np.log10(np.maximum(ratio, 1e-6))
    shape = b.shape
    if len(shape) == 0:
        return values.reshape(1, 1)
    if len(shape) == 1:
        return values.reshape(1, shape[0])
    return values.reshape(shape[0], -1)


def plot_heatmap(block: BlockResult, ax: Axes, findings: Sequence[str] = ()) -> Any:
    """Per-entry error of one parameter, relative to its tolerance.

    Blue entries are within tolerance, red ones are off (the colour is
    ``log10(|analytic - numeric| / tolerance)``, so 0 is the pass line and 2
    means a hundred times too far off).  Entries that were not checked are
    grey.

    Parameters
    ----------
    block : BlockResult
        One parameter of a report (checked coordinate by coordinate).
    ax : matplotlib.axes.Axes
        Where to draw.
    findings : sequence of str
        Short descriptions of the findings about this parameter, for the title.

    Returns
    -------
    matplotlib.image.AxesImage
        The image (for a colour bar).
    """
    import matplotlib
    from matplotlib.colors import TwoSlopeNorm

    grid = _grid(block)
    finite = grid[np.isfinite(grid)]
    lo = min(float(finite.min()) if finite.size else -1.0, -1.0)
    hi = max(float(finite.max()) if finite.size else 1.0, 1.0)
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#d9d9d9")
    image = ax.imshow(
        np.ma.masked_invalid(grid),
        cmap=cmap,
        norm=TwoSlopeNorm(vcenter=0.0, vmin=lo, vmax=hi),
        aspect="auto",
        interpolation="nearest",
    )
    from matplotlib.ticker import MaxNLocator

    rows, cols = grid.shape
    for axis, count in ((ax.xaxis, cols), (ax.yaxis, rows)):
        if count <= 12:
            axis.set_ticks(range(count))
        else:
            axis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    if len(block.shape) == 1:
        ax.set_yticks([])
        ax.set_xlabel("index")
    else:
        ax.set_ylabel("row (axis 0)")
        ax.set_xlabel("column" if len(block.shape) == 2 else "other axes, flattened")
    if block.worst_index is not None and block.verdict == "fail":
        w = block.worst_index
        if len(block.shape) == 1:
            r, c = 0, w[0]
        elif len(block.shape) >= 2:
            r, c = w[0], int(np.ravel_multi_index(w[1:], block.shape[1:]))
        else:
            r, c = 0, 0
        ax.plot(
            [c],
            [r],
            marker="s",
            markersize=9,
            markerfacecolor="none",
            markeredgecolor="black",
            markeredgewidth=1.5,
        )
    if block.checked_by == "coordinates":
        what = f"{block.n_bad} of {block.n_checked} checked entries off"
    else:
        what = f"{len(block.indices)} entries located by fast mode, {block.n_bad} off"
    unchecked = block.size - len(block.indices)
    if unchecked > 0:
        what += f", {unchecked} not checked (grey)"
    title = f"{block.name} {tuple(block.shape)}\n{what}"
    if findings:
        title += "\n" + ", ".join(findings)
    ax.set_title(title, fontsize=9)
    return image


def _finding_label(f: Any) -> str:
    """A short label for a finding: ``scale x2``, ``missing_term (0.0017 x W)``."""
    if f.kind == "scale" and "factor_text" in f.detail:
        return f"finding: scale, x {f.detail['factor_text']}"
    if f.kind == "missing_term" and "coefficient" in f.detail:
        return f"finding: missing term {abs(f.detail['coefficient']):.3g} x {f.block}"
    return f"finding: {f.kind}"


def plot_report(
    report: Report,
    path: Any = None,
    *,
    max_heatmaps: int = 3,
    dpi: int = 110,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Draw a report: error bars per parameter, heat maps for failing ones.

    Parameters
    ----------
    report : Report
        The result of a check.
    path : str or path-like, optional
        Save the figure there (PNG, SVG, PDF by extension).
    max_heatmaps : int
        At most this many failing parameters get a heat map (the ones with
        most wrong entries first).
    dpi : int
        Resolution of the saved file.
    figsize : (float, float), optional
        Figure size in inches (default: from the number of panels).

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not report.blocks:
        raise InputError("the report has no parameters to draw.")
    failing = [b for b in report.blocks if b.verdict == "fail" and len(b.indices) > 0]
    failing.sort(key=lambda b: -b.n_bad)
    failing = failing[: max(0, int(max_heatmaps))]
    n_maps = len(failing)
    width = min(max(6.5, 1.1 * len(report.blocks) + 2.5), 18.0)
    if n_maps:
        width = max(width, 4.6 * n_maps)
    height = 4.2 + (3.8 if n_maps else 0.0)
    fig = _new_figure(figsize or (width, height))
    if n_maps:
        gs = fig.add_gridspec(2, n_maps, height_ratios=[1.0, 0.95], hspace=0.42, wspace=0.35)
        ax = fig.add_subplot(gs[0, :])
    else:
        ax = fig.add_subplot(1, 1, 1)
    plot_errors(report, ax)
    for k, b in enumerate(failing):
        hax = fig.add_subplot(gs[1, k])
        kinds = [_finding_label(f) for f in report.findings if f.block == b.name]
        image = plot_heatmap(b, hax, kinds)
        bar = fig.colorbar(image, ax=hax, fraction=0.08, pad=0.03)
        bar.set_label("log10(|a - n| / tolerance)\n> 0: outside tolerance", fontsize=8)
        bar.ax.axhline(0.0, color="black", linewidth=1)
        bar.ax.tick_params(labelsize=7)
    if path is not None:
        _save(fig, path, dpi)
    return fig


# ----------------------------------------------------------------------------- step size


@dataclass
class StepCurve:
    """Central-difference error against step size for one coordinate.

    Attributes
    ----------
    coordinate : str
        Which entry, e.g. ``"W[0, 2]"``.
    steps : numpy.ndarray
        Relative steps ``h`` (the coordinate moves by ``h * max(1, |x|)``).
    reference : float
        The derivative the estimates are compared with.
    reference_source : str
        ``"your gradient"``, ``"autodiff"`` or ``"Richardson, float64"``.
    estimates, errors : dict of str to numpy.ndarray
        Per curve (one per loss precision): the central differences and their
        relative errors ``|d(h) - reference| / |reference|``.
    dtypes : dict of str to str
        The dtype each curve's loss returned.
    chosen : dict of str to float
        The relative step the check would take for that curve (from the
        measured noise of the loss).
    noise : dict of str to float
        The measured noise of the loss.
    """

    coordinate: str
    steps: np.ndarray
    reference: float
    reference_source: str
    estimates: dict[str, np.ndarray] = field(default_factory=dict)
    errors: dict[str, np.ndarray] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    chosen: dict[str, float] = field(default_factory=dict)
    noise: dict[str, float] = field(default_factory=dict)

    def best(self, label: str) -> tuple[float, float]:
        """``(step, error)`` at the bottom of the V of curve ``label``."""
        err = self.errors[label]
        k = int(np.nanargmin(err))
        return float(self.steps[k]), float(err[k])

    def is_flat(self, label: str) -> bool:
        """Whether curve ``label`` has no V: the error is about the same at every step.

        Then the derivative compared with is off by that much whatever the step
        (a wrong gradient), and no step is "best".
        """
        err = self.errors[label]
        err = err[np.isfinite(err)]
        return bool(len(err)) and float(err.min()) >= 0.25 * float(np.median(err))


def _coordinate(flat: Any, param: str | None, index: Any, g: np.ndarray | None) -> int:
    names = [leaf.name for leaf in flat.leaves]
    if param is not None and param not in names:
        raise InputError(f"param={param!r} is not a parameter name; the names are {names}.")
    leaves = [flat.leaves[names.index(param)]] if param is not None else list(flat.leaves)
    if index is None:
        if g is None:
            return leaves[0].offset
        best, where = -1.0, leaves[0].offset
        for leaf in leaves:
            part = np.abs(g[leaf.slice])
            if part.size and float(part.max()) > best:
                best, where = float(part.max()), leaf.offset + int(np.argmax(part))
        return where
    leaf = leaves[0]
    if isinstance(index, (int, np.integer)):
        k = int(index)
        if not 0 <= k < leaf.size:
            raise InputError(f"index={index} is outside {leaf.name}, which has {leaf.size} entries.")
        return leaf.offset + k
    try:
        k = int(np.ravel_multi_index(tuple(int(i) for i in index), leaf.shape))
    except (TypeError, ValueError) as exc:
        raise InputError(f"index={index!r} is not an index into {leaf.name} of shape {leaf.shape}.") from exc
    return leaf.offset + k


def _label_of(flat: Any, i: int) -> str:
    b, local = flat.block_of(i)
    name = flat.leaves[b].name
    return f"{name}[{', '.join(map(str, local))}]" if local else name


def step_errors(
    loss: Callable[..., Any] | Mapping[str, Callable[..., Any]],
    params: Any,
    grad: Any = None,
    *,
    param: str | None = None,
    index: int | Sequence[int] | None = None,
    steps: Sequence[float] | None = None,
    seed: int = 0,
) -> StepCurve:
    """Measure the error of central differences against the step size.

    Parameters
    ----------
    loss : callable or mapping of label to callable
        The loss, as for :func:`gradcheck_core.check`.  One loss is evaluated
        twice, with ``float64=True`` and ``float64=False`` (the framework's own
        precision, e.g. float32 for a default Keras model); when both return the
        same values only one curve is kept.  A mapping such as
        ``{"float32": loss32, "float64": loss64}`` gives one curve per entry.
    params : parameters
        As for :func:`gradcheck_core.check`.
    grad : callable or values, optional
        The gradient to compare with (default: the framework's autodiff; for
        numpy without ``grad``, a Richardson estimate from the most precise
        curve).
    param : str, optional
        The parameter (by name) whose entry is probed.
    index : int or tuple of int, optional
        The entry of that parameter (flat or multi-index).  Default: the entry
        with the largest gradient.
    steps : sequence of float, optional
        Relative steps (default: 49 steps from 1e-13 to 1e-1).
    seed : int
        Seed of the noise probe.

    Returns
    -------
    StepCurve
    """
    from .counted_loss import LossFunction

    steps_arr = np.asarray(steps if steps is not None else np.logspace(-13, -1, 49), dtype=np.float64)
    if steps_arr.ndim != 1 or not len(steps_arr) or np.any(steps_arr <= 0):
        raise InputError(
            "steps= must be a non-empty sequence of positive relative steps, e.g. np.logspace(-12, -1, 45)."
        )
    if isinstance(loss, Mapping):
        if not loss:
            raise InputError("loss= is an empty mapping; give at least one labelled loss.")
        runs = [(str(label), fn, True) for label, fn in loss.items()]
    else:
        runs = [("float64=True", loss, True), ("float64=False", loss, False)]
    adapter = detect(params)

    coordinate: int | None = None
    reference: float | None = None
    source = ""
    results: list[tuple[str, np.ndarray, str, float, float]] = []
    for label, fn, f64 in runs:
        with adapter.target(fn, params, float64=f64) as target:
            fun = LossFunction(target, adapter)
            try:
                flat = target.flat
                x0 = flat.x0
                f0 = fun(x0)
                if coordinate is None:
                    g = None
                    if grad is not None:
                        value = target.call_grad(grad) if callable(grad) else grad
                        g, source = adapter.gradient_vector(value, flat), "your gradient"
                    elif target.gradient is not None:
                        g, source = np.asarray(target.gradient(), dtype=np.float64).reshape(-1), "autodiff"
                    coordinate = _coordinate(flat, param, index, g)
                    if g is not None:
                        reference = float(g[coordinate])
                noise, _ = fd.estimate_noise(fun, x0, f0, np.random.default_rng(seed))
                xi = x0[coordinate : coordinate + 1]
                values = np.empty(len(steps_arr))
                for k, rel in enumerate(steps_arr):
                    hp = float(fd.taken_steps(xi, float(rel))[0])
                    hm = float(xi[0] - (xi[0] - hp))
                    xp, xm = x0.copy(), x0.copy()
                    xp[coordinate] += hp
                    xm[coordinate] -= hm
                    values[k] = (fun(xp) - fun(xm)) / (hp + hm) if hp + hm != 0 else np.nan
                noise_rel = noise / abs(f0) if f0 else fd.EPS
                chosen = fd.relative_step("central", noise_rel)
                if reference is None and f64:
                    ref = fd.refine(
                        fun,
                        x0,
                        coordinate,
                        f0,
                        rel_step=fd.relative_step("richardson", noise_rel),
                        noise=noise,
                    )
                    reference, source = ref.value, f"Richardson, {fun.out_dtype or 'float64'} loss"
                results.append((label, values, fun.out_dtype or "float64", chosen, noise))
                coord_label = _label_of(flat, coordinate)
            finally:
                fun.restore_rngs()
    if reference is None:  # only float64=False curves and no gradient: use the first
        reference = float(results[0][1][np.argmin(np.abs(np.log10(steps_arr) + 5))])
        source = "central difference at step 1e-5"
    # A single loss whose precision did not change: keep one curve.
    if not isinstance(loss, Mapping) and len(results) == 2 and np.array_equal(results[0][1], results[1][1]):
        results = results[:1]
    curve = StepCurve(coord_label, steps_arr, float(reference), source)
    for label, values, dtype, chosen, noise in results:
        name = label if isinstance(loss, Mapping) else f"{dtype} loss"
        if name in curve.estimates:
            name = f"{name} ({label})"
        curve.estimates[name] = values
        denom = abs(reference) if reference else 1.0
        curve.errors[name] = np.abs(values - reference) / denom
        curve.dtypes[name] = dtype
        curve.chosen[name] = chosen
        curve.noise[name] = noise
    return curve


def plot_step_curve(curve: StepCurve, ax: Axes) -> None:
    """Draw a :class:`StepCurve` on log-log axes.

    Each curve gets its best point (the bottom of the V, a star) and the step
    the check would take for that loss (a dashed line of the same colour);
    a dotted grey line marks the customary step 1e-7.
    """
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b"]
    for k, (label, err) in enumerate(curve.errors.items()):
        c = colours[k % len(colours)]
        h, e = curve.best(label)
        flat = curve.is_flat(label)
        text = (
            f"{label}: about {np.nanmedian(err):.2g} at every step (the derivative is off, not the step)"
            if flat
            else f"{label}: best {e:.1e} at h = {h:.0e}"
        )
        ax.loglog(
            curve.steps,
            np.maximum(err, _FLOOR),
            marker="o",
            markersize=3,
            linewidth=1.4,
            color=c,
            label=text,
        )
        if not flat:  # a flat line has no bottom worth a star
            ax.plot(
                [h], [max(e, _FLOOR)], marker="*", markersize=13, color=c, markeredgecolor="black", zorder=5
            )
        ax.axvline(
            curve.chosen[label],
            color=c,
            linestyle="--",
            linewidth=1.2,
            label=f"step the check takes for it: {curve.chosen[label]:.1e}",
        )
    # At least four decades on the error axis: autoscaling a flat error of 0.5
    # to 0.4988-0.5002 would draw its round-off wiggle as a deep V.
    values = np.concatenate([np.maximum(e[np.isfinite(e)], _FLOOR) for e in curve.errors.values()])
    if values.size:
        lo, hi = float(values.min()), float(values.max())
        mid = np.sqrt(lo * hi)
        if hi / lo < 1e4:
            lo, hi = mid / 100, mid * 100
        ax.set_ylim(max(lo / 3, _FLOOR / 3), hi * 3)
    ax.axvline(1e-7, color="grey", linestyle=":", linewidth=1.2, label="h = 1e-7, the customary step")
    ax.set_xlabel("relative step h  (the entry moves by h * max(1, |x|))")
    ax.set_ylabel("relative error of the central difference")
    ax.grid(which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    ax.set_title(
        f"error against step size at {curve.coordinate}\n"
        f"(derivative {curve.reference:.6g}, from {curve.reference_source})",
        fontsize=10,
    )


def step_curve(
    loss: Callable[..., Any] | Mapping[str, Callable[..., Any]],
    params: Any,
    grad: Any = None,
    *,
    path: Any = None,
    param: str | None = None,
    index: int | Sequence[int] | None = None,
    steps: Sequence[float] | None = None,
    seed: int = 0,
    dpi: int = 110,
) -> Figure:
    """Plot the V-shaped error-against-step curve of one coordinate.

    Takes the arguments of :func:`step_errors` (which does the measuring) and
    draws its result; ``path`` saves the figure.

    Returns
    -------
    matplotlib.figure.Figure
        ``fig.step_curve`` holds the measured :class:`StepCurve`.
    """
    _matplotlib()
    curve = step_errors(loss, params, grad, param=param, index=index, steps=steps, seed=seed)
    fig: Any = _new_figure((11.0, 4.8))  # carries the curve as an extra attribute
    ax = fig.add_subplot(1, 1, 1)
    plot_step_curve(curve, ax)
    fig.step_curve = curve
    if path is not None:
        _save(fig, path, dpi)
    return fig
