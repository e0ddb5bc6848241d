"""``qscore-hf score``: the Q-Score of every image of a data set (SPEC §2-5), with a summary, plots and a report.

``score_dataset`` writes into ``out_dir`` (atomically: the folder appears complete or not at all):

- ``per_sample.parquet``: ``row_id, q_score, num_selected`` (``|S_i|``), ``top_features`` (indices of the sample's
  top-5 features of ``S_i`` by value, highest first), the label-free baselines ``l2_norm, hoyer_sparsity,
  max_zscore`` (``qscore_hf.baselines``) and ``label`` when the data set has labels; with a probe also
  ``knn_density`` (against the probe's training features), ``probe_confidence``, ``prediction`` and ``correct``;
- ``summary.json``: mean and median Q-Score, the degeneracy report (fraction of samples with an empty ``S_i``, ``|D|``,
  never-active features, and a warning when Q-Score is degenerate), the Q-Score parameters, where the activation
  statistics came from, the model and data set identities, the skipped images and, with a probe, its accuracy,
  AUPRC and AUROC (SPEC §5) and ``comparison``: the same metrics for every baseline and a one-sentence verdict;
- ``qscore_hist.png``; with a probe ``qscore_hist_correct_vs_misclassified.png`` and ``pr_curve.png`` (every score's
  precision-recall curves); with ``flag_lowest`` the image grid ``lowest_qscore.png``;
- ``report.md``: the numbers as a table, and the plots.

Features are never all in memory: with the model's saved activation statistics they are scored batch by batch in one
pass; statistics computed from the data need a second pass, so the features first go to the on-disk feature cache
(``qscore_hf.features.extract_features``) and both passes read it memory-mapped. Only the per-sample outputs (a few
numbers per image) are gathered in memory.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import timm
import torch
from safetensors.torch import save_file
from huggingface_hub import try_to_load_from_cache
from timm.models import get_pretrained_cfg
from torch import Tensor

from .backbones import timm_size_kwargs
from .baselines import hoyer_sparsity, knn_density, l2_norm, max_zscore, probe_confidence
from .calibration import DEFAULT_COVERAGE, calibrate_eps, is_auto
from .comparison import ScoreComparison, compare_scores
from .configuration_qscore import QScoreConfig
from .degeneracy import degeneracy_report
from .data import ImageDataset
from .data_pipelines import DEFAULT_DATA_PIPELINE
from .features import (
    FeatureBatch,
    FeatureSet,
    UnreadableImage,
    dataset_identity,
    count_activation_stats,
    default_cache_dir,
    extract_features,
    iter_features,
    row_chunks,
    without_decoding,
)
from .io_utils import atomic_directory, check_output_folder
from .linear_eval import PLOT_FILES as PROBE_PLOT_FILES
from .metrics import interval_text, misclassification_metrics
from .modeling_qscore import QScoreModel
from .plots import plot_image_grid, plot_pr_curves, plot_qscore_histogram, plot_qscore_histograms
from .explain import select_top_features
from .probe import LinearProbe, Optimizer, train_linear_probe
from .score import ActivationStats, qscore_details
from .sharded_scoring import check_sharded_pipeline, score_shards, shard_file_names, use_sharding

__all__ = [
    "HISTOGRAM_FILE",
    "LOWEST_FILE",
    "PER_SAMPLE_FILE",
    "REPORT_FILE",
    "STATS_SOURCES",
    "SUMMARY_FILE",
    "load_model",
    "model_identity",
    "resolve_stats_source",
    "score_dataset",
]

PER_SAMPLE_FILE = "per_sample.parquet"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
HISTOGRAM_FILE = "qscore_hist.png"
STATS_FILE = "activation_stats.safetensors"  # the merged A_j counts of a sharded run (ActivationStats.state_dict)
LOWEST_FILE = "lowest_qscore.png"
STATS_SOURCES = ("auto", "saved", "data")
TOP_FEATURES = 5
# Scored rows per kNN-density call: each call reads the whole reference (the probe's training features) once.
_KNN_BLOCK_ROWS = 4096
# Scores of the misclassification table, in its order: Q-Score, the label-free baselines, the label-using ceiling.
COMPARED = ("q_score", "l2_norm", "hoyer_sparsity", "max_zscore", "knn_density", "probe_confidence")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")  # fmt: skip


# ------------------------------------------------------------------------------------------------------ the model
def load_model(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    backbone_only: bool = False,
    image_size: int | None = None,
    pooling: str | None = None,
) -> tuple[QScoreModel, dict[str, Any]]:
    """A ``QScoreModel`` and its identity (for ``summary.json``).

    ``name_or_path`` is a local folder or Hub id of a ``QScoreModel``, a transformers vision repo or a timm repo
    (``pooling`` picks a transformers ViT's features, see ``QScoreModel.from_pretrained``); with ``backbone_only``
    it is a timm model name instead, built with the input size, crop and normalization of timm's pretrained config
    (``image_size`` overrides the size; a ViT is built for it, or refused in one line when timm cannot). Its weights are timm's pretrained ones when they are in the local Hugging Face cache
    (never downloaded here), random otherwise (with a warning); such a model has no activation statistics.
    """
    if backbone_only:
        return _timm_backbone_model(str(name_or_path), image_size)
    name = str(name_or_path)
    path = Path(name)
    if path.is_dir():
        _check_model_folder(path)
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ValueError(f"model {name!r}: no such folder. Pass an existing QScoreModel folder or a Hub id (org/name).")
    model = QScoreModel.from_pretrained(name, revision=revision, **({"pooling": pooling} if pooling else {}))
    return model, model_identity(model, name, revision)


def _check_model_folder(path: Path) -> None:
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        raise ValueError(f"{path} is a training run's folder; its model is {path / 'model'}: pass that as --model.")
    if not (path / "config.json").is_file():
        raise ValueError(
            f"{path} has no config.json, so it is not a QScoreModel folder. Save one with QScoreModel.save_pretrained, "
            "import a released checkpoint with `qscore-hf convert`, or score a bare timm backbone with --backbone-only."
        )
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise ValueError(
            f"model folder {path} has a config.json but no weights (model.safetensors). Copy the weights file into it "
            "or save the model again with QScoreModel.save_pretrained."
        )


def _timm_backbone_model(name: str, image_size: int | None) -> tuple[QScoreModel, dict[str, Any]]:
    pretrained_cfg = get_pretrained_cfg(name)  # None for names without pretrained weights (e.g. *_cifar)
    settings: dict[str, Any] = {}
    if pretrained_cfg is not None:
        settings = {"image_size": pretrained_cfg.input_size[-1], "crop_pct": pretrained_cfg.crop_pct,
                    "image_mean": pretrained_cfg.mean, "image_std": pretrained_cfg.std}  # fmt: skip
    size_kwargs = timm_size_kwargs(name, image_size)  # a ViT is built for image_size (or refused) before any work
    if image_size is not None:
        settings["image_size"] = image_size
    model = QScoreModel(QScoreConfig(backbone=name, backbone_config=size_kwargs or None, **settings))
    weights_file = _cached_timm_weights(pretrained_cfg)
    if weights_file is None:
        warnings.warn(
            f"timm's pretrained weights for {name!r} are not in the local Hugging Face cache: scoring a randomly "
            "initialised backbone. Download them once (timm.create_model(name, pretrained=True)) to score them.",
            stacklevel=3,
        )
        return model, model_identity(model, name, weights="random (timm weights not cached)")
    pretrained = timm.create_model(
        name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": weights_file}, **size_kwargs
    )  # timm resamples a ViT's position embedding to img_size
    model.backbone.load_state_dict(pretrained.state_dict())
    return model, model_identity(model, name, weights=f"timm pretrained ({pretrained_cfg.hf_hub_id})")


def _cached_timm_weights(pretrained_cfg: Any) -> str | None:
    """Path of timm's pretrained weights in the Hugging Face cache, or ``None`` when they are not there."""
    if pretrained_cfg is None or not pretrained_cfg.hf_hub_id:
        return None
    for filename in (getattr(pretrained_cfg, "hf_hub_filename", None) or "model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(pretrained_cfg.hf_hub_id, filename)
        if isinstance(path, str):
            return path
    return None


def _hub_commit(name: str, revision: str | None) -> str | None:
    """The commit of a Hub model as resolved in the local cache (``None`` for a local folder)."""
    if Path(name).exists():
        return None
    path = try_to_load_from_cache(name, "config.json", revision=revision)
    if isinstance(path, str) and Path(path).parent.parent.name == "snapshots":
        return Path(path).parent.name
    return None


def model_identity(
    model: QScoreModel, name: str | None = None, revision: str | None = None, weights: str = "saved"
) -> dict[str, Any]:
    """Name, Hub revision and commit, where the weights came from and a summary of the config."""
    config = model.config
    name = name or config.name_or_path or config.backbone
    return {
        "name": str(name),
        "revision": revision,
        "commit": _hub_commit(str(name), revision),
        "weights": weights,
        "config": {key: getattr(config, key) for key in ("backbone", "hidden_size", "ssl_method", "pretraining_data",
                                                         "image_size", "crop_pct", "qscore_regularized",
                                                         "backbone_library", "backbone_pooling", "backbone_source")},
    }  # fmt: skip


def resolve_stats_source(model: QScoreModel, stats: str) -> str:
    """``"saved"`` or ``"data"``: where the activation statistics (SPEC §3) come from for ``stats`` in
    ``STATS_SOURCES`` (``"auto"``: the model's saved ones when it has any, else the data's)."""
    if stats not in STATS_SOURCES:
        raise ValueError(f"stats must be one of {STATS_SOURCES}; got {stats!r}.")
    has_saved = int(model.activation_stats.num_samples) > 0
    if stats == "saved" and not has_saved:
        raise ValueError(
            "the model has no saved activation statistics. Use --stats data (or auto) to count them on the scored "
            "data, or save the model after QScoreModel.compute_activation_stats."
        )
    if stats == "auto":
        return "saved" if has_saved else "data"
    return stats


def _stats_provenance(config: Any, source: str, scored: str) -> dict[str, str]:
    """The data set saved statistics were counted on (``convert --compute-stats`` records it; a model trained here
    counted them on its pre-training data) and, when that is not the scored data set, a note saying so."""
    counted_on = getattr(config, "activation_stats_dataset", None) or config.pretraining_data
    if source != "saved" or counted_on is None:
        return {}
    if counted_on == scored:
        return {"dataset": counted_on}
    return {"dataset": counted_on, "note": (
        f"the model's saved activation statistics were counted on {counted_on!r}, not on the scored data set "
        f"{scored!r}, so D is {counted_on}'s discriminative features; --stats data counts them on {scored!r}.")}


# ------------------------------------------------------------------------------------------------------ scoring
@dataclass
class _Rows:
    """Features of some rows of the data set, with the rows' ids and labels."""

    features: Tensor
    row_ids: np.ndarray
    labels: np.ndarray | None


def _streamed_rows(batches: Iterable[FeatureBatch], skipped: list[UnreadableImage]) -> Iterator[_Rows]:
    """The non-empty batches of ``iter_features``; their skipped images are appended to ``skipped``."""
    for batch in batches:
        skipped.extend(batch.skipped)
        if len(batch.features):
            labels = None if batch.labels is None else batch.labels.numpy()
            yield _Rows(batch.features, batch.row_ids.numpy(), labels)


def _cached_rows(feature_set: FeatureSet) -> Iterator[_Rows]:
    """Row chunks of a (memory-mapped) feature set."""
    for rows in row_chunks(len(feature_set), feature_set.num_features):
        features = torch.from_numpy(np.array(feature_set.features[rows], dtype=np.float32))
        labels = None if feature_set.labels is None else feature_set.labels[rows]
        yield _Rows(features, feature_set.row_ids[rows], labels)


def _top_selected(features: Tensor, discriminative: Tensor, eps: float) -> np.ndarray:
    """``(N, 5)`` indices of each row's largest features in ``S_i``, highest first, padded with -1."""
    indices, valid = select_top_features(features, discriminative, eps, TOP_FEATURES)
    return torch.where(valid, indices, -1).cpu().numpy()


def _score_rows(rows: Iterable[_Rows], discriminative: Tensor, config: QScoreConfig, probe: LinearProbe | None,
                probe_train: FeatureSet | None) -> dict[str, np.ndarray]:  # fmt: skip
    """Per-sample columns: row ids, Q-Scores, ``|S_i|``, top features, baselines, labels and probe predictions."""
    columns: dict[str, list[np.ndarray]] = defaultdict(list)
    pending: list[Tensor] = []  # scored rows waiting for their kNN density (one pass over the reference per block)

    def flush_knn() -> None:
        if pending:
            columns["knn_density"].append(knn_density(torch.cat(pending), probe_train.features))
            pending.clear()

    for chunk in rows:
        details = qscore_details(chunk.features, discriminative, config.qscore_eps, config.qscore_normalize)
        columns["row_id"].append(chunk.row_ids.astype(np.int64))
        columns["q_score"].append(details.q_scores.cpu().numpy().astype(np.float64))
        columns["num_selected"].append(details.num_selected.cpu().numpy())
        columns["top_features"].append(_top_selected(chunk.features, discriminative, config.qscore_eps))
        for name, baseline in (("l2_norm", l2_norm), ("hoyer_sparsity", hoyer_sparsity), ("max_zscore", max_zscore)):
            columns[name].append(baseline(chunk.features))
        if chunk.labels is not None:
            columns["label"].append(chunk.labels.astype(np.int64))
        if probe is not None and probe_train is not None:
            logits = probe.logits(chunk.features)
            columns["prediction"].append(logits.argmax(axis=1).astype(np.int64))
            columns["probe_confidence"].append(probe_confidence(logits))
            pending.append(chunk.features.float().cpu())
            if sum(len(block) for block in pending) >= _KNN_BLOCK_ROWS:
                flush_knn()
    flush_knn()
    if not columns:
        raise ValueError("no image of the data set could be read, so there is nothing to score.")
    result = {name: np.concatenate(parts) for name, parts in columns.items()}
    if probe is not None:
        result["correct"] = result["prediction"] == result["label"]
    return result


def _train_probe(model: QScoreModel, probe_dataset: ImageDataset, extraction: dict[str, Any], epochs: int,
                 optimizer: Optimizer, seed: int) -> tuple[LinearProbe, FeatureSet]:  # fmt: skip
    if probe_dataset.label_column is None:
        raise ValueError(
            f"split {probe_dataset.split!r} of data set {probe_dataset.name!r} has no label column, so no linear probe "
            "can be trained on it. Name the column with --label-column or leave out --probe."
        )
    train = extract_features(model, probe_dataset, **extraction)
    probe = train_linear_probe(train.features, train.labels, epochs=epochs, optimizer=optimizer,
                               num_classes=probe_dataset.num_classes, device=extraction["device"], seed=seed,
                               progress=extraction["progress"])  # fmt: skip
    return probe, train


# ------------------------------------------------------------------------------------------------------ outputs
def _probe_summary(columns: dict[str, np.ndarray], probe: LinearProbe, train: FeatureSet,
                   probe_dataset: ImageDataset) -> dict[str, Any]:  # fmt: skip
    """Accuracy and SPEC §5 metrics (``None`` when every sample is correct, or every one wrong)."""
    correct = columns["correct"]
    summary: dict[str, Any] = {
        "accuracy": float(correct.mean()),
        "auprc_correct": None,
        "auprc_misclassified": None,
        "auroc": None,
        "auroc_ci": None,
        "misclassified_rate": float(1.0 - correct.mean()),
        "probe": {"split": probe_dataset.split, "num_train": len(train), "skipped_train_images": len(train.skipped),
                  "settings": probe.settings.to_dict()},  # fmt: skip
    }
    if correct.all() or not correct.any():
        summary["probe"]["note"] = "AUPRC and AUROC are undefined: the probe got every sample right or every one wrong."
        return summary
    metrics = misclassification_metrics(columns["q_score"], correct.astype(np.int64))
    summary.update({key: metrics[key] for key in ("auprc_correct", "auprc_misclassified", "auroc", "auroc_ci")})
    comparison = compare_scores({name: columns[name] for name in COMPARED if name in columns}, correct)
    summary["comparison"] = {**comparison.to_dict(), "knn_reference": f"probe split {probe_dataset.split!r}"}
    return summary


def _skipped_summary(skipped: list[UnreadableImage]) -> dict[str, Any]:
    return {
        "count": len(skipped),
        "row_ids": [image.row_id for image in skipped],
        "images": [{"row_id": image.row_id, "path": image.path, "error": image.error} for image in skipped],
    }


def _label_names(image_dataset: ImageDataset) -> datasets.ClassLabel | None:
    feature = (image_dataset.dataset.features or {}).get(image_dataset.label_column or "")
    return feature if isinstance(feature, datasets.ClassLabel) else None


def _images_at(image_dataset: ImageDataset, row_ids: np.ndarray) -> list[Any]:
    """The images of ``row_ids`` (in that order); a streaming data set is read up to the last of them."""
    dataset, decoder = without_decoding(image_dataset)
    column = image_dataset.image_column
    wanted = sorted({int(row_id) for row_id in row_ids})
    if isinstance(dataset, datasets.Dataset):
        found = dict(zip(wanted, dataset.select(wanted)[column]))
    else:
        found = {}
        for row_id, row in enumerate(dataset.select_columns([column])):
            if row_id in wanted:
                found[row_id] = row[column]
            if len(found) == len(wanted):
                break
    values = [found[int(row_id)] for row_id in row_ids]
    return [decoder.decode_example(value) for value in values] if decoder is not None else values


def _plot_lowest(image_dataset: ImageDataset, columns: dict[str, np.ndarray], count: int, path: Path) -> None:
    """Grid of the ``count`` lowest-Q images, titled with Q, row id, label and, with a probe, its prediction and
    whether it was a mistake."""
    order = np.argsort(columns["q_score"], kind="stable")[:count]
    names = _label_names(image_dataset)
    titles = []
    for index in order:
        title = f"Q {columns['q_score'][index]:.3g}\nrow {columns['row_id'][index]}"
        if "label" in columns:
            label = int(columns["label"][index])
            title += f" · label {names.int2str(label) if names is not None else label}"
        if "prediction" in columns:
            prediction = int(columns["prediction"][index])
            verdict = "right" if columns["correct"][index] else "MISTAKE"
            title += f"\npredicted {names.int2str(prediction) if names is not None else prediction}: {verdict}"
        titles.append(title)
    images = _images_at(image_dataset, columns["row_id"][order])
    plot_image_grid(images, titles, path, title=f"{len(order)} lowest Q-Scores of {image_dataset.name}")


def _per_sample_table(columns: dict[str, np.ndarray]) -> pa.Table:
    top = columns["top_features"]
    valid = top >= 0  # the valid entries of a row come first (topk order), so each row's list is a prefix
    offsets = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32)
    arrays = {name: pa.array(values) for name, values in columns.items() if name != "top_features"}
    arrays["top_features"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(top[valid].astype(np.int32)))
    order = ["row_id", "q_score", "num_selected", "top_features", "label", "prediction", "correct", *COMPARED[1:]]
    return pa.table({name: arrays[name] for name in order if name in arrays})


def _format(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _report_markdown(summary: dict[str, Any]) -> str:
    """``report.md``: a table of the numbers and the plots."""
    qscore, dataset, stats = summary["qscore"], summary["dataset"], summary["activation_stats"]
    settings = " / ".join(str(qscore[key]) for key in ("eps", "normalize", "p_lo", "p_hi"))
    rows = [
        ("model", f"`{summary['model']['name']}` ({summary['model']['config']['backbone']})"),
        ("data set", f"`{dataset['name']}` / {dataset['split']}"),
        ("images scored", summary["num_samples"]),
        ("unreadable images skipped", summary["skipped_images"]["count"]),
        ("mean Q-Score", summary["mean_q"]),
        ("median Q-Score", summary["median_q"]),
        ("fraction with empty S_i (Q = 0)", summary["empty_fraction"]),
        ("discriminative features \\|D\\|", f"{summary['num_discriminative']} of {summary['num_features']}"),
        ("features never highly active in the reference statistics", summary["degeneracy"]["never_active_fraction"]),
        ("eps / normalize / p_lo / p_hi", settings),
        ("activation statistics", f"{stats['source']} ({stats['num_samples']} images)"),
    ]
    if "probe" in summary:
        rows += [
            (f"linear-probe accuracy (trained on {summary['probe']['split']})", summary["accuracy"]),
            ("AUPRC, correct as positive", summary["auprc_correct"]),
            ("AUPRC, misclassified as positive", summary["auprc_misclassified"]),
            ("AUROC", summary["auroc"]),
            ("AUROC 95 % interval (DeLong)", interval_text(summary["auroc_ci"]) or None),
        ]
    lines = ["# Q-Score report", ""]
    if summary["degeneracy"]["warning"]:
        lines += [f"> **Warning.** {summary['degeneracy']['warning']}", ""]
    lines += ["| quantity | value |", "|---|---|"]
    lines += [f"| {name} | {_format(value)} |" for name, value in rows]
    if summary.get("comparison"):
        comparison = ScoreComparison.from_dict(summary["comparison"])
        lines += ["", "## Q-Score and its baselines as predictors of the probe's mistakes", "",
                  comparison.table(markdown=True), "", comparison.verdict()]  # fmt: skip
    lines += ["", *(f"![{caption}]({file})\n" for caption, file in summary["plots"].items())]
    return "\n".join(lines)


def _write_outputs(out_dir: str | os.PathLike, image_dataset: ImageDataset, columns: dict[str, np.ndarray],
                   summary: dict[str, Any], flag_lowest: int, shard_sizes: list[int] | None = None,
                   activation_stats: ActivationStats | None = None) -> None:  # fmt: skip
    """The output files; with ``shard_sizes`` the per-sample rows go to one parquet shard per size, in row order,
    and ``activation_stats`` (the merged ``A_j`` counts) to ``activation_stats.safetensors``."""
    q_scores = columns["q_score"]
    with atomic_directory(out_dir, keep_other_files=False) as tmp:
        table = _per_sample_table(columns)
        if shard_sizes is None:
            pq.write_table(table, tmp / PER_SAMPLE_FILE)
        else:
            offsets = np.concatenate([[0], np.cumsum(shard_sizes)])
            for name, start, size in zip(shard_file_names("per_sample", len(shard_sizes)), offsets, shard_sizes):
                pq.write_table(table.slice(int(start), int(size)), tmp / name)
        if activation_stats is not None:
            save_file({name: tensor.cpu() for name, tensor in activation_stats.state_dict().items()},
                      tmp / STATS_FILE)  # fmt: skip
        plot_qscore_histogram(q_scores, tmp / HISTOGRAM_FILE, title=f"Q-Scores of {image_dataset.name}")
        if "correct" in columns:
            plot_qscore_histograms(q_scores, columns["correct"], tmp / PROBE_PLOT_FILES["histogram"])
        if PROBE_PLOT_FILES["pr_curve"] in summary["plots"].values():
            scores = {name: columns[name] for name in COMPARED if name in columns}
            plot_pr_curves(scores, columns["correct"], tmp / PROBE_PLOT_FILES["pr_curve"])
        if flag_lowest > 0:
            _plot_lowest(image_dataset, columns, flag_lowest, tmp / LOWEST_FILE)
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        (tmp / REPORT_FILE).write_text(_report_markdown(summary))


def _plot_files(summary: dict[str, Any], flag_lowest: int) -> dict[str, str]:
    plots = {"Q-Score histogram": HISTOGRAM_FILE}
    if "probe" in summary:
        plots["Q-Score of correct vs misclassified samples"] = PROBE_PLOT_FILES["histogram"]
        if summary["auprc_correct"] is not None:
            plots["precision-recall curves"] = PROBE_PLOT_FILES["pr_curve"]
    if flag_lowest > 0:
        plots[f"{flag_lowest} lowest Q-Scores"] = LOWEST_FILE
    return plots


# ------------------------------------------------------------------------------------------------------ entry point
def score_dataset(
    model: QScoreModel,
    image_dataset: ImageDataset,
    out_dir: str | os.PathLike,
    stats: str = "auto",
    probe_dataset: ImageDataset | None = None,
    probe_epochs: int = 100,
    probe_optimizer: Optimizer = "sgd",
    flag_lowest: int = 0,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    num_workers: int = 0,
    cache_dir: str | os.PathLike | None = None,
    strict_images: bool = False,
    seed: int = 0,
    progress: bool = True,
    model_info: dict[str, Any] | None = None,
    eps: float | str | None = None,
    shard_rows: int | None = None,
    data_pipeline: str = DEFAULT_DATA_PIPELINE,
) -> dict[str, Any]:
    """Score every image of ``image_dataset`` and write the outputs listed in the module docstring; returns the
    summary (the content of ``summary.json``).

    Args:
        model: the encoder and its Q-Score settings (``eps``, ``normalize``, ``p_lo``, ``p_hi`` of its config).
        image_dataset: from ``qscore_hf.data.load_image_dataset``, map-style or streaming.
        out_dir: output folder, written atomically.
        stats: where the activation statistics defining ``D`` come from: ``"saved"`` (the model's), ``"data"``
            (counted on ``image_dataset``, label-free) or ``"auto"`` (saved when the model has them, else data).
        probe_dataset: a labelled split to train a linear probe on; the scored split then needs labels too, and the
            summary gets the probe's accuracy and how well Q-Score predicts its mistakes (SPEC §5).
        probe_epochs, probe_optimizer: probe settings (``qscore_hf.probe``).
        flag_lowest: draw the images of this many lowest-Q samples into ``lowest_qscore.png`` (0: none).
        batch_size, device, dtype, num_workers: feature extraction (``qscore_hf.features.iter_features``);
            ``dtype=torch.bfloat16`` runs the encoder under autocast.
        cache_dir: feature cache for the data that is read twice (``default_cache_dir()`` by default).
        strict_images: fail on the first unreadable image instead of skipping it (skipped ones are counted, with
            their row ids, in ``summary["skipped_images"]``).
        seed: seed of the probe.
        progress: show progress bars.
        model_info: the model's identity for the summary (as ``load_model`` returns it); from the config otherwise.
        eps: score with this eps instead of the model's; ``"auto"`` calibrates it on the scored data (SPEC §2). Either
            way the statistics are then counted on the data (``stats`` must not be ``"saved"``).
        shard_rows: extract the features in shards of this many rows (a multiple of ``batch_size``), each cached on
            its own, and write ``per_sample-*-of-*.parquet`` shards. Launched on several processes (``accelerate
            launch``, ``torchrun``) this is always done (32 batches a shard by default): the processes split the
            shards and the statistics are merged exactly (``qscore_hf.sharded_scoring``); the main process writes
            the outputs and every process returns the summary.
        data_pipeline: ``"pil"`` (images decoded and preprocessed in the loader), ``"tensor"`` (decoded once into
            a memory-mapped array, preprocessed per batch on ``device``; see ``qscore_hf.features.iter_features``) or
            ``"auto"`` (default: tensor where it can serve, for each data set, else pil with one line saying why;
            always pil with sharded extraction).
    """
    started = time.time()
    check_output_folder(out_dir)  # before the work: a folder holding what qscore-hf did not write is refused
    if eps is not None or is_auto(model.config.qscore_eps):
        if stats == "saved":
            raise ValueError(
                "the model's saved statistics were counted with its own eps; an --eps other than the model's (or "
                "'auto') needs statistics counted on the data: use --stats data (or auto)."
            )
        stats = "data"
        model.config.qscore_eps = model.config.qscore_eps if eps is None else eps
    source = resolve_stats_source(model, stats)
    if probe_dataset is not None and image_dataset.label_column is None:
        raise ValueError(
            f"split {image_dataset.split!r} of data set {image_dataset.name!r} has no label column, so probe mistakes "
            "cannot be counted. Name the column with --label-column or leave out --probe."
        )
    data_pipeline = check_sharded_pipeline(shard_rows, data_pipeline)
    extraction = {"batch_size": batch_size, "device": device, "dtype": dtype, "num_workers": num_workers,
                  "progress": progress, "skip_unreadable": not strict_images, "data_pipeline": data_pipeline}  # fmt: skip
    cached = {**extraction, "cache_dir": Path(cache_dir) if cache_dir is not None else default_cache_dir()}
    sharded = None
    if use_sharding(shard_rows):  # several processes: extraction, statistics and scores in qscore_hf.sharded_scoring
        sharded = score_shards(model, image_dataset, source, probe_dataset, probe_epochs, probe_optimizer, seed, cached,
                               shard_rows, _score_rows, _cached_rows)  # fmt: skip
        if not sharded.is_main_process:
            return sharded.share(None)
    probe, probe_train = (None, None)
    if sharded is not None:
        probe, probe_train = sharded.probe, sharded.probe_train
    elif probe_dataset is not None:
        probe, probe_train = _train_probe(model, probe_dataset, cached, probe_epochs, probe_optimizer, seed)

    skipped: list[UnreadableImage] = []
    if sharded is not None:
        activation_stats, rows = sharded.activation_stats, []
        skipped.extend(sharded.skipped)
    elif source == "saved":
        activation_stats = model.activation_stats
        rows: Iterable[_Rows] = _streamed_rows(iter_features(model, image_dataset, **extraction), skipped)
    else:
        feature_set = extract_features(model, image_dataset, **cached)
        skipped.extend(feature_set.skipped)
        if is_auto(model.config.qscore_eps):
            model.config.qscore_eps = calibrate_eps(feature_set.features)
            model.config.qscore_eps_calibration = {"coverage": DEFAULT_COVERAGE, "num_samples": len(feature_set)}
        activation_stats = count_activation_stats(feature_set.features, model.config.qscore_eps)
        rows = _cached_rows(feature_set)
    config = model.config
    discriminative = activation_stats.discriminative_mask(config.qscore_p_lo, config.qscore_p_hi)
    columns = _score_rows(rows, discriminative, config, probe, probe_train) if sharded is None else sharded.columns

    q_scores = columns["q_score"]
    identity = {**dataset_identity(image_dataset), "num_scored": len(q_scores)}
    identity.setdefault("num_rows", len(q_scores) + len(skipped))
    summary: dict[str, Any] = {
        "num_samples": len(q_scores),
        "mean_q": float(q_scores.mean()),
        "median_q": float(np.median(q_scores)),
        "empty_fraction": float(np.mean(columns["num_selected"] == 0)),
        "num_discriminative": int(discriminative.sum()),
        "num_features": int(config.hidden_size),
        "degeneracy": degeneracy_report(columns["num_selected"], int(discriminative.sum()), activation_stats,
                                        config.qscore_eps, config.qscore_eps_calibration is not None),  # fmt: skip
        "qscore": {"eps": config.qscore_eps, "eps_calibration": config.qscore_eps_calibration,
                   "normalize": config.qscore_normalize, "p_lo": config.qscore_p_lo, "p_hi": config.qscore_p_hi},  # fmt: skip
        "activation_stats": {"source": source, "num_samples": int(activation_stats.num_samples),
                             **_stats_provenance(config, source, image_dataset.name)},
        "model": model_info or model_identity(model),
        "dataset": identity,
        "skipped_images": _skipped_summary(skipped),
    }
    if (label_names := _label_names(image_dataset)) is not None:  # class index k of "label" is label_names[k]
        summary["label_names"] = list(label_names.names)
    if probe is not None:
        summary.update(_probe_summary(columns, probe, probe_train, probe_dataset))
    summary["plots"] = _plot_files(summary, min(flag_lowest, len(q_scores)))
    if sharded is not None:
        summary["distributed"] = {**sharded.info, "activation_stats_file": STATS_FILE,
                                  "per_sample_files": shard_file_names("per_sample", len(sharded.shard_sizes))}
    summary["seconds"] = round(time.time() - started, 2)
    _write_outputs(out_dir, image_dataset, columns, summary, min(flag_lowest, len(q_scores)),
                   *(() if sharded is None else (sharded.shard_sizes, activation_stats)))  # fmt: skip
    return summary if sharded is None else sharded.share(summary)
