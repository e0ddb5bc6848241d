"""A run's settings as values that every experiment tracker accepts.

accelerate hands ``init_trackers(config=...)`` to each tracker as it is: TensorBoard's ``add_hparams`` takes only
int, float, str, bool (or a tensor) and raises on anything else (a tuple, ``None``, a ``Path``), W&B and a JSON log
take only JSON values. So a config goes through :func:`tracker_config` first, whatever field types it gains later.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from os import PathLike
from typing import Any, Union

__all__ = ["TrackerValue", "tracker_config", "tracker_value"]

TrackerValue = Union[bool, int, float, str]


def tracker_value(value: Any) -> TrackerValue:
    """``value`` as a bool, int, float or str: scalars as they are (NumPy scalars and 0-d tensors included), paths
    and enums as their text or value, ``None`` and containers as JSON text (``None`` -> ``"null"``, ``(1, 2)`` ->
    ``"[1, 2]"``), anything else as ``str(value)``."""
    plain = _plain(value)
    if isinstance(plain, float) and not math.isfinite(plain):
        return str(plain)  # JSON has no NaN or infinity
    if isinstance(plain, (bool, int, float, str)):
        return plain
    return json.dumps(plain, sort_keys=True)


def tracker_config(config: Mapping[str, Any]) -> dict[str, TrackerValue]:
    """Every value of ``config`` through :func:`tracker_value`; keys as text."""
    return {str(key): tracker_value(value) for key, value in config.items()}


def _plain(value: Any) -> Any:
    """``value`` as JSON's types: None, bool, int, float, str, list and dict with text keys."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, PathLike):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (set, frozenset)):
        return [_plain(item) for item in sorted(value, key=repr)]
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if hasattr(value, "tolist"):  # NumPy and torch scalars, arrays and tensors
        return _plain(value.tolist())
    return str(value)
