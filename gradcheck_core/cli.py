"""The ``gradcheck`` command line tool."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from . import demos

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "demo":
        print("usage: gradcheck demo", file=sys.stderr)
        return 2
    return demos.run(argv[1:])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
