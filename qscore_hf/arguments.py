"""Numeric command-line values with their ranges: argparse ``type=`` callables that refuse a value outside its range
in one line naming the range (``argument --flag-lowest: expected an integer >= 0, got -5``).

Light on purpose (no torch): argument errors are answered before anything heavy is imported.
"""

from __future__ import annotations

import argparse
import math
from typing import Union

__all__ = ["RangedNumber", "count", "fraction", "number", "percentile", "positive", "positive_int", "seed"]

Number = Union[int, float]


class RangedNumber:
    """An ``int`` or ``float`` argument type within ``[low, high]`` (``low_open``/``high_open`` exclude the bound)."""

    def __init__(self, kind: type, low: Number | None = None, high: Number | None = None, *, low_open: bool = False,
                 high_open: bool = False) -> None:  # fmt: skip
        self.kind, self.low, self.high, self.low_open, self.high_open = kind, low, high, low_open, high_open
        self.__name__ = self.describe()  # argparse names the type in its own errors

    def describe(self) -> str:
        kind = "an integer" if self.kind is int else "a number"
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return f"{kind} {' and '.join(bounds)}".strip()

    def contains(self, value: Number) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))

    def __call__(self, text: str) -> Number:
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text}") from None
        if isinstance(value, float) and not math.isfinite(value) or not self.contains(value):
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text}")
        return value

    def __repr__(self) -> str:
        return f"RangedNumber({self.describe()})"


def count() -> RangedNumber:
    """An integer >= 0: workers, K images to draw, 0 meaning none or "all" where the option says so."""
    return RangedNumber(int, 0)


def positive_int(high: int | None = None) -> RangedNumber:
    """An integer >= 1 (batch sizes, epochs, sample counts, image sizes), at most ``high``."""
    return RangedNumber(int, 1, high)


def positive(high: float | None = None) -> RangedNumber:
    """A number > 0 (learning rates, sizes in MiB)."""
    return RangedNumber(float, 0.0, high, low_open=True)


def number(low: float | None = 0.0, high: float | None = None) -> RangedNumber:
    """A finite number in ``[low, high]`` (weight decay >= 0, warm-up epochs >= 0)."""
    return RangedNumber(float, low, high)


def fraction() -> RangedNumber:
    """A number in (0, 1]."""
    return RangedNumber(float, 0.0, 1.0, low_open=True)


def percentile() -> RangedNumber:
    """A percentile in [0, 100]."""
    return RangedNumber(float, 0.0, 100.0)


def seed() -> RangedNumber:
    """A random seed: NumPy's range, 0 to 2**32 - 1."""
    return RangedNumber(int, 0, 2**32 - 1)

