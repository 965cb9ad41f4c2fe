"""Argument types shared by the sub-commands: shapes, paddings, policies as typed on a command line."""

from __future__ import annotations

import argparse


def ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def int_or_pair(text: str):
    values = ints(text)
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected an int or a pair 'h,w', got {text!r}")
    return values[0] if len(values) == 1 else values


def padding(text: str):
    if text in ("same", "valid"):
        return text
    values = ints(text)
    if len(values) not in (1, 2, 4):
        raise argparse.ArgumentTypeError(f"expected 'same', 'valid', P, 'PH,PW' or 'TOP,BOTTOM,LEFT,RIGHT', got {text!r}")
    return values[0] if len(values) == 1 else values


def policy(text: str):
    return tuple(text.split(",")) if "," in text else text


#: What ``--max-extra-weight-mib`` leaves alone: the engine's own default budget.
ENGINE_DEFAULT = "default"
BUDGET_HELP = ("weight-memory budget: MiB a backend's prepared weights may hold beyond a layer's own (default 20; "
               "'none': no budget); keeps Winograd's transforms and FFT's spectra off large layers")


def add_weight_budget(parser: argparse.ArgumentParser) -> None:
    """The ``--max-extra-weight-mib`` option (``explain``, ``run``)."""
    parser.add_argument("--max-extra-weight-mib", type=mebibytes_or_none, default=ENGINE_DEFAULT, metavar="MIB|none",
                        help=BUDGET_HELP)


def weight_budget(args: argparse.Namespace) -> dict:
    """The ``Engine`` keyword ``--max-extra-weight-mib`` asks for: none when it was not given."""
    chosen = args.max_extra_weight_mib
    return {} if chosen == ENGINE_DEFAULT else {"max_extra_weight_bytes": chosen}


def mebibytes_or_none(text: str):
    """``--max-extra-weight-mib``: a number of MiB (an int of bytes for the engine), ``none`` (no budget)."""
    if text == ENGINE_DEFAULT:  # (argparse passes a string default through the type too)
        return ENGINE_DEFAULT
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of MiB >= 0 or 'none', got {text!r}")
    return int(value * (1 << 20))
