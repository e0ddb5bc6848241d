"""One pass over a data set to store activation statistics (SPEC §3) in a converted model."""

from __future__ import annotations

from ..modeling_qscore import QScoreModel
from ..score import ActivationStats

__all__ = ["compute_stats"]


def compute_stats(
    model: QScoreModel,
    dataset: str,
    split: str = "train",
    batch_size: int = 64,
    max_samples: int | None = None,
    progress: bool = True,
) -> ActivationStats:
    """Recompute ``model.activation_stats`` from ``dataset`` so Q-Scores use its discriminative features.

    ``dataset`` is anything ``qscore_hf.data.load_image_dataset`` resolves: a local image folder, a built-in name
    (``digits``, ``fashion_mnist``), parquet, a saved ``datasets`` folder or a Hub id. Images go through the model's
    own image processor; the pass runs on the GPU when there is one.
    """
    from ..data import load_image_dataset
    from ..features import iter_features

    images = load_image_dataset(dataset, split=split, max_samples=max_samples)
    stats = model.activation_stats
    stats.reset()
    for batch in iter_features(model, images, batch_size=batch_size, progress=progress):
        stats.update(batch.features)
    model.config.activation_stats_dataset = dataset  # saved with the config: scoring other data says so
    return stats
