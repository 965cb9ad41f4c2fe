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

