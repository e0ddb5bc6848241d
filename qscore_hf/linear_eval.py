"""Linear evaluation with Q-Score (SPEC §5): frozen features, a linear probe, and how well Q-Score predicts which
evaluation samples the probe gets right.

``run_linear_eval`` writes into ``out_dir`` (atomically: the folder appears complete or not at all):

- ``report.json``: model, data set, splits and sizes, probe settings, top-1, the Q-Score metrics (AUPRC with correct
  samples as positives, AUPRC with misclassified samples as positives, AUROC and its 95 % interval), the base rates,
  ``|D|``, the Q-Score settings, ``comparison`` (the same metrics for every label-free baseline and the
  probe-confidence ceiling, a sentence on how Q-Score compares and a note when too few samples are misclassified),
  ``degeneracy`` (empty-``S_i`` fraction, ``|D|``, never-active features and a warning when Q-Score is degenerate)
  and the command line;
- ``per_sample.parquet``: ``row_id, label, prediction, correct, q_score, num_selected`` and one column per baseline
  (``l2_norm, hoyer_sparsity, max_zscore, knn_density, probe_confidence``) per evaluation sample;
- ``qscore_hist_correct_vs_misclassified.png`` and ``pr_curve.png`` (every score's precision-recall curves);
- ``model_card_results.json`` when the model is not a local folder with a ``README.md`` model card; otherwise the
  card's ``model-index`` gets the linear-probe top-1 and the Q-Score AUPRC.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from huggingface_hub import EvalResult, ModelCard

from .calibration import DEFAULT_COVERAGE, calibrate_eps, is_auto
from .cards import card_title, report_eval_results
from .comparison import compare_scores, scores_with_baselines
from .degeneracy import degeneracy_report
from .data import ImageDataset, load_image_dataset
from .data_pipelines import DEFAULT_DATA_PIPELINE
from .features import FeatureSet, count_activation_stats, default_cache_dir, extract_features, feature_chunks
from .io_utils import atomic_directory, atomic_write_text, check_output_folder
from .metrics import misclassification_metrics
from .modeling_qscore import QScoreModel
from .plots import plot_pr_curves, plot_qscore_histograms
from .probe import Optimizer, train_linear_probe
from .score import ActivationStats, qscore_details
from .sharded_scoring import (
    check_sharded_pipeline,
    extract_all_shards,
    is_main_process,
    launched_processes,
    share_from_main,
    use_sharding,
)

__all__ = ["CARD_RESULTS_FILE", "PER_SAMPLE_FILE", "PLOT_FILES", "REPORT_FILE", "run_linear_eval"]

REPORT_FILE = "report.json"
PER_SAMPLE_FILE = "per_sample.parquet"
CARD_RESULTS_FILE = "model_card_results.json"
PLOT_FILES = {"histogram": "qscore_hist_correct_vs_misclassified.png", "pr_curve": "pr_curve.png"}


def _load_split(dataset: str, split: str, image_column: str | None, label_column: str | None,
                max_samples: int | None, **options: Any) -> ImageDataset:  # fmt: skip
    loaded = load_image_dataset(dataset, split, image_column, label_column, max_samples=max_samples, **options)
    if loaded.label_column is None:
        raise ValueError(
            f"split {split!r} of data set {dataset!r} has no label column; a linear probe needs class labels. "
            "Name it with --label-column."
        )
    return loaded


def _activation_stats(model: QScoreModel, train: FeatureSet, eps: float | str | None) -> tuple[ActivationStats, str]:
    """The model's saved statistics, or (label-free) ones counted on the training features when it has none or when
    ``eps`` overrides the model's (``"auto"``: calibrated on the training features first). Sets the model config's
    eps to the one used."""
    if eps is None and int(model.activation_stats.num_samples) > 0 and not is_auto(model.config.qscore_eps):
        return model.activation_stats, "model"
    if eps is not None:
        model.config.qscore_eps = eps
    if is_auto(model.config.qscore_eps):
        model.config.qscore_eps = calibrate_eps(train.features)
        model.config.qscore_eps_calibration = {"coverage": DEFAULT_COVERAGE, "num_samples": len(train)}
    return count_activation_stats(train.features, model.config.qscore_eps), "train_features"


def _qscores(features: np.ndarray, discriminative: torch.Tensor, model: QScoreModel) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample Q-Scores (float64 holding the float32 results) and ``|S_i|`` of every row, chunk by chunk."""
    scores, sizes = [], []
    for chunk in feature_chunks(features):
        details = qscore_details(chunk, discriminative, model.config.qscore_eps, model.config.qscore_normalize)
        scores.append(details.q_scores.numpy())
        sizes.append(details.num_selected.numpy())
    return np.concatenate(scores).astype(np.float64), np.concatenate(sizes)


def _update_model_card(readme: Path, results: list[dict[str, Any]]) -> None:
    """Add (or replace: same task, data set, split and metric) the results in the card's ``model-index``."""
    card = ModelCard.load(readme)
    new = [EvalResult(**result) for result in results]
    replaced = {(r.task_type, r.dataset_type, r.dataset_split, r.metric_type) for r in new}
    kept = [
        r for r in (card.data.eval_results or [])
        if (r.task_type, r.dataset_type, r.dataset_split, r.metric_type) not in replaced
    ]  # fmt: skip
    card.data.eval_results = kept + new
    card.data.model_name = card.data.model_name or card_title(card) or readme.parent.name
    atomic_write_text(readme, str(card))


def _headline(metrics: dict[str, float]) -> dict[str, float]:
    return {
        "top1": metrics["accuracy"],
        "auprc_correct": metrics["auprc_correct"],
        "auprc_misclassified": metrics["auprc_misclassified"],
        "auroc": metrics["auroc"],
        "auroc_ci": metrics["auroc_ci"],
        "base_rate_correct": metrics["accuracy"],
        "base_rate_misclassified": metrics["misclassified_rate"],
    }


def _qscore_summary(model: QScoreModel, stats: ActivationStats, stats_source: str, discriminative: torch.Tensor,
                    q_scores: np.ndarray, num_selected: np.ndarray, correct: np.ndarray) -> dict[str, Any]:  # fmt: skip
    """The Q-Score settings, where ``D`` came from, and mean scores of correct and misclassified samples."""
    return {
        "eps": model.config.qscore_eps,
        "eps_calibration": model.config.qscore_eps_calibration,
        "normalize": model.config.qscore_normalize,
        "p_lo": model.config.qscore_p_lo,
        "p_hi": model.config.qscore_p_hi,
        "num_discriminative": int(discriminative.numel()),
        "activation_stats_source": stats_source,
        "activation_stats_samples": int(stats.num_samples),
        "num_empty_selection": int(np.sum(num_selected == 0)),
        "mean_correct": float(q_scores[correct].mean()),
        "mean_misclassified": float(q_scores[~correct].mean()),
    }


def _write_outputs(out_dir: str | os.PathLike, report: dict[str, Any], per_sample: dict[str, np.ndarray],
                   card_results: list[dict[str, Any]] | None) -> None:  # fmt: skip
    """Report, per-sample parquet, plots (and the model-index results when there is no card) into ``out_dir``,
    atomically."""
    q_scores, correct = per_sample["q_score"], per_sample["correct"]
    with atomic_directory(out_dir, keep_other_files=False) as tmp:
        pq.write_table(pa.table({name: pa.array(values) for name, values in per_sample.items()}), tmp / PER_SAMPLE_FILE)
        plot_qscore_histograms(q_scores, correct, tmp / PLOT_FILES["histogram"])
        scores = {name: per_sample[name] for name in report["comparison"]["scores_order"]}
        plot_pr_curves(scores, correct, tmp / PLOT_FILES["pr_curve"])
        if card_results is not None:
            note = "Not written into a README.md model card; add them with huggingface_hub.EvalResult(**result)."
            results = {"model": report["model"], "note": note, "eval_results": card_results}
            (tmp / CARD_RESULTS_FILE).write_text(json.dumps(results, indent=2))
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2))


def run_linear_eval(
    model_name_or_path: str | os.PathLike,
    dataset: str,
    out_dir: str | os.PathLike,
    train_split: str = "train",
    eval_split: str = "test",
    image_column: str | None = None,
    label_column: str | None = None,
    max_samples: int | None = None,
    epochs: int = 100,
    optimizer: Optimizer = "sgd",
    lr: float | None = None,
    weight_decay: float | None = None,
    probe_batch_size: int = 256,
    batch_size: int = 256,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    seed: int = 0,
    update_model_card: bool = True,
    progress: bool = True,
    command: str | None = None,
    eps: float | str | None = None,
    knn_k: int = 10,
    shard_rows: int | None = None,
    data_pipeline: str = DEFAULT_DATA_PIPELINE,
    allow_downloads: bool = False,
    encode_labels: bool = False,
) -> dict[str, Any]:
    """Linear-probe a frozen ``QScoreModel`` and measure how well Q-Score predicts its mistakes; returns the report.

    Args:
        model_name_or_path: local folder or Hub id of a ``QScoreModel``, a transformers vision repo or a timm repo
            (anything ``QScoreModel.from_pretrained`` loads).
        dataset: a data set accepted by ``qscore_hf.data.load_image_dataset`` (``digits``, ``fashion_mnist``, a
            local folder or file, a Hub id).
        out_dir: output folder (see the module docstring for its files).
        train_split, eval_split: the probe is trained on the first and evaluated on the second.
        image_column, label_column: column names; found automatically by default.
        max_samples: use at most this many rows of each split.
        epochs, optimizer, lr, weight_decay, probe_batch_size: probe settings (``qscore_hf.probe``).
        batch_size: images per forward pass of the encoder.
        dtype: autocast dtype of the encoder (e.g. ``torch.bfloat16``); ``None`` for full precision.
        device: where the encoder and the probe run; the GPU when available by default.
        num_workers: DataLoader workers for decoding images.
        cache_dir: feature cache folder; ``qscore_hf.features.default_cache_dir()`` by default.
        revision: Hub revision of the model.
        seed: seed of the probe.
        update_model_card: write the results into a local model folder's ``README.md`` ``model-index``.
        progress: show progress bars.
        command: the command line to record in the report.
        eps: score with this eps instead of the model's (``"auto"``: calibrated on the training features); the
            statistics are then counted on the training features.
        knn_k: neighbours of the ``knn_density`` baseline (against the training features).
        shard_rows: cache the features in resumable shards of this many rows (a multiple of ``batch_size``). Under
            ``accelerate launch`` / ``torchrun`` this is always done (32 batches a shard by default) and the processes
            split the shards (``qscore_hf.sharded_scoring``); the main process does the rest and every process
            returns its report.
        data_pipeline: ``"pil"`` (images decoded and preprocessed in the loader), ``"tensor"`` (decoded once into
            a memory-mapped array, preprocessed per batch on ``device``; see ``qscore_hf.features.iter_features``) or
            ``"auto"`` (default: tensor where it can serve, for each split, else pil with one line saying why;
            always pil with sharded extraction).
        allow_downloads: fetch an image column of http(s) URLs (``qscore_hf.data.load_image_dataset``).
        encode_labels: map string labels to class indices by the training split's sorted names (the evaluation
            split's labels must be among them); the report lists them as ``label_names``.

    The activation statistics that define the discriminative features ``D`` are the model's saved ones; a model
    without any gets them counted (label-free) on the training split's features.
    """
    started = time.time()
    check_output_folder(out_dir)  # before the work: a folder holding what qscore-hf did not write is refused
    model = QScoreModel.from_pretrained(model_name_or_path, revision=revision)
    columns = (image_column, label_column, max_samples)
    splits = {"train": _load_split(dataset, train_split, *columns, allow_downloads=allow_downloads,
                                   encode_labels=encode_labels)}  # fmt: skip
    names = splits["train"].class_names if encode_labels else None  # one mapping for both splits
    splits["eval"] = _load_split(dataset, eval_split, *columns, allow_downloads=allow_downloads,
                                 encode_labels=names if names is not None else encode_labels)  # fmt: skip
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    processes = launched_processes()  # under accelerate launch / torchrun the processes share the extraction
    data_pipeline = check_sharded_pipeline(shard_rows, data_pipeline)
    if use_sharding(shard_rows):
        feats = {name: extract_all_shards(model, split, batch_size, device, dtype, num_workers, cache, progress,
                                          shard_rows=shard_rows) for name, split in splits.items()}  # fmt: skip
    else:
        feats = {name: extract_features(model, split, batch_size, device, dtype, num_workers, cache, progress,
                                        data_pipeline=data_pipeline) for name, split in splits.items()}  # fmt: skip
    if not is_main_process():  # the main process trains, scores and writes; the others wait for its report
        return share_from_main(None)
    train, evaluation = feats["train"], feats["eval"]

    stats, stats_source = _activation_stats(model, train, eps)
    discriminative = stats.discriminative(model.config.qscore_p_lo, model.config.qscore_p_hi)
    q_scores, num_selected = _qscores(evaluation.features, discriminative, model)

    num_classes = max(splits["train"].num_classes or 0, int(train.labels.max()) + 1, int(evaluation.labels.max()) + 1)
    probe = train_linear_probe(
        train.features, train.labels, epochs=epochs, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
        batch_size=probe_batch_size, num_classes=num_classes, device=device, seed=seed, progress=progress,
    )  # fmt: skip
    logits = probe.logits(evaluation.features)
    predictions = logits.argmax(axis=1).astype(np.int64)
    correct = predictions == evaluation.labels
    metrics = misclassification_metrics(q_scores, correct.astype(np.int64))
    scores = scores_with_baselines(q_scores, evaluation.features, train.features, logits, k=knn_k)
    comparison = compare_scores(scores, correct)

    readme = Path(model_name_or_path) / "README.md"
    card_target = "README.md" if update_model_card and readme.is_file() else CARD_RESULTS_FILE
    report = {
        "model": str(model_name_or_path),
        "revision": revision,
        "backbone": model.config.backbone,
        "dataset": dataset,
        "train_split": train_split,
        "eval_split": eval_split,
        "image_column": splits["train"].image_column,
        "label_column": splits["train"].label_column,
        "label_names": splits["train"].class_names,
        "max_samples": max_samples,
        "num_train": len(train),
        "num_eval": len(evaluation),
        "num_features": train.num_features,
        "num_classes": num_classes,
        "probe": probe.settings.to_dict(),
        "train_top1": float(np.mean(probe.predict(train.features) == train.labels)),
        **_headline(metrics),
        "qscore": _qscore_summary(model, stats, stats_source, discriminative, q_scores, num_selected, correct),
        "comparison": {**comparison.to_dict(), "scores_order": list(scores), "knn_k": knn_k,
                       "knn_reference": f"{train_split} features ({len(train)} rows)"},
        "degeneracy": degeneracy_report(num_selected, int(discriminative.numel()), stats, model.config.qscore_eps,
                                        eps_calibrated=model.config.qscore_eps_calibration is not None),
        "feature_autocast_dtype": None if dtype is None else str(dtype),
        "feature_cache": {name: str(feature_set.cache_path) for name, feature_set in feats.items()},
        "model_card_results": card_target,
        "files": {"report": REPORT_FILE, "per_sample": PER_SAMPLE_FILE, **PLOT_FILES},
        "command": command,
        "num_processes": processes,
        "seconds": round(time.time() - started, 2),
    }
    per_sample = {
        "row_id": evaluation.row_ids, "label": evaluation.labels, "prediction": predictions,
        "correct": correct, "num_selected": num_selected, **scores,
    }  # fmt: skip
    eval_results = report_eval_results(report)
    _write_outputs(out_dir, report, per_sample, eval_results if card_target == CARD_RESULTS_FILE else None)
    if card_target == "README.md":
        _update_model_card(readme, eval_results)
    return share_from_main(report)
