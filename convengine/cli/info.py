"""``convengine backends`` and ``convengine explain``: what runs here, and which backend a problem gets."""

from __future__ import annotations

import argparse
import json

from ..runtime.tables import format_table
from . import arguments
from .commands import command

# -- backends ---------------------------------------------------------------------------------


def _backends_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


@command("backends", "list registered backends, their availability and why not", _backends_args)
def backends(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ..core.registry import list_backends

    infos = list_backends()
    if args.json:
        print(json.dumps([asdict(i) for i in infos], indent=2))
        return 0
    rows = [(i.name, i.device, i.numerical_class, "yes" if i.available else "no", i.plugin, i.reason or "") for i in infos]
    print(format_table(("name", "device", "class", "available", "plugin", "reason"), rows))
    return 0


# -- explain ----------------------------------------------------------------------------------


def _explain_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, type=arguments.ints, metavar="N,C,H,W", help="input shape, e.g. 1,64,56,56")
    parser.add_argument("--weight", required=True, type=arguments.ints, metavar="O,C,KH,KW",
                        help="weight shape (out channels, in channels / groups, kernel h, kernel w), e.g. 64,64,3,3")
    parser.add_argument("--stride", type=arguments.int_or_pair, default=1, metavar="S|SH,SW")
    parser.add_argument("--padding", type=arguments.padding, default=0, metavar="P|PH,PW|T,B,L,R|same|valid")
    parser.add_argument("--dilation", type=arguments.int_or_pair, default=1, metavar="D|DH,DW")
    parser.add_argument("--groups", type=int, default=1)
    parser.add_argument("--bias", action="store_true", help="the convolution has a bias")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--policy", type=arguments.policy, default="auto",
                        help="auto (cost model, default), tune (measure), a backend name, or a comma-separated preference list")
    parser.add_argument("--max-rel-error", type=float, default=None, help="accuracy budget; e.g. 1e-6 excludes lossy backends")
    arguments.add_weight_budget(parser)


@command("explain", "show which backend a problem would run on, and why", _explain_args)
def _explain(args: argparse.Namespace) -> int:
    from ..core.engine import Engine

    budget = arguments.weight_budget(args)
    engine = Engine(policy=args.policy, max_rel_error=args.max_rel_error, **budget)
    decision = engine.explain(args.input, args.weight, True if args.bias else None, stride=args.stride,
                              padding=args.padding, dilation=args.dilation, groups=args.groups, dtype=args.dtype)
    print(decision)
    return 0

