"""The ``evaluate`` metric "qscore": offline from this package, online from a Hub Space.

- Offline, by path: ``evaluate.load(str(qscore_hf.evaluate_metric.METRIC_PATH))``, or by name after
  ``import qscore_hf``: ``evaluate.load("qscore")``. The name works because the import wraps evaluate's module
  factory in this process (when ``evaluate.loading`` is imported, now or later) so that the bare name ``"qscore"``
  resolves to the packaged module; nothing is written into the user's modules cache, and a local ``./qscore``
  folder or ``./qscore.py`` still wins, as evaluate's own rules say.
- Online, anywhere: ``evaluate.load("<org>/qscore")`` after ``qscore-hf publish-metric --repo-id <org>/qscore``
  has pushed the same files (module, card, ``requirements.txt``) to a Hub Space, evaluate's convention for
  community metrics.
"""

from __future__ import annotations

import functools
import importlib.abc
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

__all__ = ["METRIC_FILES", "METRIC_NAME", "METRIC_PATH", "register_metric_name"]

METRIC_NAME = "qscore"
METRIC_PATH = Path(__file__).parent / METRIC_NAME
METRIC_FILES = (f"{METRIC_NAME}.py", "README.md", "requirements.txt")
_LOADING = "evaluate.loading"


def _resolve(path: str) -> str:
    """The packaged module for the bare name, unless a local folder or script of that name exists."""
    if path == METRIC_NAME and not os.path.exists(path) and not os.path.exists(f"{path}.py"):
        return str(METRIC_PATH / f"{METRIC_NAME}.py")
    return path


def _wrap(loading: ModuleType) -> None:
    factory: Callable[..., Any] = loading.evaluation_module_factory
    if getattr(factory, "_qscore_hf", False):
        return

    @functools.wraps(factory)
    def evaluation_module_factory(path: str, *args: Any, **kwargs: Any) -> Any:
        return factory(_resolve(path), *args, **kwargs)

    evaluation_module_factory._qscore_hf = True  # type: ignore[attr-defined]
    loading.evaluation_module_factory = evaluation_module_factory


class _WrapWhenImported(importlib.abc.MetaPathFinder):
    """Wraps ``evaluate.loading`` right after it is first imported (so importing qscore_hf does not import evaluate)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != _LOADING:
            return None
        sys.meta_path.remove(self)
        from importlib.util import find_spec

        spec = find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            _wrap(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def register_metric_name() -> None:
    """Make ``evaluate.load("qscore")`` load the packaged metric in this process (no files are written)."""
    loading = sys.modules.get(_LOADING)
    if loading is not None:
        _wrap(loading)
    elif not any(isinstance(finder, _WrapWhenImported) for finder in sys.meta_path):
        sys.meta_path.insert(0, _WrapWhenImported())
