"""The ``convengine`` command: :func:`main` parses the line and runs the registered sub-command."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .._version import __version__
from .commands import COMMANDS

# -- entry point ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convengine",
        description="2-D convolution with pluggable backends: see which run on this machine and which one a problem gets.",
    )
    parser.add_argument("--version", action="version", version=f"convengine {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text, arguments, fn in COMMANDS:
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        arguments(sub)
        sub.set_defaults(handler=fn)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from . import info, models, bench, predict  # noqa: F401, I001  (importing them registers their commands, in this order in --help)

    from ..core.errors import BackendError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (BackendError, ValueError, TypeError, OSError, ImportError) as exc:  # ImportError: an optional extra is missing
        print(f"convengine {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
