"""Model cards of zoo releases: the project's card (``qscore_hf.cards.render_model_card``) followed by the release's
registry facts, its published numbers marked as published (with their page) and what a build measured marked as
measured. ``model_cards/<name>/README.md`` holds each release's card as rendered from the registry alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from huggingface_hub import EvalResult, ModelCard

from ..io_utils import contained_path
from .registry import Release

__all__ = ["CARDS_DIR", "check_cards", "config_from_release", "published_results", "release_card", "write_cards"]

# model_cards/ of a source checkout (absent from an installed package: pass the folder explicitly there)
CARDS_DIR = Path(__file__).resolve().parents[2] / "model_cards"


def config_from_release(release: Release):
    """The ``QScoreConfig`` a build of ``release`` gets, from the registry alone (for cards rendered unbuilt)."""
    from ..configuration_qscore import QScoreConfig
    from ..convert.layouts import FORMATS, ssl_family

    layout = FORMATS[release.layout]
    return QScoreConfig(
        backbone=release.arch,
        ssl_method=ssl_family(release.method),
        pretraining_data=release.data,
        image_size=release.crop,
        crop_pct=release.crop_pct,
        image_mean=list(release.image_mean),
        image_std=list(release.image_std),
        backbone_config=dict(layout.arch_args[release.arch]) if release.arch in layout.arch_args else None,
    )


def published_results(release: Release) -> list[EvalResult]:
    """The published linear-probe top-1, marked as published, with its page."""
    if release.top1 is None:
        return []
    return [
        EvalResult(
            task_type="image-classification",
            task_name="Image classification (linear probe on frozen features)",
            dataset_type="imagenet-1k",
            dataset_name="ImageNet-1k",
            metric_type="accuracy",
            metric_value=release.top1,
            metric_name="Linear-probe top-1 (%), published",
            source_name=f"published: {release.top1_source}",
            source_url=release.top1_source if (release.top1_source or "").startswith("http") else None,
        )
    ]


def release_card(
    release: Release, config: Any = None, measured: Mapping[str, Any] | None = None, repo_id: str | None = None
) -> ModelCard:
    """The card of ``release``: with ``config`` (the built model's) and ``measured`` (see ``build.build_release``)
    for a built model, else from the registry alone. Checked offline with ``qscore_hf.cards.check_card``
    (huggingface_hub's metadata and model-index parsing); a card that fails it raises ``ValueError``."""
    from ..cards import check_card, render_model_card

    measured = dict(measured or {})
    stats = measured.get("stats") or {}
    base = render_model_card(
        config if config is not None else config_from_release(release),
        results=published_results(release),
        provenance={"license": release.license},
        repo_id=repo_id or release.name,
        stats_samples=int(stats.get("samples", 0)),
    )
    return check_card(base.content.rstrip("\n") + "\n\n" + _release_section(release, measured))


def _release_section(release: Release, measured: Mapping[str, Any]) -> str:
    def cell(value: Any, missing: str = "not published") -> str:
        return missing if value is None else str(value)

    checksum = (f"`{release.checksum}` (prefix published or pinned by {release.checksum_source})" if release.checksum
                else "none published; the SHA-256 is computed at build")  # fmt: skip
    rows = [
        ("zoo name", f"`{release.name}`"),
        ("release", release.title or release.name),
        ("method", release.method),
        ("architecture", f"`{release.arch}`"),
        ("download", release.url),
        ("file", f"`{release.file_name}`, size {cell(release.size)}"),
        ("checksum", checksum),
        ("checkpoint layout", f"`{release.layout}` (qscore_hf.convert)"),
        ("license of the weights", f"{release.license}: {release.license_source}"),
        ("pre-training data", release.data),
        ("pre-training epochs", cell(release.epochs, "not verified")),
        ("evaluation preprocessing", f"resize {release.resize}, centre-crop {release.crop}, mean "
                                     f"{list(release.image_mean)}, std {list(release.image_std)} on inputs in [0, 1] "
                                     f"({release.preprocessing_source})"),  # fmt: skip
        ("paper", cell(release.paper, "not verified")),
    ]
    lines = ["## Release (qscore-hf zoo registry)", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    lines += ["", "### Published", ""]
    if release.top1 is None:
        lines.append("- No published linear-probe top-1 was found for this file.")
    else:
        lines.append(f"- ImageNet linear-probe top-1: **{release.top1} %** (published, {release.top1_source}): "
                     f"{release.top1_note}.")  # fmt: skip
    lines += ["", "### Measured here", ""]
    if measured.get("sha256"):
        verified = (f"matches the registry's `{release.checksum}`" if release.checksum
                    else "no published checksum to compare with")  # fmt: skip
        lines.append(f"- SHA-256 of the downloaded file: `{measured['sha256']}`, {measured['size']} bytes "
                     f"(measured; {verified}).")  # fmt: skip
        if measured.get("stats"):
            lines.append(f"- Activation statistics from {_stats_line(measured['stats'])} (measured).")
        else:
            lines.append("- No activation statistics: Q-Scores use all features as D (`qscore-hf zoo build "
                         f"{release.name} --stats DATASET[:SPLIT]` adds them).")  # fmt: skip
        lines.append("- The linear-probe top-1 was not measured here.")
    else:
        lines.append(f"- Nothing: this card is rendered from the registry. `qscore-hf zoo build {release.name}` "
                     "downloads, verifies and converts the release and records what it measures; the published "
                     "top-1 was not reproduced here.")  # fmt: skip
    if release.unverified:
        lines += ["", "### Not verified", ""] + [f"- {item}" for item in release.unverified]
    lines += ["", "### Sources", ""] + [f"- {source}" for source in release.sources]
    return "\n".join(lines) + "\n"


def _stats_line(stats: Mapping[str, Any]) -> str:
    return (f"{stats['samples']} images of `{stats['dataset']}` ({stats['split']}): {stats['num_discriminative']} "
            "discriminative features")  # fmt: skip


def write_cards(releases: Mapping[str, Release], folder: str | os.PathLike = CARDS_DIR) -> list[Path]:
    """(Re)write ``<folder>/<name>/README.md`` for every release from the registry; returns the files written."""
    written = []
    for release in releases.values():
        path = contained_path(folder, release.name, what="a zoo release name") / "README.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_card_text(release))
        written.append(path)
    return written


def check_cards(releases: Mapping[str, Release], folder: str | os.PathLike = CARDS_DIR) -> list[str]:
    """The releases whose card in ``folder`` is missing or differs from the registry's rendering."""
    stale = []
    for release in releases.values():
        path = contained_path(folder, release.name, what="a zoo release name") / "README.md"
        if not path.is_file() or path.read_text() != _card_text(release):
            stale.append(release.name)
    return stale


def _card_text(release: Release) -> str:
    text = str(release_card(release))
    return text if text.endswith("\n") else text + "\n"
