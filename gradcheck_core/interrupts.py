"""Ctrl-C during a check: raised in the user's code at once, in the library's own code later.

A KeyboardInterrupt that lands while the library itself runs (pushing or
popping a framework mode, switching a flag, restoring parameters) could leave
a setting half-changed.  While a check runs in the main thread,
:class:`interrupts_deferred` installs a SIGINT handler that looks at where the
signal arrived: in the user's code (or framework code the user's code called)
it raises KeyboardInterrupt there, as Python's own handler would; in the
library's code (or framework code the library called, such as a mode switch)
it records the interrupt, which :func:`raise_pending` raises at the next safe
point (before the next evaluation of the loss) or when the check ends,
after everything is restored.  A second Ctrl-C while one is pending is raised
at once.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sysconfig
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["decide", "interrupts_deferred", "raise_pending"]


def _library_dirs() -> tuple[str, ...]:
    """The folders of this package and of ``gradcheck_core.adapters`` (installed apart)."""
    dirs = {os.path.dirname(os.path.abspath(__file__))}
    spec = importlib.util.find_spec("gradcheck_core.adapters")
    if spec is not None and spec.origin:
        dirs.add(os.path.dirname(os.path.abspath(spec.origin)))
    return tuple(d + os.sep for d in sorted(dirs))


_LIBRARY = _library_dirs()
# Installed code (the frameworks, the standard library) neither defers nor raises by
# itself: the first frame outside it decides.
_INSTALLED = tuple(
    sorted(
        {
            os.path.abspath(path) + os.sep
            for key in ("stdlib", "platstdlib", "purelib", "platlib")
            if (path := sysconfig.get_paths().get(key))
        }
    )
)


class _State:
    def __init__(self) -> None:
        self.pending = False
        self.previous: Any = None


_state = _State()


def _in_library(filename: str) -> bool | None:
    """True for the library's files, None for installed code, False for the user's."""
    if filename.startswith(_LIBRARY):
        return True
    if filename.startswith("<") or filename.startswith(_INSTALLED):
        return None
    return False


def decide(frame: FrameType | None) -> bool:
    """Whether an interrupt arriving in ``frame`` is deferred (True) or raised now (False).

    Parameters
    ----------
    frame : frame or None
        The frame the interrupt arrived in (what a signal handler receives).
    """
    while frame is not None:
        where = _in_library(os.path.abspath(frame.f_code.co_filename))
        if where is not None:
            return where
        frame = frame.f_back
    return False


def _handler(signum: int, frame: FrameType | None) -> None:
    if not _state.pending and decide(frame):
        _state.pending = True
        return
    _state.pending = False
    previous = _state.previous
    if callable(previous):
        previous(signum, frame)
    else:
        raise KeyboardInterrupt


def raise_pending() -> None:
    """Raise a KeyboardInterrupt that arrived while the library's own code ran.

    Call only where every setting is whole (between evaluations).
    """
    if _state.pending:
        _state.pending = False
        raise KeyboardInterrupt


class interrupts_deferred:
    """While inside, Ctrl-C in the library's own code waits for a safe point.

    Does nothing outside the main thread (where no signal arrives) or when
    the SIGINT handler is not a Python function (ignored, or set from C).
    Nested uses share the outermost handler.  On exit, a pending interrupt is
    raised (unless an exception is already on its way).

    Whether a use is the outermost one is read from the installed handler,
    not kept in a counter: an interrupt that lands while the handler is being
    installed (before it takes over, when Python raises it on the spot) then
    leaves nothing behind that a later check could mistake for an enclosing
    one.  Once the handler is installed, the rest of this code is the
    library's and defers any interrupt itself.
    """

    def __init__(self) -> None:
        self.outermost = False

    def __enter__(self) -> interrupts_deferred:
        if threading.current_thread() is not threading.main_thread():
            return self
        previous = signal.getsignal(signal.SIGINT)
        if previous is _handler or not callable(previous):
            return self  # nested (the outer use restores), or nothing to defer to
        _state.previous = previous
        _state.pending = False
        signal.signal(signal.SIGINT, _handler)
        self.outermost = True
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.outermost:
            return
        self.outermost = False
        signal.signal(signal.SIGINT, _state.previous)
        _state.previous = None
        pending, _state.pending = _state.pending, False
        if pending and kind is None:
            raise KeyboardInterrupt
