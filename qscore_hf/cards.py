"""Model cards for ``QScoreModel`` folders: Hub metadata (license, tags, data sets, eval results) and a body with
provenance, preprocessing, usage, Q-Score statistics, results, limitations and citations.

The template ships inside the package (``qscore_hf/templates/model_card.md``) so that installed copies can render
cards; ``model_cards/`` at the repository root holds the cards of published models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .configuration_qscore import QScoreConfig

__all__ = ["TEMPLATE_PATH", "render_model_card"]

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


def render_model_card(
    config: QScoreConfig,
    results: Sequence[EvalResult] | None = None,
    provenance: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    stats_samples: int = 0,
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
    """
    conversion = getattr(config, "conversion", None) or None
    provenance = dict(provenance or {})
    method = (conversion or {}).get("method") or config.ssl_method
    license_id = conversion["license"]["id"] if conversion else provenance.pop("license", None)
    data_sets = [config.pretraining_data] if config.pretraining_data else None
    name = repo_id or config.name_or_path or f"qscore-{method or 'ssl'}-{config.backbone}"
    card_data = ModelCardData(
        license=license_id,
        library_name="qscore-hf",
        pipeline_tag="image-feature-extraction",
        tags=_tags(method, config),
        datasets=data_sets,
        eval_results=list(results) if results else None,
        model_name=Path(name).name if results else None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=Path(name).name,
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
        limitations=_limitations(config, conversion),
        citations=_citations(method, config.ssl_method, conversion),
    )


def _tags(method: str | None, config: QScoreConfig) -> list[str]:
    candidates = ("self-supervised", "q-score", method, config.ssl_method, config.backbone)
    return list(dict.fromkeys(tag for tag in candidates if tag))


def _summary(config: QScoreConfig, conversion: Mapping[str, Any] | None, method: str | None) -> str:
    trained = f"trained with {method}" if method else "self-supervised"
    data = f" on {config.pretraining_data}" if config.pretraining_data else ""
    origin = f", converted from {conversion['release']}" if conversion else ""
    return f"A `{config.backbone}` backbone {trained}{data}{origin}, as a qscore-hf `QScoreModel`."


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
