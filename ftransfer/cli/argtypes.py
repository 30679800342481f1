"""argparse value types shared by the CLI's commands: one definition of each rule."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ..client.urls import Url, parse_url
from ..errors import UsageError


def positive(text: str) -> float:
    """A number of seconds (or any quantity) greater than zero."""
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def non_negative(text: str) -> float:
    """A quantity that may be zero (a delay, a jitter)."""
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration(text: str) -> float:
    """A time span greater than zero: seconds, or with a unit (90m, 12h, 1d)."""
    unit = _DURATION_UNITS.get(text[-1:].lower())
    try:
        value = float(text[:-1] if unit is not None else text) * (unit or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError("a time such as 3600, 90m, 12h or 1d") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def ranged(low: int, high: int) -> Callable[[str], int]:
    """An integer from ``low`` to ``high``."""

    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}")
        return value

    return parse


port = ranged(0, 65535)
"""A port number (0: pick a free one). A bare int let 70000 wrap to 4464."""


def probability(text: str) -> float:
    """A probability from 0 to 1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def size_bytes(text: str) -> int:
    """A size with an optional K/M/G/T suffix (binary): 10G, 512M, 4096."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    text = text.strip().lower().removesuffix("b").removesuffix("i")
    scale = units.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in units else text
    try:
        value = int(float(digits) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def rate(text: str) -> int:
    """A rate in bytes per second with an optional K/M/G suffix (binary, as curl's
    --limit-rate): 20M, 500K; more than zero."""
    value = size_bytes(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("a rate must be more than 0 bytes per second")
    return value


def remote(text: str, *, allow_port_zero: bool = False) -> Url:
    """A REMOTE argument (``[SCHEME://]HOST[:PORT][/PATH]``); a malformed one is a
    usage error (exit 2)."""
    try:
        return parse_url(text, allow_port_zero=allow_port_zero)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
