"""The ``convengine`` command.

Each sub-command is a function decorated with :func:`command`, which registers its name,
help and argument setup; adding one is a new decorated function, nothing else.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Optional, Sequence

from . import __version__

_COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = []


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    """Register ``fn(args) -> exit code`` as ``convengine NAME``."""

    def decorate(fn: Callable[[argparse.Namespace], int]):
        _COMMANDS.append((name, help, arguments, fn))
        return fn

    return decorate


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _int_or_pair(text: str):
    values = _ints(text)
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected an int or a pair 'h,w', got {text!r}")
    return values[0] if len(values) == 1 else values


def _padding(text: str):
    if text in ("same", "valid"):
        return text
    values = _ints(text)
    if len(values) not in (1, 2, 4):
        raise argparse.ArgumentTypeError(f"expected 'same', 'valid', P, 'PH,PW' or 'TOP,BOTTOM,LEFT,RIGHT', got {text!r}")
    return values[0] if len(values) == 1 else values


def _policy(text: str):
    return tuple(text.split(",")) if "," in text else text


# -- backends ---------------------------------------------------------------------------------


def _backends_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


@command("backends", "list registered backends, their availability and why not", _backends_args)
def _backends(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from . import list_backends

    infos = list_backends()
    if args.json:
        print(json.dumps([asdict(i) for i in infos], indent=2))
        return 0
    rows = [("name", "device", "class", "available", "plugin", "reason")]
    rows += [(i.name, i.device, i.numerical_class, "yes" if i.available else "no", i.plugin, i.reason or "") for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    for r in rows:
        print(("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1]).rstrip())
    return 0


# -- explain ----------------------------------------------------------------------------------


def _explain_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, type=_ints, metavar="N,C,H,W", help="input shape, e.g. 1,64,56,56")
    parser.add_argument("--weight", required=True, type=_ints, metavar="O,C,KH,KW",
                        help="weight shape (out channels, in channels / groups, kernel h, kernel w), e.g. 64,64,3,3")
    parser.add_argument("--stride", type=_int_or_pair, default=1, metavar="S|SH,SW")
    parser.add_argument("--padding", type=_padding, default=0, metavar="P|PH,PW|T,B,L,R|same|valid")
    parser.add_argument("--dilation", type=_int_or_pair, default=1, metavar="D|DH,DW")
    parser.add_argument("--groups", type=int, default=1)
    parser.add_argument("--bias", action="store_true", help="the convolution has a bias")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--policy", type=_policy, default="auto",
                        help="auto (cost model, default), tune (measure), a backend name, or a comma-separated preference list")
    parser.add_argument("--max-rel-error", type=float, default=None, help="accuracy budget; e.g. 1e-6 excludes lossy backends")


@command("explain", "show which backend a problem would run on, and why", _explain_args)
def _explain(args: argparse.Namespace) -> int:
    from .engine import Engine

    engine = Engine(policy=args.policy, max_rel_error=args.max_rel_error)
    decision = engine.explain(args.input, args.weight, True if args.bias else None, stride=args.stride,
                              padding=args.padding, dilation=args.dilation, groups=args.groups, dtype=args.dtype)
    print(decision)
    return 0


# -- entry point ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convengine",
        description="2-D convolution with pluggable backends: see which run on this machine and which one a problem gets.",
    )
    parser.add_argument("--version", action="version", version=f"convengine {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text, arguments, fn in _COMMANDS:
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        arguments(sub)
        sub.set_defaults(handler=fn)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from . import cli_bench, cli_models  # noqa: F401  (register bench; run, summary, tune)

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, TypeError, OSError) as exc:
        print(f"convengine {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
