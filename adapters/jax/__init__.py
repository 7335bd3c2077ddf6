"""The JAX adapter: pure functions of pytrees, checked in float64.

JAX arrays are immutable, so a loss is always a function of its parameters,
``loss(p)``, where ``p`` has the structure of ``params`` (dicts, lists,
tuples, namedtuples and other registered pytree nodes, nested).  Every
evaluation receives float64 arrays, also when the user's parameters are
float32: JAX's 64-bit mode is switched on around each call the checker makes
(a thread-local setting, so the user's global flag is never touched and
nothing needs restoring, whatever the loss raises).

Speed comes from JAX itself: the loss of a flat float64 vector is compiled
once with :func:`jax.jit` when JAX can trace it, and the full sweep evaluates
blocks of perturbed points with ``jax.jit(jax.vmap(...))`` (checked on its
first rows against single calls).  A loss that cannot be traced (it calls
``float()`` on a value, converts to numpy, branches in Python on a value) is
simply called as it is, point by point.

:meth:`JaxAdapter.vjp`, :meth:`JaxAdapter.jvp` and :meth:`JaxAdapter.call`
serve :func:`gradcheck_core.check_function`, which checks the derivative rules
of ``jax.custom_jvp`` and ``jax.custom_vjp`` functions input by input.

Modules
-------
adapter
    :class:`JaxAdapter` and the registry's ``ADAPTER``.
x64_mode
    :func:`x64`, the scoped 64-bit mode.
pytrees
    Registered pytree nodes shown to the core as named dicts.
runner
    The loss of one flat vector: tracing, compiling, single evaluation, gradient.
batching
    Blocks of points through ``jax.jit(jax.vmap(...))``, sized by scratch memory.
precision
    Why a loss fed float64 values still computes in float32, for the report.
autodiff
    VJP/JVP plumbing for :func:`gradcheck_core.check_function`.
"""

from __future__ import annotations

from .adapter import ADAPTER, JaxAdapter
from .x64_mode import x64

__all__ = ["ADAPTER", "JaxAdapter", "x64"]
