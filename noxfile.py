"""Test, demo and benchmark sessions.

``nox -s tests`` runs everything (every framework, every Keras backend, each
Keras backend in its own pytest process); ``nox -s core`` proves the core
works with numpy alone; ``nox -s lint`` runs ruff and mypy; one session per
framework for quick work on one adapter.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
# uv creates and fills a virtualenv several times faster than pip where it is installed
# (`pip install uv`); nox falls back to virtualenv and pip otherwise. Sessions that
# install torch keep pip: the CPU build is a pip-visible wheel, and uv resolves the
# PyPI torch, which pulls the CUDA libraries (gigabytes) on Linux.
FAST = "uv|virtualenv"
PIP = "virtualenv"
# The CPU wheel of this release is what CI machines carry; a looser pin pulls a CUDA build.
TORCH = "torch==2.13.0"
FRAMEWORK_PACKAGES = {
    "torch": [TORCH],
    "tensorflow": ["tensorflow-cpu"],
    "jax": ["jax[cpu]", "flax", "equinox", "dm-haiku"],
    "keras": ["keras>=3", "tensorflow-cpu", "jax[cpu]", TORCH],
}
KERAS_BACKENDS = ("tensorflow", "jax", "torch", "numpy")


def install(session: nox.Session, *frameworks: str) -> None:
    packages = [p for fw in frameworks for p in FRAMEWORK_PACKAGES[fw]]
    # silent=False: the install prints its progress instead of minutes of nothing.
    session.install("-e", ".[test]", *dict.fromkeys(packages), silent=False)


def run_pytest(session: nox.Session, *args: str, env: dict[str, str] | None = None) -> None:
    session.run("pytest", *args, *session.posargs, env=env or {}, success_codes=[0, 5])


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Everything: the core, every adapter, every Keras backend."""
    install(session, "torch", "tensorflow", "jax", "keras")
    run_pytest(session, "-m", "not keras")
    for backend in KERAS_BACKENDS:
        run_pytest(session, "-m", "keras", env={"KERAS_BACKEND": backend})


@nox.session(python=PYTHON, venv_backend=FAST)
def core(session: nox.Session) -> None:
    """The core and the numpy adapter with no framework installed."""
    install(session)
    run_pytest(session, "-m", "not torch and not tensorflow and not jax and not keras")


@nox.session(python=PYTHON)
@nox.parametrize("framework", ["torch", "tensorflow", "jax"])
def framework(session: nox.Session, framework: str) -> None:
    """One framework's adapter tests."""
    install(session, framework)
    run_pytest(session, "-m", framework)


@nox.session(python=PYTHON)
@nox.parametrize("backend", list(KERAS_BACKENDS))
def keras(session: nox.Session, backend: str) -> None:
    """Keras adapter tests on one backend (each backend in its own process)."""
    install(session, "keras")
    run_pytest(session, "-m", "keras", env={"KERAS_BACKEND": backend})


@nox.session(python=PYTHON, venv_backend=FAST)
def lint(session: nox.Session) -> None:
    """ruff (lint and format check) and mypy over the installed package."""
    session.install("-e", ".[lint]", silent=False)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    # adapters/ installs as gradcheck_core.adapters: type-check the package as installed.
    site = Path(session.create_tmp()) / "site"
    shutil.rmtree(site, ignore_errors=True)
    if session.venv_backend == "uv":
        session.run("uv", "pip", "install", "--quiet", "--no-deps", "--target", str(site), ".", external=True)
    else:
        session.run("python", "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), ".")
    session.run("mypy", "-p", "gradcheck_core", env={"MYPYPATH": str(site)})


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The built-in examples."""
    install(session, "torch", "tensorflow", "jax", "keras")
    session.run("gradcheck", "demo", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks: accuracy, overhead, and the comparisons with other tools."""
    install(session, "torch", "tensorflow", "jax", "keras")
    import glob

    for script in sorted(glob.glob("benchmarks/*.py")):
        session.run("python", script, *session.posargs)
