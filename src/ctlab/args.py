"""Argument types the stage commands share: numbers that must be at least 1 or 0, refused by
argparse with its usual message (exit status 2) before any work starts."""

from __future__ import annotations

import argparse


def _bounded_int(least: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, not {value}")
        return value

    parse.__name__ = f"integer >= {least}"
    return parse


positive_int = _bounded_int(1)
non_negative_int = _bounded_int(0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value
