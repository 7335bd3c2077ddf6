"""Compiled programs kept between checks, so that checking the same loss again compiles nothing.

Compiling (the loss at one point, the vectorised sweep per block size, the
gradient) is most of a check's time for a small JAX model, and a test suite
or a notebook checks the same loss many times.  Every program is still traced
each time (tracing is cheap, and it calls the loss's Python as an uncached
check does), and its compiled form is kept under the text of the jaxpr it
traces to, with the jaxpr's constants and the device: a trace to the same
jaxpr with equal constants is the same computation, whatever Python object
it came from (a new lambda each time, say), while a loss whose captured
arrays have changed traces to other constants and is compiled afresh.  The
most recent :data:`KEPT` programs are kept, each with its notes
(:func:`program_notes`: how long it took to compile, and what later checks
learnt about it, such as the block size its sweep runs fastest at).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np

__all__ = ["KEPT", "compiled_program", "compiles", "program_notes"]

#: How many compiled programs are kept (the least recently used go first).
KEPT = 32

_kept: OrderedDict[tuple[str, str, tuple[int, ...]], tuple[list[Any], list[Any], Any]] = OrderedDict()
#: Each kept program and its notes, by the program's id (dropped with the program).
_notes: dict[int, tuple[Any, dict[str, Any]]] = {}
#: Programs compiled so far (not found kept).
_compiled_count = [0]
_lock = threading.Lock()


def compiled_program(traced: Any, device: Any) -> Any:
    """``traced.lower().compile()``, or the program compiled before for the same jaxpr and constants.

    Parameters
    ----------
    traced : jax.stages.Traced
        What ``jax.jit(f).trace(*args)`` returned.
    device : object
        Where the program runs (part of the key).
    """
    closed = traced.jaxpr
    # Python functions the program calls while it runs (pure_callback and the like) print
    # with their addresses masked: two different callbacks give the same text, so they
    # are told apart by identity (and kept alive with the program, so no id is reused).
    hosts = _host_functions(closed.jaxpr)
    key = (str(closed.jaxpr), str(device), tuple(id(f) for f in hosts))
    consts = list(closed.consts)
    with _lock:
        hit = _kept.get(key)
        if hit is not None and _equal(hit[0], consts):
            _kept.move_to_end(key)
            return hit[2]
    start = time.perf_counter()
    program = traced.lower().compile()
    seconds = time.perf_counter() - start
    # numpy constants are the caller's arrays, which may change in place later: keep copies
    kept = [np.array(c) if isinstance(c, np.ndarray) else c for c in consts]
    with _lock:
        old = _kept.get(key)
        if old is not None:
            _notes.pop(id(old[2]), None)
        _kept[key] = (kept, hosts, program)
        _notes[id(program)] = (program, {"compile_seconds": seconds})
        _compiled_count[0] += 1
        _kept.move_to_end(key)
        while len(_kept) > KEPT:
            _, (_, _, dropped) = _kept.popitem(last=False)
            _notes.pop(id(dropped), None)
    return program


def compiles() -> int:
    """How many programs :func:`compiled_program` has compiled (rather than found kept) so far."""
    return _compiled_count[0]


def program_notes(program: Any) -> dict[str, Any]:
    """The notes kept with a program :func:`compiled_program` returned (a fresh dict once it is dropped).

    ``"compile_seconds"``: how long compiling it took, whether this check
    compiled it or found it kept.  Other keys are their writers': what one
    check measured, the next check of the same program reads.
    """
    with _lock:
        entry = _notes.get(id(program))
    return entry[1] if entry is not None and entry[0] is program else {}


def _host_functions(jaxpr: Any) -> list[Any]:
    """The Python callables in the parameters of ``jaxpr``'s equations, sub-jaxprs included, in order.

    The rules of ``custom_jvp``/``custom_vjp`` calls are left out: they act
    when a program is traced (their work is then part of the jaxpr), not when
    it runs.
    """
    found: list[Any] = []

    def visit(value: Any, rules: bool) -> None:
        inner = getattr(value, "jaxpr", None)
        if hasattr(value, "eqns"):
            walk(value)
        elif inner is not None and hasattr(inner, "eqns"):
            walk(inner)
        elif isinstance(value, (tuple, list)):
            for v in value:
                visit(v, rules)
        elif isinstance(value, dict):
            for v in value.values():
                visit(v, rules)
        elif callable(value) and not isinstance(value, type) and not rules:
            found.append(value)

    def walk(j: Any) -> None:
        for eqn in j.eqns:
            rules = eqn.primitive.name.startswith("custom_")
            for v in eqn.params.values():
                visit(v, rules)

    walk(jaxpr)
    return found


def _equal(a: list[Any], b: list[Any]) -> bool:
    """Constants of two traces are the same values (same dtypes and shapes)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        try:
            xa, ya = np.asarray(x), np.asarray(y)
        except Exception:
            return False
        if xa.dtype != ya.dtype or xa.shape != ya.shape or not np.array_equal(xa, ya, equal_nan=True):
            return False
    return True
