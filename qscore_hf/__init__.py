"""qscore-hf: Q-Score (label-free representation quality of self-supervised models) for Hugging Face.

Importing the package registers ``QScoreConfig``/``QScoreModel``/``QScoreImageProcessor`` with transformers'
Auto classes and, in this process, the ``evaluate`` metric name ``"qscore"`` (nothing is written to disk).
"""

from __future__ import annotations

from transformers import AutoConfig, AutoImageProcessor, AutoModel

from .configuration_qscore import QScoreConfig
from .convert import convert_checkpoint
from .image_processing_qscore import QScoreImageProcessor
from .metrics import misclassification_metrics
from .modeling_qscore import QScoreModel, QScoreModelOutput, WeightsMismatchError
from .regularizer import QScoreRegularizer, QScoreRegularizerOutput
from .score import ActivationStats, NegativeFeaturesWarning, QScoreDetails, highly_activating, qscore, qscore_details

__version__ = "0.1.0"

__all__ = [
    "ActivationStats",
    "NegativeFeaturesWarning",
    "QScoreConfig",
    "QScoreDetails",
    "QScoreImageProcessor",
    "QScoreModel",
    "QScoreModelOutput",
    "QScoreRegularizer",
    "QScoreRegularizerOutput",
    "WeightsMismatchError",
    "convert_checkpoint",
    "highly_activating",
    "misclassification_metrics",
    "qscore",
    "qscore_details",
]

AutoConfig.register(QScoreConfig.model_type, QScoreConfig, exist_ok=True)
AutoModel.register(QScoreConfig, QScoreModel, exist_ok=True)
AutoImageProcessor.register(QScoreConfig, fast_image_processor_class=QScoreImageProcessor, exist_ok=True)


def _register_evaluate_metric() -> None:
    from .evaluate_metric import register_metric_name

    register_metric_name()  # process-local: evaluate.load("qscore") finds the packaged module; no files written


_register_evaluate_metric()
