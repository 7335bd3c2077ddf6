"""pytest plugin: a ``gradcheck`` fixture, a marker, and readable failures.

Installed with gradcheck-core (entry point ``pytest11``), so nothing needs to
be configured:

* the ``gradcheck`` fixture is :func:`gradcheck_core.assert_gradients` with
  the options chosen for the test: ``gradcheck(loss, params, grad)`` raises
  :class:`~gradcheck_core.CheckFailed` (an ``AssertionError``) unless the
  check passes, and returns the report; ``gradcheck.check(...)`` returns the
  report without raising; ``gradcheck.options`` shows the options in force;
* ``@pytest.mark.gradcheck(mode="fast", rtol=1e-5, ...)`` sets options for the
  fixture in one test (or a class or module, through ``pytestmark``);
* ``pytest --gradcheck-mode=full`` (and ``--gradcheck-seed``) set the mode and
  seed of every ``gradcheck`` fixture in the run; a marker or an explicit
  keyword argument takes precedence;
* a failing check shows the report table in the failure (the message of
  :class:`~gradcheck_core.CheckFailed`), with the frames of gradcheck-core
  itself left out of the traceback (``--fulltrace`` keeps them).
"""

from __future__ import annotations

from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gradcheck", "gradient checks (gradcheck-core)")
    group.addoption(
        "--gradcheck-mode",
        choices=("auto", "full", "fast"),
        default=None,
        help="mode of the gradcheck fixture's checks: full (every coordinate), fast (random "
        "directions, then localisation) or auto (the library's choice, the default)",
    )
    group.addoption(
        "--gradcheck-seed",
        type=int,
        default=None,
        help="seed of the gradcheck fixture's checks (sampled coordinates, directions)",
    )


def pytest_configure(config: pytest.Config) -> None:
    _hide_library_frames()
    config.addinivalue_line(
        "markers",
        "gradcheck(**options): options for the gradcheck fixture in this test, e.g. "
        "@pytest.mark.gradcheck(mode='fast', rtol=1e-5)",
    )


class GradcheckFixture:
    """What the ``gradcheck`` fixture provides.

    Calling it runs :func:`gradcheck_core.assert_gradients` with the fixture's
    options (overridden by keyword arguments of the call).

    Attributes
    ----------
    options : dict
        The options every call uses unless told otherwise.
    """

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = dict(options)

    def _merged(self, options: dict[str, Any]) -> dict[str, Any]:
        return {**self.options, **options}

    def __call__(self, loss: Any, params: Any, grad: Any = None, **options: Any) -> Any:
        """Check and raise :class:`~gradcheck_core.CheckFailed` unless the check passes.

        Returns
        -------
        Report
        """
        __tracebackhide__ = True
        from .check import check

        return check(loss, params, grad, **self._merged(options)).raise_if_failed()

    def check(self, loss: Any, params: Any, grad: Any = None, **options: Any) -> Any:
        """:func:`gradcheck_core.check` with the fixture's options; never raises for a failed check."""
        from .check import check

        return check(loss, params, grad, **self._merged(options))

    def check_loss(self, loss_fn: Any, y_true: Any, y_pred: Any, grad: Any = None, **options: Any) -> Any:
        """:func:`gradcheck_core.check_loss` with the fixture's options, raising unless it passes."""
        __tracebackhide__ = True
        from .functions import check_loss

        return check_loss(loss_fn, y_true, y_pred, grad, **self._merged(options)).raise_if_failed()

    def check_function(self, fn: Any, *inputs: Any, **options: Any) -> Any:
        """:func:`gradcheck_core.check_function` with the fixture's options, raising unless it passes."""
        __tracebackhide__ = True
        from .functions import check_function

        return check_function(fn, *inputs, **self._merged(options)).raise_if_failed()

    def __repr__(self) -> str:
        return f"<gradcheck fixture options={self.options}>"


def fixture_options(node: pytest.Item | Any, config: pytest.Config) -> dict[str, Any]:
    """Options for a test: command line first, then markers (the closest wins)."""
    options: dict[str, Any] = {}
    mode = config.getoption("gradcheck_mode", None)
    if mode is not None:
        options["mode"] = mode
    seed = config.getoption("gradcheck_seed", None)
    if seed is not None:
        options["seed"] = seed
    markers = list(node.iter_markers("gradcheck"))
    for marker in reversed(markers):  # farthest first, so the closest overrides
        if marker.args:
            raise pytest.UsageError(
                f"@pytest.mark.gradcheck takes keyword options only (e.g. mode='fast'), got {marker.args!r}"
            )
        options.update(marker.kwargs)
    return options


@pytest.fixture
def gradcheck(request: pytest.FixtureRequest) -> GradcheckFixture:
    """``gradcheck(loss, params, grad=None, **options)`` asserts that the gradient is right.

    Options come from ``--gradcheck-mode``/``--gradcheck-seed``, then from
    ``@pytest.mark.gradcheck(...)``, then from the call itself.
    """
    return GradcheckFixture(fixture_options(request.node, request.config))


def _hide_for_failed_checks(excinfo: Any) -> bool:
    """``__tracebackhide__`` of the library's modules: hide their frames for a failed check only."""
    try:
        from .errors import CheckFailed

        return excinfo is not None and bool(excinfo.errisinstance(CheckFailed))
    except Exception:  # never let the display break a test run
        return False


def _hide_library_frames() -> None:
    """Mark the modules that raise CheckFailed so pytest leaves their frames out.

    pytest hides a traceback entry whose frame's globals hold a true (or
    truthy-returning) ``__tracebackhide__``; with the callable above only
    failures of a gradient check are shortened, every other error keeps its
    full traceback.
    """
    import importlib

    for name in ("gradcheck_core.check", "gradcheck_core.report"):
        try:
            module = importlib.import_module(name)
        except Exception:  # pragma: no cover - a broken install shows its own errors
            continue
        if "__tracebackhide__" not in vars(module):
            module.__tracebackhide__ = _hide_for_failed_checks  # type: ignore[attr-defined]
