"""Model cards for ``QScoreModel`` folders: Hub metadata (license, tags, data sets, eval results) and a body with
provenance, preprocessing, usage, Q-Score statistics, results, limitations and citations.

A card is meant to be publishable as written: a real name (a descriptive one for pre-training's generic ``model``
folder), a license (the release's, the one given, else qscore-hf's own, said so in the body), Hub ids of the data
sets that have one, and with a linear evaluation the comparison with baselines, the base rates and the verdict, so
that what the card says about Q-Score agrees with its own numbers. ``check_card`` runs huggingface_hub's parsing and
model-index checks offline (``ModelCard.validate`` needs the Hub).

The template ships inside the package (``qscore_hf/templates/model_card.md``) so that installed copies can render
cards; ``model_cards/template.md`` at the repository root links to it, beside the cards of published models.
``card_from_report`` renders the card of a linearly evaluated model (``qscore-hf card``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

from .comparison import ScoreComparison
from .configuration_qscore import QScoreConfig
from .metrics import interval_text

__all__ = [
    "DEFAULT_LICENSE",
    "HUB_DATASET_IDS",
    "TEMPLATE_PATH",
    "card_from_report",
    "card_name",
    "card_title",
    "check_card",
    "load_report",
    "render_model_card",
    "report_eval_results",
    "training_provenance",
]

TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md"

_QSCORE = """@inproceedings{kalibhat2024measuring,
  title     = {Measuring Self-Supervised Representation Quality for Downstream Classification using Discriminative Features},
  author    = {Kalibhat, Neha and Narang, Kanika and Firooz, Hamed and Sanjabi, Maziar and Feizi, Soheil},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  year      = {2024}
}"""
_PAPERS = {
    "simclr": """@inproceedings{chen2020simple,
  title     = {A Simple Framework for Contrastive Learning of Visual Representations},
  author    = {Chen, Ting and Kornblith, Simon and Norouzi, Mohammad and Hinton, Geoffrey},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2020}
}""",
    "mocov1": """@inproceedings{he2020momentum,
  title     = {Momentum Contrast for Unsupervised Visual Representation Learning},
  author    = {He, Kaiming and Fan, Haoqi and Wu, Yuxin and Xie, Saining and Girshick, Ross},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2020}
}""",
    "mocov2": """@article{chen2020improved,
  title   = {Improved Baselines with Momentum Contrastive Learning},
  author  = {Chen, Xinlei and Fan, Haoqi and Girshick, Ross and He, Kaiming},
  journal = {arXiv preprint arXiv:2003.04297},
  year    = {2020}
}""",
    "mocov3": """@inproceedings{chen2021empirical,
  title     = {An Empirical Study of Training Self-Supervised Vision Transformers},
  author    = {Chen, Xinlei and Xie, Saining and He, Kaiming},
  booktitle = {IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2021}
}""",
    "byol": """@inproceedings{grill2020bootstrap,
  title     = {Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning},
  author    = {Grill, Jean-Bastien and Strub, Florian and Altch{\\'e}, Florent and Tallec, Corentin and Richemond, Pierre H. and others},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2020}
}""",
    "swav": """@inproceedings{caron2020unsupervised,
  title     = {Unsupervised Learning of Visual Features by Contrasting Cluster Assignments},
  author    = {Caron, Mathilde and Misra, Ishan and Mairal, Julien and Goyal, Priya and Bojanowski, Piotr and Joulin, Armand},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2020}
}""",
    "dino": """@inproceedings{caron2021emerging,
  title     = {Emerging Properties in Self-Supervised Vision Transformers},
  author    = {Caron, Mathilde and Touvron, Hugo and Misra, Ishan and J{\\'e}gou, Herv{\\'e} and Mairal, Julien and Bojanowski, Piotr and Joulin, Armand},
  booktitle = {IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2021}
}""",
    "simsiam": """@inproceedings{chen2021exploring,
  title     = {Exploring Simple Siamese Representation Learning},
  author    = {Chen, Xinlei and He, Kaiming},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2021}
}""",
    "solo_learn": """@article{dacosta2022solo,
  title   = {solo-learn: A Library of Self-supervised Methods for Visual Representation Learning},
  author  = {da Costa, Victor Guilherme Turrisi and Fini, Enrico and Nabi, Moin and Sebe, Nicu and Ricci, Elisa},
  journal = {Journal of Machine Learning Research},
  volume  = {23},
  number  = {56},
  pages   = {1--6},
  year    = {2022}
}""",
}
# method (as a release names it, or QScoreConfig.ssl_method) -> papers to cite
_METHOD_PAPERS = {
    "moco": ("mocov1", "mocov2"),
    "mocov2": ("mocov1", "mocov2"),
    "mocov2plus": ("mocov1", "mocov2"),
    "mocov3": ("mocov3",),
}
_NONCOMMERCIAL = "cc-by-nc"
# The Hub copies of the built-in data sets (digits has none).
HUB_DATASET_IDS = {"fashion_mnist": "zalando-datasets/fashion_mnist", "cifar10": "uoft-cs/cifar10"}
# The license of weights trained with qscore-hf when their owner states none: the project's own (pyproject.toml).
DEFAULT_LICENSE = "apache-2.0"
_DEFAULT_LICENSE_NOTE = (
    f"{DEFAULT_LICENSE}, qscore-hf's own license, set because none was given for these weights; state yours with "
    "`qscore-hf card --license ID`"
)
# Pre-training writes its model into this generic folder name (qscore_hf.pretraining.MODEL_DIR).
_GENERIC_NAMES = ("", ".", "model")


def card_name(name: str, config: QScoreConfig) -> str:
    """The name a card shows (title and model-index): the last part of a Hub id or folder, or, for pre-training's
    generic ``model`` folder, ``qscore-<method>-<backbone>-<data set>``."""
    base = Path(name).name
    if base not in _GENERIC_NAMES:
        return base
    data = Path(config.pretraining_data).name if config.pretraining_data else None
    return "-".join(part for part in ("qscore", config.ssl_method, config.backbone, data) if part)


def _hub_datasets(names: Sequence[str | None]) -> list[str] | None:
    """The ``datasets`` metadata: Hub ids of the built-in names, other names that look like Hub ids (``org/name``,
    or a canonical name), never a local path or a data set without a Hub copy (``digits``)."""
    ids = []
    for name in names:
        if not name or name == "digits" or Path(name).exists() or name.startswith((".", "/", "~")):
            continue
        ids.append(HUB_DATASET_IDS.get(name, name))
    return ids or None


def render_model_card(
    config: QScoreConfig,
    results: Sequence[EvalResult] | None = None,
    provenance: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    stats_samples: int = 0,
    evaluation: str | None = None,
    comparison: Mapping[str, Any] | None = None,
) -> ModelCard:
    """Render the model card of a ``QScoreModel`` from its config.

    Args:
        config: the model's config; a converted model's ``config.conversion`` (the conversion report) gives the
            provenance, license and caveats.
        results: evaluation results (linear probe, k-NN, Q-Score AUPRC, ...) for the Hub's model-index and the
            results table.
        provenance: for models trained with qscore-hf, the training recipe as ``{item: value}`` (shown when the
            config has no conversion); a ``license`` entry sets the card's license.
        repo_id: Hub id or folder used in the usage example (default: the config's ``_name_or_path``).
        stats_samples: how many reference images the model's stored activation statistics count (0: none).
        evaluation: how the results were obtained, shown below the results table.
        comparison: a linear evaluation's ``comparison`` (``ScoreComparison.to_dict``): Q-Score beside its baselines,
            with the base rates, and the verdict that replaces the paper's claim in the card's introduction.
    """
    conversion = getattr(config, "conversion", None) or None
    provenance = dict(provenance or {})
    method = (conversion or {}).get("method") or config.ssl_method
    license_id = conversion["license"]["id"] if conversion else provenance.pop("license", None)
    license_note = None if license_id else _DEFAULT_LICENSE_NOTE
    inferred = (conversion or {}).get("inferred", [])
    # a data set only the key layout suggests is no claim for the metadata (see ConversionReport.inferred)
    claimed = config.pretraining_data if "pretraining data" not in inferred else None
    name = repo_id or config.name_or_path or f"qscore-{method or 'ssl'}-{config.backbone}"
    title = card_name(name, config)
    comparison = None if comparison is None else ScoreComparison.from_dict(comparison)
    card_data = ModelCardData(
        license=license_id or DEFAULT_LICENSE,
        library_name="qscore-hf",
        pipeline_tag="image-feature-extraction",
        tags=_tags(method, config),
        datasets=_hub_datasets([claimed]),
        eval_results=list(results) if results else None,
        model_name=title if results else None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=title,
        license_note=license_note,
        comparison_table=None if comparison is None else comparison.table(markdown=True),
        verdict=None if comparison is None else comparison.verdict(),
        comparison_notes=[] if comparison is None else comparison.notes,
        summary=_summary(config, conversion, method),
        conversion=conversion,
        provenance=provenance,
        repo_id=name,
        resize=round(config.image_size / config.crop_pct),
        image_size=config.image_size,
        image_mean=[round(v, 4) for v in config.image_mean],
        image_std=[round(v, 4) for v in config.image_std],
        preprocessing_note=(conversion or {}).get("preprocessing"),
        hidden_size=config.hidden_size,
        stats_samples=stats_samples,
        results=list(results or []),
        evaluation=evaluation,
        limitations=_limitations(config, conversion),
        citations=_citations(method, config.ssl_method, conversion),
    )


def _tags(method: str | None, config: QScoreConfig) -> list[str]:
    candidates = ("self-supervised", "q-score", method, config.ssl_method, config.backbone)
    return list(dict.fromkeys(tag for tag in candidates if tag))


def _summary(config: QScoreConfig, conversion: Mapping[str, Any] | None, method: str | None) -> str:
    if conversion:
        return _conversion_summary(config, conversion, method)
    trained = f"trained with {method}" if method else "self-supervised"
    data = f" on {config.pretraining_data}" if config.pretraining_data else ""
    return f"A `{config.backbone}` backbone {trained}{data}, as a qscore-hf `QScoreModel`."


def _conversion_summary(config: QScoreConfig, conversion: Mapping[str, Any], method: str | None) -> str:
    """What a converted file is, saying for each claim where it comes from: given, the file's metadata, or only
    inferred from its key layout (which a file of other weights in the same layout shares)."""
    data_source = conversion.get("pretraining_data_source")
    lines = [
        f"A `{config.backbone}` backbone converted from `{conversion['source_file']}`, a checkpoint in the key layout "
        f"of {conversion['release']}, as a qscore-hf `QScoreModel`.",
        "",
        f"- method: {method or 'unknown'} ({conversion['method_source']})",
        f"- pre-training data: {config.pretraining_data or 'unknown'}" + (f" ({data_source})" if data_source else ""),
        f"- license of the original weights: {conversion['license']['id']} ({conversion['license']['source']})",
    ]
    inferred = conversion.get("inferred") or []
    if inferred:
        lines += [
            "",
            f"The file itself does not record its {', '.join(inferred)}: "
            f"{'they are' if len(inferred) > 1 else 'it is'} inferred from the key layout alone, and a file with other "
            "weights in the same layout would get the same card. `qscore-hf convert --method/--pretraining-data/"
            "--license` state them.",
        ]
    return "\n".join(lines)


def _limitations(config: QScoreConfig, conversion: Mapping[str, Any] | None) -> list[str]:
    notes = list((conversion or {}).get("notes", []))
    if conversion:
        license_info = conversion["license"]
        if license_info["id"].startswith(_NONCOMMERCIAL):
            notes.append(f"The original weights are licensed {license_info['id']}: non-commercial use only.")
        if not license_info["confirmed"]:
            notes.append(
                "That this license covers the released weights (not only the code) is unconfirmed"
                + (f": {license_info['note']}" if license_info.get("note") else "; check the source repository.")
            )
    notes.append(
        "Q-Scores rank samples by how discriminative their representation is; they estimate, not measure, "
        "correctness, and are comparable only within one model."
    )
    if not config.pretraining_data:
        notes.append("The pre-training data set is not recorded.")
    return notes


def _citations(method: str | None, family: str | None, conversion: Mapping[str, Any] | None) -> list[str]:
    keys = list(_METHOD_PAPERS.get(method or "", (method,) if method in _PAPERS else ()))
    if not keys and family:
        keys = list(_METHOD_PAPERS.get(family, (family,)))
    if conversion and conversion.get("format") == "solo_learn":
        keys.append("solo_learn")
    return [_QSCORE] + [_PAPERS[key] for key in dict.fromkeys(keys) if key in _PAPERS]


# What a linear-evaluation report (qscore_hf.linear_eval.run_linear_eval) must hold to make a card.
_REPORT_KEYS = (
    "dataset", "train_split", "eval_split", "num_train", "num_eval", "probe", "qscore",
    "top1", "auprc_correct", "auprc_misclassified", "auroc", "base_rate_correct", "base_rate_misclassified",
)  # fmt: skip


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    """Read a linear-evaluation ``report.json``; errors say what is wrong with it and how to get a proper one."""
    path = Path(path)
    how = "write one with `python training/linear_eval.py --model MODEL --dataset DATA --out DIR` or `qscore-hf demo`"
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} not found; {how}.")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"results file {path} is not JSON ({error}); pass the report.json of a linear evaluation."
        ) from error
    missing = [key for key in _REPORT_KEYS if not isinstance(report, dict) or report.get(key) is None]
    if missing:
        raise ValueError(f"{path} is not a linear-evaluation report: it has no {', '.join(missing)}; {how}.")
    problem = _schema_problem(report)
    if problem is not None:
        raise ValueError(f"{path}: {problem}; the file was edited or is damaged: {how}.")
    return report


def _is_number(value: Any, low: float = -math.inf, high: float = math.inf) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value <= high)  # fmt: skip


def _rate_problem(where: str, value: Any, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    return None if _is_number(value, 0.0, 1.0) else f"{where} must be a number in [0, 1]; got {value!r}"


def _interval_problem(where: str, value: Any) -> str | None:
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 2 and all(_is_number(v, 0.0, 1.0) for v in value)
            and value[0] <= value[1]):  # fmt: skip
        return f"{where} must be a pair [low, high] of numbers in [0, 1], low <= high; got {value!r}"
    return None


def _schema_problem(report: Mapping[str, Any]) -> str | None:
    """What is wrong with the types and ranges of a linear-evaluation report's fields a card reads (``None``: nothing);
    a card would otherwise put top1 90.0 or an AUROC of NaN into its model-index."""
    checks: list[str | None] = [
        *(None if isinstance(report[key], str) and report[key] else f"{key} must be a non-empty string; got "
          f"{report[key]!r}" for key in ("dataset", "train_split", "eval_split")),
        *(None if _is_number(report[key], 0) and float(report[key]).is_integer() else f"{key} must be a whole number "
          f">= 0; got {report[key]!r}" for key in ("num_train", "num_eval")),
        *(_rate_problem(key, report[key]) for key in ("top1", "auprc_correct", "auprc_misclassified", "auroc",
                                                      "base_rate_correct", "base_rate_misclassified")),
        _interval_problem("auroc_ci", report.get("auroc_ci")),
    ]  # fmt: skip
    probe, qscore = report["probe"], report["qscore"]
    if not isinstance(probe, dict) or not isinstance(probe.get("optimizer"), str) or not _is_number(probe.get("epochs"), 0):
        checks.append(f"probe must be an object with an optimizer (a string) and epochs (a number); got {probe!r:.80}")
    if not isinstance(qscore, dict):
        checks.append(f"qscore must be an object; got {qscore!r:.80}")
    else:
        for key in ("eps", "p_lo", "p_hi", "num_discriminative"):
            if not _is_number(qscore.get(key), 0):
                checks.append(f"qscore.{key} must be a number >= 0; got {qscore.get(key)!r}")
        if not isinstance(qscore.get("normalize"), str):
            checks.append(f"qscore.normalize must be a string; got {qscore.get('normalize')!r}")
    comparison = report.get("comparison")
    if comparison is not None:
        rows = comparison.get("scores") if isinstance(comparison, dict) else None
        if not isinstance(rows, list) or not all(isinstance(row, dict) and isinstance(row.get("score"), str)
                                                 for row in rows):  # fmt: skip
            checks.append("comparison must be an object whose scores is a list of rows, each naming its score")
        else:
            for row in rows:
                checks += [_rate_problem(f"comparison row {row['score']!r} {key}", row.get(key), optional=True)
                           for key in ("auroc", "auprc_correct", "auprc_misclassified")]  # fmt: skip
                checks.append(_interval_problem(f"comparison row {row['score']!r} auroc_ci", row.get("auroc_ci")))
            for key in ("base_rate_correct", "base_rate_misclassified"):
                checks.append(_rate_problem(f"comparison.{key}", comparison.get(key)))
            if not _is_number(comparison.get("num_samples"), 0):
                checks.append(f"comparison.num_samples must be a number >= 0; got {comparison.get('num_samples')!r}")
    return next((check for check in checks if check is not None), None)


def report_eval_results(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``huggingface_hub.EvalResult`` arguments for a card's ``model-index``: the linear-probe top-1, the Q-Score
    AUPRC (correctly classified samples as positives) with its base rate in its name, and the Q-Score AUROC with its
    95 % interval, of a linear-evaluation report. The data set's type is its Hub id where it has one."""
    dataset = report["dataset"]
    common = {
        "task_type": "image-classification",
        "task_name": "Image classification (linear probe on frozen features)",
        "dataset_type": HUB_DATASET_IDS.get(dataset, Path(dataset).name if Path(dataset).exists() else dataset),
        "dataset_name": dataset,
        "dataset_split": report["eval_split"],
    }
    results = [
        dict(common, metric_type="accuracy", metric_value=report["top1"], metric_name="Linear-probe top-1 accuracy"),
        dict(common, metric_type="auprc", metric_value=report["auprc_correct"],
             metric_name=f"Q-Score AUPRC, correctly classified as positive (chance: the accuracy, "
                         f"{report['base_rate_correct']:.4f})"),  # fmt: skip
    ]
    if report.get("auroc_ci"):
        low, high = report["auroc_ci"]
        results.append(dict(common, metric_type="roc_auc", metric_value=report["auroc"],
                            metric_name=f"Q-Score AUROC (chance 0.5; 95 % interval {low:.4f}-{high:.4f})"))  # fmt: skip
    return results


def training_provenance(training: Mapping[str, Any]) -> dict[str, Any]:
    """The training recipe that ``qscore_hf.pretraining`` saves as ``config.training``, as a card's provenance list."""
    regularization = (
        f"{training.get('qscore_l1_form', 'sum')} L1 form, lambda1={training['lambda1']}, lambda2={training['lambda2']}, "
        f"eps={training['qscore_eps']}, Q normalize {training.get('qscore_normalize', 'none')}, "
        f"warmup {training['qscore_warmup_samples']} samples"
    )
    recipe = {
        "method": training["method"],
        "mode": f"fine-tuning of {training['init_from']}" if training.get("init_from") else "pre-training from scratch",
        "data": f"{training['dataset']} ({training['split']})"
        + (f", first {training['max_samples']} images" if training.get("max_samples") else ""),
        "image size": training["image_size"],
        "epochs": round(training["epochs_completed"], 2),
        "steps": training["steps"],
        "batch size per device": training["batch_size"],
        "optimizer": f"{training['optimizer']}, lr {training['lr']} per 256 images, weight decay "
        f"{training['weight_decay']}, warmup {training['warmup_epochs']} epochs then cosine",
        "seed": training["seed"],
        "Q-Score regularization": regularization if training.get("qscore_reg") else "none",
    }
    if training.get("method_kwargs"):
        recipe["method settings"] = json.dumps(training["method_kwargs"])
    return recipe


def card_from_report(
    report: Mapping[str, Any],
    model: str | os.PathLike | None = None,
    repo_id: str | None = None,
    license: str | None = None,
) -> ModelCard:
    """The model card of a linearly evaluated ``QScoreModel``: provenance from its config, results from the report.

    Args:
        report: a linear-evaluation report (``load_report``).
        model: local folder or Hub id whose ``config.json`` describes the model (default: the report's model).
        repo_id: the name used in the card's usage code (default: ``model``).
        license: license id of the card's metadata (a converted model keeps its release's license).
    """
    source = model or report.get("model")
    if not source:
        raise ValueError("the report names no model; pass the model's folder or Hub id (--model).")
    config = QScoreConfig.from_pretrained(source, revision=None if model else report.get("revision"))
    training = getattr(config, "training", None)
    provenance = training_provenance(training) if training else {}
    if license:
        provenance["license"] = license
    qscore = report["qscore"]
    return render_model_card(
        config,
        results=[EvalResult(**result) for result in report_eval_results(report)],
        provenance=provenance,
        repo_id=repo_id or str(source),
        stats_samples=qscore["activation_stats_samples"] if qscore.get("activation_stats_source") == "model" else 0,
        evaluation=_evaluation_note(report),
        comparison=report.get("comparison"),
    )


def _evaluation_note(report: Mapping[str, Any]) -> str:
    probe, qscore = report["probe"], report["qscore"]
    return (
        f"A linear probe ({probe['optimizer']}, {probe['epochs']} epochs) was trained on the frozen features of "
        f"{report['num_train']} images of `{report['dataset']}` ({report['train_split']}) and evaluated on "
        f"{report['num_eval']} images ({report['eval_split']}). Q-Score (eps {qscore['eps']:g}, normalize "
        f"{qscore['normalize']}, band {qscore['p_lo']:g}-{qscore['p_hi']:g}, {qscore['num_discriminative']} "
        f"discriminative features) ranks the probe's correct predictions with AUPRC "
        f"{report['auprc_correct']:.4f} (base rate {report['base_rate_correct']:.4f}) and its mistakes with AUPRC "
        f"{report['auprc_misclassified']:.4f} (base rate {report['base_rate_misclassified']:.4f}); AUROC "
        f"{report['auroc']:.4f}" + (f" (95 % interval {interval_text(report['auroc_ci'])})"
                                    if report.get("auroc_ci") else "") + "."
    )


def card_title(card: ModelCard) -> str:
    """The card's title: its first level-1 heading ("" when it has none)."""
    return next((line[2:].strip() for line in card.text.splitlines() if line.startswith("# ")), "")


def check_card(card: ModelCard | str) -> ModelCard:
    """Check a card offline with huggingface_hub's own parsers; returns it parsed, or raises ``ValueError`` naming
    the first problem.

    Checked: the YAML metadata parses (``ModelCard``) with a license and a library; the ``model-index`` converts to
    ``EvalResult`` objects and back unchanged (``model_index_to_eval_results``, ``eval_results_to_model_index``)
    under the card's title; the title is no generic folder name; ``datasets`` holds no local path or ``digits``.
    """
    card = ModelCard(str(card))
    data = card.data
    if not data.license:
        raise ValueError("the card has no license; pass one (e.g. --license apache-2.0).")
    if data.library_name != "qscore-hf":
        raise ValueError(f"the card's library_name is {data.library_name!r}, not 'qscore-hf'.")
    title = card_title(card)
    if title in _GENERIC_NAMES:
        raise ValueError(f"the card's title is {title!r}; give the model a real name (repo_id).")
    if _hub_datasets(data.datasets or []) != (data.datasets or None):
        raise ValueError(f"the card's datasets {data.datasets} are not all Hub ids.")
    model_index = data.to_dict().get("model-index")
    if model_index is not None:
        name, results = model_index_to_eval_results(model_index)
        if name != title:
            raise ValueError(f"the model-index names {name!r} but the card's title is {title!r}.")
        if eval_results_to_model_index(name, results) != model_index:
            raise ValueError("the model-index does not round-trip through huggingface_hub's EvalResult.")
    return card
