"""JAX's 64-bit mode, switched on around each call the checker makes.

Every evaluation receives float64 arrays, also when the user's parameters are
float32: JAX's 64-bit mode is switched on around each call the checker makes
(a thread-local setting, so the user's global flag is never touched and
nothing needs restoring, whatever the loss raises).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax

__all__ = ["x64"]


@contextlib.contextmanager
def _global_x64() -> Iterator[None]:
    """Old JAX without a scoped switch: flip the global flag, then put it back."""
    before = bool(jax.config.read("jax_enable_x64"))
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)


def x64(enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """A context in which JAX creates and computes float64 values.

    Uses the scoped, thread-local switch of the installed JAX
    (``jax.enable_x64`` or ``jax.experimental.enable_x64``), so the global
    ``jax_enable_x64`` flag is left exactly as it was.

    Parameters
    ----------
    enabled : bool
        False gives a context that changes nothing.
    """
    if not enabled:
        return contextlib.nullcontext()
    scoped = getattr(jax, "enable_x64", None)
    if scoped is not None and not isinstance(scoped, bool):
        return scoped(True)
    try:
        from jax.experimental import enable_x64  # JAX < 0.6

        return enable_x64()
    except ImportError:  # pragma: no cover - no scoped switch at all
        return _global_x64()
