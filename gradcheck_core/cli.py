"""The ``gradcheck`` command line tool.

``gradcheck demo [NAME ...]``
    Run the built-in examples (``--list`` names them).
``gradcheck run FILE.py:FACTORY``
    Import ``FILE.py``, call ``FACTORY()``, and check what it returns: the
    keyword arguments of :func:`gradcheck_core.check` as a dict (``loss``,
    ``params``, optionally ``grad``, ``options`` and any option of ``check``).

Exit status of ``run``: 0 the check passed, 1 it failed, 3 it was
inconclusive (the loss is too noisy or random to decide), 2 the check could
not be run (bad command line, missing file or factory, a factory or loss that
raises, unusable input).  ``demo`` exits 0 when every demo turned out as
expected, 1 when one did not, and 2 when a demo asked for by name cannot run
here (a framework missing or not importable: the line says which).  Errors are one line on stderr, without a
traceback (``--traceback`` shows it).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["EXIT_FAIL", "EXIT_INCONCLUSIVE", "EXIT_PASS", "EXIT_USAGE", "load_factory", "main"]

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_INCONCLUSIVE = 3
_EXIT = {"pass": EXIT_PASS, "fail": EXIT_FAIL, "inconclusive": EXIT_INCONCLUSIVE}

PROG = "gradcheck"


class UsageError(Exception):
    """Something the user has to fix before a check can run (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``gradcheck run: error: ... (see --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive whole number")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _color(value: str) -> bool | None:
    return {"auto": None, "always": True, "never": False}[value]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``gradcheck``."""
    from ._version import __version__

    parser = _Parser(
        prog=PROG,
        description="Check gradients against finite differences, and say where and why they are wrong.",
    )
    parser.add_argument("--version", action="version", version=f"gradcheck-core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,run}")

    demo = sub.add_parser(
        "demo",
        help="run the built-in examples",
        description="Run the built-in examples (all of them when no NAME is given).",
    )
    demo.add_argument("names", nargs="*", metavar="NAME", help="demos to run (see --list)")
    demo.add_argument("--list", action="store_true", help="list the demos and exit")
    demo.add_argument("--plot", metavar="DIR", help="save each demo's figures in DIR (needs matplotlib)")
    demo.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="coloured tables (default: on a terminal)",
    )

    run = sub.add_parser(
        "run",
        help="check what FILE.py:FACTORY returns",
        description=(
            "Import FILE.py, call FACTORY() and check the gradient it describes. FACTORY returns the "
            "keyword arguments of gradcheck_core.check as a dict: loss, params, and optionally grad, "
            "options (a dict) or any option of check. Exit status: 0 pass, 1 fail, 3 inconclusive, "
            "2 the check could not run."
        ),
    )
    run.add_argument("target", metavar="FILE.py:FACTORY", help="a Python file and a function in it")
    run.add_argument(
        "--mode",
        choices=("auto", "full", "fast"),
        help="every coordinate (full), random directions (fast), or choose (auto)",
    )
    run.add_argument(
        "--method", choices=("central", "forward", "richardson", "complex"), help="finite difference scheme"
    )
    run.add_argument(
        "--sample", type=_positive_int, metavar="N", help="check N random coordinates per parameter"
    )
    run.add_argument("--seed", type=_int, metavar="N", help="seed for sampled coordinates and directions")
    run.add_argument(
        "--step", type=_float, metavar="H", help="relative step (default: from the loss's noise)"
    )
    run.add_argument("--rtol", type=_float, metavar="R", help="relative tolerance per entry (default 1e-6)")
    run.add_argument("--atol", type=_float, metavar="A", help="absolute tolerance per entry (default 0)")
    run.add_argument("--json", action="store_true", help="write the report as JSON on stdout, nothing else")
    run.add_argument("--arrays", action="store_true", help="with --json: include the checked entries")
    run.add_argument(
        "--plot", metavar="PATH", help="save a figure of the report (PNG, SVG or PDF; needs matplotlib)"
    )
    run.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="coloured table (default: on a terminal)",
    )
    run.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    return parser


# ----------------------------------------------------------------------------- run


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _user_frame(tb: Any) -> str:
    """``file:line`` of the innermost frame outside gradcheck-core, if any."""
    here = Path(__file__).resolve().parent
    adapters = here.parent / "adapters"
    where = ""
    for frame in traceback.extract_tb(tb):
        path = Path(frame.filename).resolve()
        if here in path.parents or adapters in path.parents or frame.filename.startswith("<"):
            continue
        where = f"{frame.filename}:{frame.lineno}"
    return where


def _describe(exc: BaseException) -> str:
    where = _user_frame(exc.__traceback__)
    text = f"{type(exc).__name__}: {_one_line(str(exc))}" if str(exc) else type(exc).__name__
    return f"{text} (at {where})" if where else text


def load_factory(target: str) -> tuple[Callable[[], Any], str]:
    """Import ``FILE.py`` and return its function ``FACTORY``.

    Parameters
    ----------
    target : str
        ``"path/to/file.py:factory"``.

    Returns
    -------
    factory, label
        The function and ``"file.py:factory"`` for messages.

    Raises
    ------
    UsageError
        With a one-line message naming what is missing.
    """
    path_text, sep, name = target.rpartition(":")
    if not sep or not path_text or not name:
        raise UsageError(
            f"expected FILE.py:FACTORY (a file and the function in it that returns the check's "
            f"arguments), got {target!r}; e.g. gradcheck run checks.py:make_problem"
        )
    if not name.isidentifier():
        raise UsageError(f"{name!r} after the ':' in {target!r} is not a Python function name")
    path = Path(path_text)
    if not path.exists():
        raise UsageError(f"no such file: {path_text}")
    if not path.is_file():
        raise UsageError(f"{path_text} is not a file")
    module_name = "_gradcheck_run_" + "".join(c if c.isalnum() else "_" for c in path.stem)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot import {path_text}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:
        raise UsageError(f"importing {path_text} called sys.exit({exc.code})") from exc
    except Exception as exc:
        raise UsageError(f"importing {path_text} raised {_describe(exc)}") from exc
    factory = getattr(module, name, None)
    if factory is None:
        functions = [
            n
            for n, v in vars(module).items()
            if inspect.isfunction(v) and v.__module__ == module_name and not n.startswith("_")
        ]
        there = (
            f"; functions defined there: {', '.join(functions)}" if functions else "; it defines no functions"
        )
        raise UsageError(f"{path_text} has no {name!r}{there}")
    if not callable(factory):
        raise UsageError(f"{path_text}:{name} is a {type(factory).__name__}, not a function")
    return factory, f"{path.name}:{name}"


def _check_options() -> list[str]:
    from .options import CHECK_OPTIONS

    return list(CHECK_OPTIONS)


def _a(noun: str) -> str:
    """``noun`` with its indefinite article: ``an int``, ``a list``."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def check_arguments(result: Any, label: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Turn what a factory returned into keyword arguments of :func:`gradcheck_core.check`."""
    if not isinstance(result, Mapping):
        raise UsageError(
            f"{label} returned {_a(type(result).__name__)}, not a dict; it must return the keyword "
            "arguments of gc.check as a dict, such as {'loss': loss, 'params': params, 'grad': grad} "
            "('grad' and 'options' are optional)"
        )
    options = _check_options()
    allowed = {"loss", "params", "grad", "options", *options}
    unknown = [k for k in result if k not in allowed]
    if unknown:
        raise UsageError(
            f"{label} returned the unknown key {unknown[0]!r}; the keys are loss, params, grad, "
            f"options, or an option of check ({', '.join(options)})"
        )
    missing = [k for k in ("loss", "params") if k not in result]
    if missing:
        raise UsageError(f"{label} returned no {missing[0]!r}; the dict needs 'loss' and 'params'")
    if not callable(result["loss"]):
        raise UsageError(
            f"{label} returned a 'loss' that is {_a(type(result['loss']).__name__)}, not a function"
        )
    kwargs: dict[str, Any] = {"loss": result["loss"], "params": result["params"], "grad": result.get("grad")}
    extra = result.get("options") or {}
    if not isinstance(extra, Mapping):
        raise UsageError(f"{label} returned 'options' as {_a(type(extra).__name__)}; it must be a dict")
    bad = [k for k in extra if k not in options]
    if bad:
        raise UsageError(
            f"{label} returned the unknown option {bad[0]!r}; the options of check are {', '.join(options)}"
        )
    kwargs.update(extra)
    kwargs.update({k: v for k, v in result.items() if k in options})
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return kwargs


@contextlib.contextmanager
def _stdout_to_stderr(active: bool) -> Iterator[None]:
    if not active:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _run(args: argparse.Namespace) -> int:
    from .errors import GradcheckError
    from .render import print_report

    if args.arrays and not args.json:
        raise UsageError("--arrays goes with --json")
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError(
                "--plot needs matplotlib, which is not installed: pip install 'gradcheck-core[plot]'"
            ) from None
        folder = Path(args.plot).parent
        if not folder.is_dir():
            raise UsageError(f"--plot {args.plot}: the folder {folder} does not exist")
    overrides = {
        "mode": args.mode,
        "method": args.method,
        "sample": args.sample,
        "seed": args.seed,
        "step": args.step,
        "rtol": args.rtol,
        "atol": args.atol,
    }
    with _stdout_to_stderr(args.json):
        factory, label = load_factory(args.target)
        try:
            result = factory()
        except SystemExit as exc:
            raise UsageError(f"{label}() called sys.exit({exc.code})") from exc
        except Exception as exc:
            raise UsageError(f"{label}() raised {_describe(exc)}") from exc
        kwargs = check_arguments(result, f"{label}()", overrides)
        from .check import check

        try:
            report = check(**kwargs)
        except GradcheckError as exc:
            raise UsageError(_one_line(str(exc))) from exc
        except Exception as exc:
            if _user_frame(exc.__traceback__):
                raise UsageError(f"the check stopped: {_describe(exc)}") from exc
            raise UsageError(
                f"the check stopped inside gradcheck-core: {_describe(exc)}; run again with "
                "--traceback and report it"
            ) from exc
    if args.json:
        sys.stdout.write(report.to_json(arrays=args.arrays) + "\n")
        sys.stdout.flush()
    else:
        print_report(report, color=_color(args.color))
    if args.plot is not None:
        try:
            from .plot import plot_report

            plot_report(report, args.plot)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--plot {args.plot}: {_one_line(str(exc))}") from exc
        print(f"figure written to {args.plot}", file=sys.stderr if args.json else sys.stdout)
    return _EXIT.get(report.verdict, EXIT_FAIL)


def _demo(args: argparse.Namespace) -> int:
    from . import demos

    if args.list:
        demos.list_demos()
        return 0
    unknown = [n for n in args.names if n not in demos.DEMOS]
    if unknown:
        raise UsageError(f"no demo named {unknown[0]!r}; the demos are {', '.join(demos.DEMOS)}")
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError(
                "--plot needs matplotlib, which is not installed: pip install 'gradcheck-core[plot]'"
            ) from None
        if os.path.exists(args.plot) and not os.path.isdir(args.plot):
            raise UsageError(f"--plot {args.plot}: not a folder (demos write one PNG per demo there)")
    return demos.run(args.names or None, color=_color(args.color), plot_dir=args.plot)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gradcheck``; returns the exit status."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    prog = f"{PROG} {args.command}"
    try:
        return _run(args) if args.command == "run" else _demo(args)
    except UsageError as exc:
        if getattr(args, "traceback", False):
            traceback.print_exception(exc.__cause__ or exc, file=sys.stderr)
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
