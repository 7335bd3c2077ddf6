"""The one exception family of gradcheck-core."""

from __future__ import annotations

__all__ = ["CheckFailed", "GradcheckError", "InputError", "NotTwiceDifferentiable", "ReverseModeUnsupported"]


class GradcheckError(AssertionError):
    """Base class of every error raised by gradcheck-core.

    It derives from ``AssertionError`` so that a failed gradient check inside a
    test suite reads as a failed assertion.
    """


class InputError(GradcheckError, ValueError):
    """The loss, the parameters or the gradient given to a check are unusable.

    The message names the offending value and says how to fix it.
    """


class ReverseModeUnsupported(InputError):
    """The framework cannot differentiate the function in reverse mode (a JAX ``while_loop``).

    Its forward-mode derivatives may still be checked.
    """


class CheckFailed(GradcheckError):
    """A gradient check did not pass; ``report`` holds the full :class:`Report`."""

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report


class NotTwiceDifferentiable(InputError):
    """A backward pass that cannot itself be differentiated, met by a second-order check."""
