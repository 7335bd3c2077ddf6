"""Exceptions from the user's own code inside JAX, told apart from JAX failing to trace.

JAX reports an exception raised inside a ``jax.pure_callback`` (or
``io_callback``) as a ``JaxRuntimeError`` whose message holds the callback's
traceback.  Such an error is the user's, never a sign that the loss cannot be
compiled or differentiated, and a KeyboardInterrupt inside a callback must stay
a KeyboardInterrupt.
"""

from __future__ import annotations

import jax

__all__ = ["is_tracing_error", "raise_if_users"]


def _from_callback(exc: BaseException) -> bool:
    return isinstance(exc, jax.errors.JaxRuntimeError) and "error calling callback" in str(exc)


def raise_if_users(exc: BaseException) -> None:
    """Raise ``exc`` again when it came from the user's code in a callback.

    A callback that was interrupted raises KeyboardInterrupt (chained to JAX's
    error); any other callback error is raised as JAX reported it.  Returns
    when ``exc`` is something else.
    """
    if not _from_callback(exc):
        return
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if lines and lines[-1].strip().startswith("KeyboardInterrupt"):
        raise KeyboardInterrupt from exc
    raise exc


def is_tracing_error(exc: BaseException) -> bool:
    """Whether ``exc`` says that JAX cannot trace the code (``float()`` on a tracer and the like)."""
    return isinstance(exc, (jax.errors.JAXTypeError, jax.errors.JAXIndexError, jax.errors.JaxprTypeError))
