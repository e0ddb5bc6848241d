"""How images reach the model, and which way a run takes.

``"pil"``: each image decoded and preprocessed (or augmented) in the loader's processes. ``"tensor"``: the data set
decoded once into a memory-mapped uint8 array (``qscore_hf.decoded``), each batch preprocessed or augmented on the
device (``qscore_hf.batch_views`` for a pre-training recipe). ``"auto"``, the default: the tensor pipeline wherever it
can serve the run (the two train and score alike: ``bench/results/pipeline_equivalence_*.json``), the pil pipeline
otherwise, said in one line naming why.

Each case the tensor pipeline cannot serve raises ``TensorPipelineRefused`` where it is found (a streamed data set,
an array over the size limit or the free disk space, images of several sizes under ``auto``, a recipe op without a
kornia translation, sharded extraction); ``tensor_or_none`` turns that refusal into the fallback for ``"auto"`` and
lets it through for ``"tensor"``, so that each rule is written once.
"""

from __future__ import annotations

from typing import Callable, TypeVar

__all__ = ["DATA_PIPELINES", "DEFAULT_DATA_PIPELINE", "TensorPipelineRefused", "check_data_pipeline", "tensor_or_none"]

DATA_PIPELINES = ("auto", "pil", "tensor")
DEFAULT_DATA_PIPELINE = "auto"

T = TypeVar("T")


class TensorPipelineRefused(ValueError):
    """The tensor pipeline cannot serve this run: the message says what to do; ``reason`` is the short cause that
    ``"auto"`` names when it falls back to the pil pipeline."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_data_pipeline(data_pipeline: str) -> None:
    """``ValueError`` naming ``data_pipeline`` unless it is one of ``DATA_PIPELINES``."""
    if data_pipeline not in DATA_PIPELINES:
        raise ValueError(f"unknown data pipeline {data_pipeline!r}; choose one of {', '.join(DATA_PIPELINES)}.")


def tensor_or_none(data_pipeline: str, prepare: Callable[[], T], say: Callable[[str], object] = print) -> T | None:
    """What ``prepare()`` builds for the tensor pipeline (the decoded images, a recipe's batch views...) when
    ``data_pipeline`` is ``"tensor"`` or ``"auto"``; ``None`` (the pil pipeline) for ``"pil"``, and for ``"auto"`` when
    ``prepare`` raises ``TensorPipelineRefused``: then ``say`` gets the one line naming why. ``"tensor"`` lets the
    refusal through."""
    check_data_pipeline(data_pipeline)
    if data_pipeline == "pil":
        return None
    try:
        return prepare()
    except TensorPipelineRefused as refusal:
        if data_pipeline == "tensor":
            raise
        say(f"data pipeline: pil ({refusal.reason})")
        return None
