"""qscore-hf: Q-Score (label-free representation quality of self-supervised models) for Hugging Face.

Importing the package registers ``QScoreConfig``/``QScoreModel``/``QScoreImageProcessor`` with transformers'
Auto classes and the ``evaluate`` metric ``"qscore"``. So that ``import qscore_hf`` (and ``qscore-hf --help``) costs
next to nothing, each registration runs when its Auto class (or ``evaluate``) is first imported, and every public
name, torch included, is imported on first use.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import warnings
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .configuration_qscore import QScoreConfig
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
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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


def _register_evaluate_metric(evaluate: Any = None) -> None:
    from .evaluate_metric import install_evaluate_metric

    try:
        install_evaluate_metric()
    except OSError as error:  # a read-only cache must not make the library unusable
        warnings.warn(
            f"could not register the evaluate metric 'qscore' ({error}); load it by path instead: "
            "evaluate.load(str(qscore_hf.evaluate_metric.METRIC_PATH)), or set HF_MODULES_CACHE to a writable folder.",
            stacklevel=2,
        )


# module -> what registers qscore_hf with it, run as soon as the module is imported (now, if it already is)
_REGISTRATIONS: dict[str, Callable[[Any], None]] = {
    "transformers.models.auto.configuration_auto": _register_config,
    "transformers.models.auto.modeling_auto": _register_model,
    "transformers.models.auto.image_processing_auto": _register_image_processor,
    "evaluate": _register_evaluate_metric,
}


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Runs a module's registration right after the module is first imported (a post-import hook): finds the
    module's spec with the other finders and wraps its loader's ``exec_module``. ``find_spec`` is also called
    without importing (``importlib.util.find_spec``), so a registration is done only when its module executes."""

    def __init__(self, pending: dict[str, Callable[[Any], None]]) -> None:
        self.pending = pending

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in self.pending:
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
            register = self.pending.pop(name, None)
            if not self.pending and self in sys.meta_path:
                sys.meta_path.remove(self)
            if register is not None:
                register(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _install_registrations() -> None:
    pending = {}
    for name, register in _REGISTRATIONS.items():
        if name in sys.modules:
            register(sys.modules[name])
        else:
            pending[name] = register
    if pending:
        sys.meta_path.insert(0, _RegisterOnImport(pending))


_install_registrations()
