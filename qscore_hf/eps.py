"""The ``eps`` of SPEC §2 (the threshold ``mu_i + eps * sigma_i``) as a value: its rule and its parsing.

Imports neither torch nor NumPy, so that the command line checks ``--eps`` before loading anything heavy (an argument
error costs a fraction of ``import torch``: bench/startup.py). ``qscore_hf.score`` and ``qscore_hf.calibration``
re-export these names.
"""

from __future__ import annotations

import argparse
import math
import numbers
import sys

__all__ = ["AUTO", "eps_argument", "is_auto", "parse_eps", "validate_eps"]

AUTO = "auto"


def validate_eps(eps: float) -> float:
    """Return ``eps`` (the threshold ``mu_i + eps * sigma_i`` of SPEC §2) as a float, or raise ``ValueError``
    for anything but a finite number >= 0: every entry point that takes an ``eps`` calls this."""
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    if torch is not None and isinstance(eps, torch.Tensor) and eps.numel() == 1:
        eps = eps.item()
    # NumPy's numbers are registered as numbers.Real, except its bool, which (like bool) is refused
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise ValueError(f"eps must be a finite number >= 0 (default 4; SPEC §2); got {eps!r}.")
    value = float(eps)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"eps must be a finite number >= 0 (default 4; SPEC §2); got {eps!r}.")
    return value


def is_auto(eps: object) -> bool:
    """Whether ``eps`` asks for calibration (the string ``"auto"``, any case)."""
    return isinstance(eps, str) and eps.strip().lower() == AUTO


def parse_eps(value: float | str) -> float | str:
    """``"auto"`` or a finite number >= 0 (a string from a command line or config is converted): the rule of
    ``validate_eps``, which ``qscore`` applies, so that ``--eps 0`` and ``qscore(eps=0)`` agree."""
    if is_auto(value):
        return AUTO
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"eps must be a finite number >= 0 or 'auto'; got {value!r}.") from None
    try:
        return validate_eps(number)
    except ValueError:
        raise ValueError(f"eps must be a finite number >= 0 or 'auto'; got {value!r}.") from None


def eps_argument(text: str) -> float | str:
    """``parse_eps`` as an argparse ``type``: a bad value is a usage error naming the option's rule."""
    try:
        return parse_eps(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
