"""Functions of jax.numpy, jax.nn, jax.scipy.special and jax.lax, checked by check_grads and by gc.

Every function gets inputs from a domain where it is smooth and well
conditioned (positive values for ``log``, symmetric positive definite matrices
for ``cholesky``, distinct values for ``sort`` and ``max``, values between
the stairs for ``floor``), in float64 and in float32.  Integer arguments
(indices, shifts) are constants of the function, so both tools check the same
function of its floating inputs at the same point.

* ``jax.test_util.check_grads(f, args, order=1, modes=("fwd", "rev"))`` with
  its default tolerances and step (one random direction per mode); a function
  JAX differentiates in forward mode only (``lax.while_loop``) is checked with
  ``modes=("fwd",)``.
* ``gc.check_function(f, *args)`` with its defaults.

Prints pass / fail / inconclusive / error per tool, the time and function
evaluations of each (``check_grads``: calls of ``f``; gc: ``report.nfev``),
and every sample where they disagree, with the reason.

Usage::

    python benchmarks/jax_functions.py                  # float64, then float32 (one process each)
    python benchmarks/jax_functions.py --dtype float64 --only "jnp.sort;jnp.cumsum"
    python benchmarks/jax_functions.py --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import jax.scipy.special as jss
import numpy as np
from jax import lax
from jax.test_util import check_grads

import gradcheck_core as gc
from gradcheck_core.adapters.jax import x64

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _table import Outcome, Row, SampleTimeout, disagreement_line, first_line, summary, time_limit

# -- input domains --------------------------------------------------------------------------


def _between_stairs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Values at least 0.2 away from every integer (and from every half-integer)."""
    return rng.integers(-3, 3, shape) + rng.uniform(0.2, 0.3, shape) * rng.choice([1, 2.4], shape)


def _distinct(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Values with gaps of at least 0.4 between any two: no ties for sort, max, median."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * 0.5 - n / 4 + rng.uniform(0, 0.1, n)).reshape(shape)


def _spd(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    a = rng.standard_normal(shape)
    return a @ a.T / shape[0] + np.eye(shape[0])


def _well_conditioned(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return 0.3 * rng.standard_normal(shape) + 2.0 * np.eye(shape[0])


def _distinct_eigenvalues(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A symmetric matrix with eigenvalues 1, 2, ..., n (well separated)."""
    q, _ = np.linalg.qr(rng.standard_normal(shape))
    return q @ np.diag(np.arange(1.0, shape[0] + 1)) @ q.T


def _distinct_singular_values(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    u, _ = np.linalg.qr(rng.standard_normal((shape[0], shape[0])))
    v, _ = np.linalg.qr(rng.standard_normal((shape[1], shape[1])))
    s = np.zeros(shape)
    k = min(shape)
    s[:k, :k] = np.diag(np.arange(1.0, k + 1))
    return u @ s @ v.T


def _upper(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return np.triu(0.3 * rng.standard_normal(shape)) + 2.0 * np.eye(shape[0])


DOMAINS: dict[str, Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]] = {
    "real": lambda rng, s: rng.standard_normal(s),
    "pos": lambda rng, s: rng.uniform(0.5, 2.0, s),
    "unit": lambda rng, s: rng.uniform(-0.9, 0.9, s),
    "prob": lambda rng, s: rng.uniform(0.1, 0.9, s),
    "gt1": lambda rng, s: rng.uniform(1.2, 3.0, s),
    "away": lambda rng, s: rng.uniform(0.3, 2.0, s) * rng.choice([-1.0, 1.0], s),
    "stairs": _between_stairs,
    "distinct": _distinct,
    "spd": _spd,
    "wellcond": _well_conditioned,
    "eigh": _distinct_eigenvalues,
    "svd": _distinct_singular_values,
    "upper": _upper,
    "complex": lambda rng, s: rng.standard_normal(s) + 1j * rng.standard_normal(s),
    "complex_away": lambda rng, s: rng.uniform(0.5, 2.0, s) * np.exp(1j * rng.uniform(-3, 3, s)),
}


@dataclass
class Case:
    """One function and the domains (and shapes) of its floating inputs."""

    name: str
    fn: Callable[..., Any]
    inputs: list[tuple[str, tuple[int, ...]]]
    modes: tuple[str, ...] = ("fwd", "rev")

    def arguments(self, dtype: str, seed: int) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        out = []
        for domain, shape in self.inputs:
            value = DOMAINS[domain](rng, shape)
            kind = {"float64": np.complex128, "float32": np.complex64} if np.iscomplexobj(value) else None
            out.append(np.asarray(value, dtype=kind[dtype] if kind else dtype))
        return out


S = (3, 4)
V = (6,)
M = (4, 4)


def _u(name: str, fn: Callable[..., Any], domain: str = "real", shape: tuple[int, ...] = S) -> Case:
    return Case(name, fn, [(domain, shape)])


def _b(
    name: str, fn: Callable[..., Any], d1: str = "real", d2: str = "real", shape: tuple[int, ...] = S
) -> Case:
    return Case(name, fn, [(d1, shape), (d2, shape)])


_IDX = np.array([2, 0, 3, 3, 1])
_PERM = np.array([[1, 0, 2, 3], [3, 2, 1, 0], [0, 1, 3, 2]])


def _scan_fn(x: jax.Array) -> jax.Array:
    def step(carry: jax.Array, xi: jax.Array) -> tuple[jax.Array, jax.Array]:
        carry = jnp.tanh(carry * 0.9 + xi)
        return carry, carry**2

    last, ys = lax.scan(step, jnp.zeros(x.shape[1:], x.dtype), x)
    return last, ys


def _while_fn(x: jax.Array) -> jax.Array:
    def body(state: tuple) -> tuple:
        i, v = state
        return i + 1, jnp.sin(v) * 1.1 + 0.1

    return lax.while_loop(lambda s: s[0] < 5, body, (0, x))[1]


def _cond_fn(x: jax.Array) -> jax.Array:
    return lax.cond(jnp.sum(x) > 0, lambda v: jnp.sin(v) * 2, lambda v: jnp.cos(v), x)


def _switch_fn(x: jax.Array) -> jax.Array:
    return lax.switch(1, [jnp.sin, jnp.tanh, jnp.exp], x)


def _fori_fn(x: jax.Array) -> jax.Array:
    return lax.fori_loop(0, 4, lambda i, v: v * jnp.cos(v) + i * 0.1, x)


def _conv(x: jax.Array, w: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(x, w, (1, 1), "SAME")


CASES: list[Case] = [
    # -- jax.numpy elementwise
    _u("jnp.sin", jnp.sin),
    _u("jnp.cos", jnp.cos),
    _u("jnp.tan", jnp.tan, "unit"),
    _u("jnp.arcsin", jnp.arcsin, "unit"),
    _u("jnp.arccos", jnp.arccos, "unit"),
    _u("jnp.arctan", jnp.arctan),
    _u("jnp.sinh", jnp.sinh),
    _u("jnp.cosh", jnp.cosh),
    _u("jnp.tanh", jnp.tanh),
    _u("jnp.arcsinh", jnp.arcsinh),
    _u("jnp.arccosh", jnp.arccosh, "gt1"),
    _u("jnp.arctanh", jnp.arctanh, "unit"),
    _u("jnp.exp", jnp.exp),
    _u("jnp.exp2", jnp.exp2),
    _u("jnp.expm1", jnp.expm1),
    _u("jnp.log", jnp.log, "pos"),
    _u("jnp.log2", jnp.log2, "pos"),
    _u("jnp.log10", jnp.log10, "pos"),
    _u("jnp.log1p", jnp.log1p, "pos"),
    _u("jnp.sqrt", jnp.sqrt, "pos"),
    _u("jnp.cbrt", jnp.cbrt, "pos"),
    _u("jnp.square", jnp.square),
    _u("jnp.reciprocal", jnp.reciprocal, "pos"),
    _u("jnp.negative", jnp.negative),
    _u("jnp.abs", jnp.abs, "away"),
    _u("jnp.sign", jnp.sign, "away"),
    _u("jnp.floor", jnp.floor, "stairs"),
    _u("jnp.ceil", jnp.ceil, "stairs"),
    _u("jnp.round", jnp.round, "stairs"),
    _u("jnp.trunc", jnp.trunc, "stairs"),
    _u("jnp.sinc", jnp.sinc, "away"),
    _u("jnp.deg2rad", jnp.deg2rad),
    _u("jnp.rad2deg", jnp.rad2deg),
    _u("jnp.i0", jnp.i0),
    _u("jnp.nan_to_num", jnp.nan_to_num),
    _u("jnp.clip", lambda x: jnp.clip(x, -0.5, 0.5), "away"),
    _u("jnp.power(x, 3)", lambda x: jnp.power(x, 3)),
    _u("jnp.power(x, 0.7)", lambda x: jnp.power(x, 0.7), "pos"),
    _u("jnp.heaviside", lambda x: jnp.heaviside(x, 0.5), "away"),
    _b("jnp.add", jnp.add),
    _b("jnp.subtract", jnp.subtract),
    _b("jnp.multiply", jnp.multiply),
    _b("jnp.divide", jnp.divide, "real", "pos"),
    _b("jnp.power", jnp.power, "pos", "real"),
    _b("jnp.float_power", jnp.float_power, "pos", "real"),
    _b("jnp.maximum", jnp.maximum, "distinct", "distinct"),
    _b("jnp.minimum", jnp.minimum, "distinct", "distinct"),
    _b("jnp.fmax", jnp.fmax, "distinct", "distinct"),
    _b("jnp.arctan2", jnp.arctan2, "away", "away"),
    _b("jnp.hypot", jnp.hypot, "away", "away"),
    _b("jnp.logaddexp", jnp.logaddexp),
    _b("jnp.logaddexp2", jnp.logaddexp2),
    _b("jnp.copysign", jnp.copysign, "away", "away"),
    _b("jnp.fmod", jnp.fmod, "pos", "gt1"),
    _b("jnp.remainder", jnp.remainder, "pos", "gt1"),
    _b("jnp.where", lambda a, b: jnp.where(a > 0, a * b, jnp.sin(b)), "away", "real"),
    # -- reductions and cumulative operations
    _u("jnp.sum", lambda x: jnp.sum(x, axis=0)),
    _u("jnp.prod", lambda x: jnp.prod(x, axis=1), "away"),
    _u("jnp.mean", jnp.mean),
    _u("jnp.var", lambda x: jnp.var(x, axis=1)),
    _u("jnp.std", lambda x: jnp.std(x, axis=0)),
    _u("jnp.max", lambda x: jnp.max(x, axis=1), "distinct"),
    _u("jnp.min", jnp.min, "distinct"),
    _u("jnp.ptp", lambda x: jnp.ptp(x, axis=0), "distinct"),
    _u("jnp.median", lambda x: jnp.median(x, axis=1), "distinct"),
    _u("jnp.average", lambda x: jnp.average(x, axis=0, weights=jnp.arange(1.0, 4.0))),
    _u("jnp.nansum", jnp.nansum),
    _u("jnp.nanmean", lambda x: jnp.nanmean(x, axis=1)),
    _u("jnp.linalg.norm", jnp.linalg.norm, "away"),
    _u("jnp.linalg.norm(ord=1)", lambda x: jnp.linalg.norm(x, ord=1, axis=1), "away"),
    _u("jnp.cumsum", lambda x: jnp.cumsum(x, axis=1)),
    _u("jnp.cumprod", lambda x: jnp.cumprod(x, axis=0), "away"),
    _u("jnp.diff", lambda x: jnp.diff(x, axis=1)),
    _u("jnp.trace", jnp.trace, "real", M),
    _u("jnp.sort", lambda x: jnp.sort(x, axis=1), "distinct"),
    _u("jnp.argsort-gather", lambda x: jnp.take_along_axis(x, jnp.argsort(x, axis=1), axis=1), "distinct"),
    _u("2.0 ** x", lambda x: 2.0**x),
    _u("lax.cumsum", lambda x: lax.cumsum(x, axis=0)),
    _u("lax.cumprod", lambda x: lax.cumprod(x, axis=1), "away"),
    _u("lax.cummax", lambda x: lax.cummax(x, axis=1), "distinct"),
    _u("lax.cummin", lambda x: lax.cummin(x, axis=0), "distinct"),
    _u("lax.cumlogsumexp", lambda x: lax.cumlogsumexp(x, axis=1)),
    _u("lax.reduce_max", lambda x: lax.reduce_max(x, axes=(0,)), "distinct"),
    _u("lax.top_k", lambda x: lax.top_k(x, 2), "distinct", V),
    _u("lax.top_k values", lambda x: lax.top_k(x, 2)[0], "distinct", V),
    _u("lax.sort", lambda x: lax.sort(x, dimension=0), "distinct"),
    _u("lax.associative_scan", lambda x: lax.associative_scan(jnp.add, x, axis=1)),
    # -- products and linear algebra
    _b("jnp.matmul", jnp.matmul, shape=M),
    _b("jnp.dot", jnp.dot, shape=M),
    _b("jnp.inner", jnp.inner),
    _b("jnp.outer", jnp.outer, shape=V),
    _b("jnp.vdot", jnp.vdot),
    _b("jnp.kron", jnp.kron, shape=(2, 3)),
    _b("jnp.tensordot", lambda a, b: jnp.tensordot(a, b, axes=([1], [1]))),
    _b("jnp.einsum", lambda a, b: jnp.einsum("ij,kj->ik", a, b)),
    _b("jnp.cross", jnp.cross, shape=(4, 3)),
    _b("lax.dot_general", lambda a, b: lax.dot_general(a, b, (((1,), (1,)), ((), ())))),
    _u("jnp.linalg.inv", jnp.linalg.inv, "wellcond", M),
    _u("jnp.linalg.det", jnp.linalg.det, "wellcond", M),
    _u("jnp.linalg.slogdet", jnp.linalg.slogdet, "wellcond", M),
    _u("jnp.linalg.slogdet logabsdet", lambda a: jnp.linalg.slogdet(a)[1], "wellcond", M),
    _u("jnp.linalg.cholesky", jnp.linalg.cholesky, "spd", M),
    _u("jnp.linalg.qr", jnp.linalg.qr, "wellcond", M),
    _u("jnp.linalg.eigh", jnp.linalg.eigh, "eigh", M),
    _u("jnp.linalg.eigvalsh", jnp.linalg.eigvalsh, "eigh", M),
    _u("jnp.linalg.svd singular values", lambda a: jnp.linalg.svd(a, compute_uv=False), "svd", (4, 3)),
    _u("jnp.linalg.pinv", jnp.linalg.pinv, "svd", (4, 3)),
    _u("jnp.linalg.matrix_power", lambda a: jnp.linalg.matrix_power(a, 3), "wellcond", M),
    _u("jnp.linalg.norm(fro)", lambda a: jnp.linalg.norm(a, "fro"), "real", M),
    _u("jnp.linalg.norm(2)", lambda a: jnp.linalg.norm(a, 2), "svd", M),
    _u("jsl.expm", jsl.expm, "unit", M),
    _u("sum of jnp.linalg.eigh eigenvalues", lambda a: jnp.linalg.eigh(a)[0].sum(), "eigh", M),
    Case("jnp.linalg.solve", jnp.linalg.solve, [("wellcond", M), ("real", (4, 2))]),
    Case("jnp.linalg.lstsq", lambda a, b: jnp.linalg.lstsq(a, b)[0], [("svd", (5, 3)), ("real", (5, 2))]),
    Case("jsl.solve_triangular", lambda a, b: jsl.solve_triangular(a, b), [("upper", M), ("real", (4, 2))]),
    Case(
        "jsl.cho_solve",
        lambda a, b: jsl.cho_solve(jsl.cho_factor((a + a.T) / 2), b),
        [("spd", M), ("real", (4, 2))],
    ),
    Case(
        "lax.linalg.triangular_solve",
        lambda a, b: lax.linalg.triangular_solve(a, b, left_side=True),
        [("upper", M), ("real", (4, 2))],
    ),
    Case("lax.conv_general_dilated", _conv, [("real", (1, 2, 5, 5)), ("real", (3, 2, 3, 3))]),
    # -- shapes, indexing, scatter
    _u("jnp.reshape", lambda x: jnp.reshape(x, (2, 6))),
    _u("jnp.transpose", jnp.transpose),
    _u("jnp.flip", jnp.flip),
    _u("jnp.roll", lambda x: jnp.roll(x, 2, axis=1)),
    _u("jnp.tile", lambda x: jnp.tile(x, (2, 1))),
    _u("jnp.repeat", lambda x: jnp.repeat(x, 2, axis=0)),
    _u("jnp.pad", lambda x: jnp.pad(x, ((1, 0), (2, 1)))),
    _u("jnp.pad(reflect)", lambda x: jnp.pad(x, 1, mode="reflect")),
    _u("jnp.tril", jnp.tril, "real", M),
    _u("jnp.triu", jnp.triu, "real", M),
    _u("jnp.diag", jnp.diag, "real", M),
    _u("jnp.diagonal", lambda x: jnp.diagonal(x, offset=1)),
    _u("jnp.moveaxis", lambda x: jnp.moveaxis(x[None], 0, 2)),
    _u("jnp.broadcast_to", lambda x: jnp.broadcast_to(x, (2, 3, 4))),
    _u("jnp.split", lambda x: tuple(jnp.split(x, 2, axis=1))),
    _u("jnp.take", lambda x: jnp.take(x, _IDX), "real", V),
    _u("jnp.take_along_axis", lambda x: jnp.take_along_axis(x, _PERM, axis=1)),
    _u("x[idx] (gather)", lambda x: x[_IDX[:3], 1:3], "real", (4, 4)),
    _u("x[mask]", lambda x: x[np.array([True, False, True])]),
    _u("lax.gather via jnp.take", lambda x: jnp.take(x, _IDX, axis=0, mode="clip"), "real", V),
    _u("lax.dynamic_slice", lambda x: lax.dynamic_slice(x, (1, 1), (2, 2))),
    _u("lax.dynamic_update_slice", lambda x: lax.dynamic_update_slice(x, x[:2, :2] ** 2, (1, 2))),
    _u("lax.slice", lambda x: lax.slice(x, (0, 1), (3, 4), (2, 2))),
    _u("lax.rev", lambda x: lax.rev(x, (0, 1))),
    _u("lax.pad", lambda x: lax.pad(x, jnp.zeros((), x.dtype), ((1, 2, 1), (0, 0, 0)))),
    _u("lax.clamp", lambda x: lax.clamp(jnp.asarray(-0.5, x.dtype), x, jnp.asarray(0.5, x.dtype)), "away"),
    _u("lax.select", lambda x: lax.select(x > 0, jnp.exp(x), x**2), "away"),
    _u(".at[].set", lambda x: x.at[_IDX[:3]].set(x[:3] * 2), "real", V),
    _u(".at[].add", lambda x: x.at[_IDX].add(x[:5] ** 2), "real", V),
    _u(".at[].multiply", lambda x: x.at[1:3].multiply(x[3:5]), "real", V),
    _u(".at[].get", lambda x: x.at[_IDX].get(), "real", V),
    _u(".at[].max", lambda x: x.at[_IDX[:2]].max(x[4:6]), "distinct", V),
    Case("jnp.concatenate", lambda a, b: jnp.concatenate([a, b], axis=0), [("real", S), ("real", (2, 4))]),
    Case("jnp.stack", lambda a, b: jnp.stack([a, b]), [("real", S), ("real", S)]),
    Case("jnp.where(mask) two inputs", lambda a, b: jnp.where(_PERM > 1, a, b), [("real", S), ("real", S)]),
    # -- control flow
    _u("lax.cond", _cond_fn),
    _u("lax.switch", _switch_fn),
    _u("lax.fori_loop", _fori_fn, "unit"),
    _u("lax.scan", _scan_fn, "unit", (5, 3)),
    _u("lax.map", lambda x: lax.map(lambda r: jnp.sin(r) * jnp.sum(r), x)),
    Case("lax.while_loop", _while_fn, [("unit", S)], modes=("fwd",)),
    _u("jax.checkpoint", jax.checkpoint(lambda x: jnp.sin(jnp.cos(x)) * x)),
    _u("jax.vmap", jax.vmap(lambda r: jnp.dot(r, r[::-1]))),
    # -- jax.nn
    _u("jax.nn.relu", jax.nn.relu, "away"),
    _u("jax.nn.relu6", jax.nn.relu6, "away"),
    _u("jax.nn.sigmoid", jax.nn.sigmoid),
    _u("jax.nn.softplus", jax.nn.softplus),
    _u("jax.nn.soft_sign", jax.nn.soft_sign),
    _u("jax.nn.silu", jax.nn.silu),
    _u("jax.nn.log_sigmoid", jax.nn.log_sigmoid),
    _u("jax.nn.leaky_relu", jax.nn.leaky_relu, "away"),
    _u("jax.nn.hard_tanh", jax.nn.hard_tanh, "away"),
    _u("jax.nn.hard_sigmoid", jax.nn.hard_sigmoid, "away"),
    _u("jax.nn.hard_silu", jax.nn.hard_silu, "away"),
    _u("jax.nn.elu", jax.nn.elu, "away"),
    _u("jax.nn.celu", jax.nn.celu, "away"),
    _u("jax.nn.selu", jax.nn.selu, "away"),
    _u("jax.nn.gelu", jax.nn.gelu),
    _u("jax.nn.gelu(exact)", lambda x: jax.nn.gelu(x, approximate=False)),
    _u("jax.nn.mish", jax.nn.mish),
    _u("jax.nn.squareplus", jax.nn.squareplus),
    _u("jax.nn.sparse_plus", jax.nn.sparse_plus, "away"),
    _u("jax.nn.log1mexp", jax.nn.log1mexp, "pos"),
    _u("jax.nn.glu", jax.nn.glu),
    _u("jax.nn.softmax", jax.nn.softmax),
    _u("jax.nn.log_softmax", jax.nn.log_softmax),
    _u("jax.nn.logsumexp", lambda x: jax.nn.logsumexp(x, axis=1)),
    _u("jax.nn.logmeanexp", lambda x: jax.nn.logmeanexp(x, axis=0)),
    _u("jax.nn.standardize", jax.nn.standardize),
    Case(
        "jax.nn.dot_product_attention",
        jax.nn.dot_product_attention,
        [("real", (1, 3, 2, 4)), ("real", (1, 3, 2, 4)), ("real", (1, 3, 2, 4))],
    ),
    # -- jax.scipy.special
    _u("jss.erf", jss.erf),
    _u("jss.erfc", jss.erfc),
    _u("jss.erfinv", jss.erfinv, "unit"),
    _u("jss.erfcx", jss.erfcx),
    _u("jss.gammaln", jss.gammaln, "pos"),
    _u("jss.gamma", jss.gamma, "pos"),
    _u("jss.digamma", jss.digamma, "pos"),
    _u("jss.polygamma(1)", lambda x: jss.polygamma(1, x), "pos"),
    _u("jss.logit", jss.logit, "prob"),
    _u("jss.expit", jss.expit),
    _u("jss.ndtr", jss.ndtr),
    _u("jss.ndtri", jss.ndtri, "prob"),
    _u("jss.log_ndtr", jss.log_ndtr),
    _u("jss.i0", jss.i0),
    _u("jss.i0e", jss.i0e),
    _u("jss.i1", jss.i1),
    _u("jss.i1e", jss.i1e),
    _u("jss.entr", jss.entr, "pos"),
    _u("jss.spence", jss.spence, "pos"),
    _u("jss.dawsn", jss.dawsn),
    _u("jss.exp1", jss.exp1, "pos"),
    _u("jss.expi", jss.expi, "pos"),
    _u("jss.zeta(x, 2)", lambda x: jss.zeta(x, 2.0), "gt1"),
    _u("jss.multigammaln", lambda x: jss.multigammaln(x, 2), "gt1"),
    _u("jss.logsumexp", lambda x: jss.logsumexp(x, axis=1)),
    _u("jss.softmax", lambda x: jss.softmax(x, axis=0)),
    _u("jss.log_softmax", jss.log_softmax),
    _b("jss.xlogy", jss.xlogy, "pos", "pos"),
    _b("jss.xlog1py", jss.xlog1py, "pos", "pos"),
    _b("jss.betaln", jss.betaln, "pos", "pos"),
    _b("jss.beta", jss.beta, "pos", "pos"),
    _b("jss.rel_entr", jss.rel_entr, "pos", "pos"),
    _b("jss.kl_div", jss.kl_div, "pos", "pos"),
    _u("jss.gammainc(2, x)", lambda x: jss.gammainc(2.0, x), "pos"),
    _u("jss.gammaincc(2, x)", lambda x: jss.gammaincc(2.0, x), "pos"),
    # -- jax.lax elementwise
    _u("lax.sin", lax.sin),
    _u("lax.exp", lax.exp),
    _u("lax.log", lax.log, "pos"),
    _u("lax.tanh", lax.tanh),
    _u("lax.logistic", lax.logistic),
    _u("lax.rsqrt", lax.rsqrt, "pos"),
    _u("lax.cbrt", lax.cbrt, "pos"),
    _u("lax.integer_pow", lambda x: lax.integer_pow(x, 3)),
    _u("lax.erf_inv", lax.erf_inv, "unit"),
    _u("lax.lgamma", lax.lgamma, "pos"),
    _u("lax.digamma", lax.digamma, "pos"),
    _u("lax.bessel_i0e", lax.bessel_i0e),
    _u("lax.bessel_i1e", lax.bessel_i1e),
    _u("lax.square", lax.square),
    _u("lax.atan2", lambda x: lax.atan2(x, jnp.ones_like(x) * 0.7)),
    _b("lax.pow", lax.pow, "pos", "real"),
    _b("lax.mul", lax.mul),
    _b("lax.div", lax.div, "real", "pos"),
    _b("lax.max", lax.max, "distinct", "distinct"),
    # -- fft and complex functions
    _u("jnp.fft.fft", jnp.fft.fft, "complex", (2, 6)),
    _u("jnp.fft.ifft", jnp.fft.ifft, "complex", (2, 6)),
    _u("jnp.fft.fft2", jnp.fft.fft2, "complex", M),
    _u("jnp.fft.fftn", jnp.fft.fftn, "complex", (2, 3, 4)),
    _u("jnp.fft.rfft", jnp.fft.rfft, "real", (2, 6)),
    _u("jnp.fft.irfft", lambda z: jnp.fft.irfft(z, n=6), "complex", (2, 4)),
    _u("jnp.fft.hfft", lambda z: jnp.fft.hfft(z, n=6), "complex", (2, 4)),
    _u("jnp.fft.fftshift", jnp.fft.fftshift, "complex", V),
    _u("jnp.abs(complex)", jnp.abs, "complex_away", S),
    _u("jnp.angle", jnp.angle, "complex_away", S),
    _u("jnp.real", jnp.real, "complex", S),
    _u("jnp.imag", jnp.imag, "complex", S),
    _u("jnp.conj", jnp.conj, "complex", S),
    _u("jnp.exp(complex)", jnp.exp, "complex", S),
    _u("jnp.log(complex)", jnp.log, "complex_away", S),
    _u("jnp.sqrt(complex)", jnp.sqrt, "complex_away", S),
    _u("jnp.sin(complex)", jnp.sin, "complex", S),
    _u("jnp.tanh(complex)", jnp.tanh, "complex", S),
    _u("z * conj(z) (non-holomorphic)", lambda z: z * jnp.conj(z) + jnp.real(z) * z, "complex", S),
    _u("jnp.square(complex)", jnp.square, "complex", S),
    _u("jnp.matmul(complex)", lambda z: z @ z.T, "complex", M),
    _u("jnp.linalg.inv(complex)", jnp.linalg.inv, "complex", (3, 3)),
    _u("jnp.sum(|z|^2)", lambda z: jnp.sum(jnp.abs(z) ** 2), "complex", S),
    _b("lax.complex", lax.complex),
    _b("jnp.multiply(complex)", jnp.multiply, "complex", "complex"),
    _b("jnp.divide(complex)", jnp.divide, "complex", "complex_away"),
]


# -- running the tools ------------------------------------------------------------------------


def _counted(fn: Callable[..., Any]) -> tuple[Callable[..., Any], list[int]]:
    calls = [0]

    def counted(*args: Any) -> Any:
        calls[0] += 1
        return fn(*args)

    return counted, calls


def run_check_grads(case: Case, args: list[np.ndarray], dtype: str, limit: float) -> Outcome:
    """``check_grads`` at JAX arrays of ``dtype`` (64-bit mode on for float64 only)."""
    counted, calls = _counted(case.fn)
    start = time.perf_counter()
    try:
        with time_limit(limit), x64(dtype == "float64"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check_grads(counted, tuple(jnp.asarray(a) for a in args), order=1, modes=case.modes)
        return Outcome("pass", time.perf_counter() - start, calls[0])
    except AssertionError as exc:
        return Outcome("fail", time.perf_counter() - start, calls[0], _assertion_reason(exc))
    except SampleTimeout as exc:
        return Outcome("timeout", time.perf_counter() - start, calls[0], str(exc))
    except Exception as exc:
        return Outcome(
            "error", time.perf_counter() - start, calls[0], f"{type(exc).__name__}: {first_line(exc)}"
        )


def _assertion_reason(exc: AssertionError) -> str:
    text = str(exc)
    if not text.strip():
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
        return f"an assert without a message in {frame.name} ({where}): {frame.line}"
    for line in text.splitlines():
        if "Mismatched elements" in line or "Max relative difference" in line or "dtype" in line.lower():
            return first_line(f"{first_line(text, 120)} / {line.strip()}")
    return first_line(text)


def run_gc(case: Case, args: list[np.ndarray], dtype: str, limit: float) -> tuple[Outcome, list[str]]:
    """``gc.check_function`` with its defaults, at JAX arrays of ``dtype`` (64-bit mode on for float64)."""
    start = time.perf_counter()
    try:
        with time_limit(limit), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with x64(dtype == "float64"):
                inputs = [jnp.asarray(a) for a in args]
            report = gc.check_function(case.fn, *inputs)
    except SampleTimeout as exc:
        return Outcome("timeout", time.perf_counter() - start, 0, str(exc)), []
    except Exception as exc:
        return Outcome(
            "error", time.perf_counter() - start, 0, f"{type(exc).__name__}: {first_line(exc)}"
        ), []
    reason = ""
    if report.verdict != "pass":
        blocks = [f"{b.name} {b.verdict}" for b in report.blocks if b.verdict != "pass"]
        findings = [
            f"{f.kind}: {f.block or ''} {first_line(f.message, 200)}"
            for f in report.findings
            if f.kind != "no_forward_mode"
        ]
        reason = "; ".join(blocks + (findings or ["(no finding)"]))
    skipped = [f"{w}: {r}" for w, r in report.skipped]
    return Outcome(report.verdict, time.perf_counter() - start, report.nfev, reason), skipped


def run(cases: list[Case], dtype: str, limit: float, rows: list[Row], out: Any = sys.stdout) -> list[Row]:
    """Check every case in ``dtype``, appending to ``rows`` (kept when the run is stopped)."""
    for k, case in enumerate(cases):
        args = case.arguments(dtype, seed=k)
        shapes = [list(a.shape) for a in args]
        other = run_check_grads(case, args, dtype, limit)
        mine, skipped = run_gc(case, args, dtype, limit)
        row = Row(case.name, dtype, 0, shapes, other, mine, skipped)
        rows.append(row)
        if row.disagree:
            print(disagreement_line(row, "check_grads"), file=out, flush=True)
    return rows


def _each_dtype_in_its_own_process(args: argparse.Namespace) -> int:
    """Run float64, then float32, each in a fresh interpreter.

    JAX keeps compiled programs across its 64-bit mode switches, so a
    float32 ``check_grads`` after a float64 one can be handed an executable
    compiled for int64 indices; separate processes keep the two runs apart.
    """
    rows: list[dict[str, Any]] = []
    code = 0
    stopped = False
    signal.signal(signal.SIGTERM, _on_term)
    for dtype in ("float64", "float32"):
        if stopped:
            break
        with tempfile.TemporaryDirectory() as tmp:
            out = f"{tmp}/rows.json"
            command = [sys.executable, __file__, "--dtype", dtype, "--limit", str(args.limit), "--json", out]
            if args.only:
                command += ["--only", args.only]
            child = subprocess.Popen(command)
            try:
                code = max(code, child.wait())
            except (Stopped, KeyboardInterrupt):
                child.terminate()  # it prints and writes what it measured
                child.wait()
                stopped = True
            with contextlib.suppress(FileNotFoundError), open(out) as fh:
                rows += json.load(fh)["rows"]
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"jax": jax.__version__, "gradcheck_core": gc.__version__, "rows": rows}, fh, indent=1)
    return code


class Stopped(Exception):
    """SIGTERM (``timeout``) arrived: report what was measured so far."""


def _on_term(signum: int, frame: Any) -> None:
    raise Stopped()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=["float64", "float32", "both"], default="both")
    parser.add_argument("--only", default=None, help="case names separated by semicolons")
    parser.add_argument("--limit", type=float, default=60.0, help="seconds per sample and tool")
    parser.add_argument("--json", default=None, help="write every sample's outcome to this file")
    args = parser.parse_args(argv)
    cases = CASES
    if args.only:
        wanted = set(args.only.split(";"))
        cases = [c for c in CASES if c.name in wanted]
    if args.dtype == "both":
        return _each_dtype_in_its_own_process(args)
    dtypes = [args.dtype]
    print(
        f"jax {jax.__version__}, gradcheck-core {gc.__version__}, Python {platform.python_version()}, "
        f"{len(cases)} functions, {', '.join(dtypes)}",
        flush=True,
    )
    start = time.perf_counter()
    rows: list[Row] = []
    complete = True
    signal.signal(signal.SIGTERM, _on_term)
    try:
        for dtype in dtypes:
            print(f"disagreements as they come ({dtype}):", flush=True)
            run(cases, dtype, args.limit, rows)
    except (Stopped, KeyboardInterrupt):
        complete = False
        print(f"stopped early: {len(rows)} samples measured, up to {rows[-1].op if rows else '-'}")
    for dtype in dtypes:
        print(summary([r for r in rows if r.dtype == dtype], dtype, "jax.test_util.check_grads", "functions"))
    print(f"wall time {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "jax": jax.__version__,
                    "gradcheck_core": gc.__version__,
                    "complete": complete,
                    "rows": [asdict(r) for r in rows],
                },
                fh,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
