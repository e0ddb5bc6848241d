"""qscore-hf: Q-Score (label-free representation quality of self-supervised models) for Hugging Face.

Importing the package registers ``QScoreConfig``/``QScoreModel``/``QScoreImageProcessor`` with transformers'
Auto classes and, in this process, the ``evaluate`` metric name ``"qscore"`` (nothing is written to disk). So that
``import qscore_hf`` (and ``qscore-hf --help``) costs next to nothing, each Auto registration runs when its Auto class
is first imported, the metric name when ``evaluate.loading`` is, and every public name, torch included, is imported
on first use.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from .lazy_exports import lazy_exports
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .configuration_qscore import QScoreConfig
    from .calibration import calibrate_eps
    from .convert import convert_checkpoint
    from .image_processing_qscore import QScoreImageProcessor
    from .metrics import misclassification_metrics
    from .modeling_qscore import QScoreModel, QScoreModelOutput, WeightsMismatchError
    from .regularizer import QScoreRegularizer, QScoreRegularizerOutput
    from .score import (
        ActivationStats,
        NegativeFeaturesWarning,
        QScoreDetails,
        highly_activating,
        qscore,
        qscore_details,
    )

__version__ = "0.1.0"

# public name -> module that defines it, imported on first access (PEP 562)
_LAZY = {
    "QScoreConfig": ".configuration_qscore",
    "QScoreImageProcessor": ".image_processing_qscore",
    "QScoreModel": ".modeling_qscore",
    "QScoreModelOutput": ".modeling_qscore",
    "WeightsMismatchError": ".modeling_qscore",
    "ActivationStats": ".score",
    "NegativeFeaturesWarning": ".score",
    "QScoreDetails": ".score",
    "highly_activating": ".score",
    "qscore": ".score",
    "qscore_details": ".score",
    "QScoreRegularizer": ".regularizer",
    "QScoreRegularizerOutput": ".regularizer",
    "misclassification_metrics": ".metrics",
    "convert_checkpoint": ".convert",
    "calibrate_eps": ".calibration",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


def _register_config(auto: Any) -> None:
    from .configuration_qscore import QScoreConfig

    auto.AutoConfig.register(QScoreConfig.model_type, QScoreConfig, exist_ok=True)


def _register_model(auto: Any) -> None:
    from .configuration_qscore import QScoreConfig
    from .modeling_qscore import QScoreModel

    auto.AutoModel.register(QScoreConfig, QScoreModel, exist_ok=True)


def _register_image_processor(auto: Any) -> None:
    from .configuration_qscore import QScoreConfig
    from .image_processing_qscore import QScoreImageProcessor

    auto.AutoImageProcessor.register(QScoreConfig, fast_image_processor_class=QScoreImageProcessor, exist_ok=True)


# (module of transformers, registration): each runs once its module of transformers has executed and none of ours is
# half-imported. A registration imports our modules (configuration, modeling, image processing), which import more
# of ours (backbones...) and transformers, which can import the Auto modules in turn (the image processor's module
# imports transformers' image processing, whose docstrings import the Auto model module): run while one of ours is
# half-imported, it could import that one half-done and break the import of transformers' module that triggered it.
_REGISTRATIONS: list[tuple[str, Callable[[Any], None]]] = [
    ("transformers.models.auto.configuration_auto", _register_config),
    ("transformers.models.auto.modeling_auto", _register_model),
    ("transformers.models.auto.image_processing_auto", _register_image_processor),
]
_OUR_PREFIX = f"{__name__}."


def _initializing(name: str) -> bool:
    """Whether a module is still executing (e.g. importing what imports the module being asked about)."""
    module = sys.modules.get(name)
    return module is not None and bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _run_registrations(just_imported: str | None = None) -> None:
    """Run each registration whose transformers module is imported, unless one of our modules is half-imported
    (then they run when the last of those has executed)."""
    ours = [name for name in list(sys.modules) if name.startswith(_OUR_PREFIX) and name != just_imported]
    if any(_initializing(name) for name in ours):
        return
    progress = True
    while progress:  # again after each registration: its imports may have imported another Auto module
        progress = False
        for entry in list(_REGISTRATIONS):
            if entry not in _REGISTRATIONS:  # done meanwhile, by a registration's own imports
                continue
            theirs, register = entry
            if theirs == just_imported or (theirs in sys.modules and not _initializing(theirs)):
                _REGISTRATIONS.remove(entry)
                register(sys.modules[theirs])
                progress = True


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """A post-import hook: finds the spec of a watched module (an Auto module still to register with, or one of
    ours) with the other finders and wraps its loader's ``exec_module`` so that the registrations waiting for it
    run right after it executes. (``find_spec`` is also called without importing, by ``importlib.util.find_spec``:
    nothing happens until the module executes.)"""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if not name.startswith(_OUR_PREFIX) and not any(name == theirs for theirs, _ in _REGISTRATIONS):
            return None
        spec = next(
            (found for finder in sys.meta_path if finder is not self and hasattr(finder, "find_spec")
             for found in [finder.find_spec(name, path, target)] if found is not None),
            None,
        )  # fmt: skip
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run_module(module)
            _run_registrations(just_imported=name)
            if not _REGISTRATIONS and self in sys.meta_path:
                sys.meta_path.remove(self)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


_run_registrations()
if _REGISTRATIONS:
    sys.meta_path.insert(0, _RegisterOnImport())


def _register_evaluate_metric() -> None:
    from .evaluate_metric import register_metric_name

    register_metric_name()  # process-local: evaluate.load("qscore") finds the packaged module; no files written


_register_evaluate_metric()
