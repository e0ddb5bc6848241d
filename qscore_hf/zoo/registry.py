"""The zoo's registry: one :class:`Release` record per released backbone, read from data (``releases.py``, or a JSON
file named by ``$QSCORE_HF_ZOO_REGISTRY`` for an internal or test registry). No code per release.

Importing this module imports neither torch nor transformers (``qscore-hf zoo list`` stays fast).
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import unquote, urlparse

__all__ = ["REGISTRY_ENV", "Release", "UnknownReleaseError", "get_release", "load_registry"]

REGISTRY_ENV = "QSCORE_HF_ZOO_REGISTRY"
# A release's name and file name become folder and file names in the zoo's cache and under --out: plain names only.
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# Hex digits a checksum needs to count as verification: 6 (24 bits), the shortest published prefixes (OML's md5 of
# DINO's ViTs); a shorter one (md5:4 is 4 bits) would pass one corrupt file in 16.
_MIN_CHECKSUM_HEX = 6
_DIGEST_HEX = {"md5": 32, "sha256": 64}
_TEXT_FIELDS = ("name", "method", "arch", "url", "file_name", "layout", "license", "license_source", "data",
                "preprocessing_source")  # fmt: skip
_OPTIONAL_TEXT_FIELDS = ("title", "checksum", "checksum_source", "top1_source", "top1_note", "paper")


class UnknownReleaseError(KeyError, ValueError):
    """A name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Release:
    """One released backbone and every fact the zoo knows about it, each traceable to ``sources``.

    A field left ``None`` was not found in the sources; ``unverified`` says which and why, and the card repeats it.

    Args:
        name: short zoo name, e.g. ``mocov2-r50-800ep`` (the Hub repository's name when published).
        method: the SSL method as the release names it (``mocov2``, ``mocov3``, ``simsiam``, ``swav``, ``dino``,
            ``byol``, ``simclr``); recorded as the conversion's ``--method``.
        arch: the backbone (timm/torchvision name) the converted file must turn out to be.
        url: where the file is downloaded from.
        file_name: the file's name (URLs with a query string do not show it).
        size: the file's size in bytes, when published.
        checksum: ``"<md5|sha256>:<hex>"``, the full digest or a published prefix of it; ``checksum_source`` says
            who publishes or pins it.
        layout: the converter's format name (``qscore_hf.convert.FORMATS``) the file is in.
        license: Hub license id of the weights; ``license_source`` where that is stated.
        data: pre-training data set (Hub data set id style, ``imagenet-1k``).
        epochs: pre-training epochs.
        image_mean, image_std: input normalization the published evaluation uses (on inputs in [0, 1]).
        resize, crop: the evaluation's resize of the shorter side and centre crop, in pixels.
        preprocessing_source: the evaluation code these come from.
        top1: the published ImageNet linear-probe top-1 (percent) of this file; ``top1_source`` names the page,
            ``top1_note`` what the number is exactly.
        paper: the paper to cite (arXiv page where the release links one).
        sources: the repositories and files (with commits) every fact above was read from.
        unverified: facts left ``None`` or not confirmed, and why.
    """

    name: str
    method: str
    arch: str
    url: str
    file_name: str
    layout: str
    license: str
    license_source: str
    data: str
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    resize: int
    crop: int
    preprocessing_source: str
    sources: tuple[str, ...]
    title: str = ""
    size: int | None = None
    checksum: str | None = None
    checksum_source: str | None = None
    epochs: int | None = None
    top1: float | None = None
    top1_source: str | None = None
    top1_note: str | None = None
    paper: str | None = None
    unverified: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "Release":
        """A release from a registry record (lists become tuples); unknown or missing keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - known)
        name = record.get("name", "?")
        if unknown:
            raise ValueError(f"zoo registry record {name!r}: unknown fields {', '.join(unknown)}")
        try:
            return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in record.items()})
        except TypeError as error:
            raise ValueError(f"zoo registry record {name!r}: {error}") from None

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem:
            raise ValueError(f"zoo registry record {self.name!r}: {problem}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def url_path(self) -> str:
        """Where the file sits in a mirror and in the cache: host and path of its URL, plus the file name when the
        URL has a query string (``drive.google.com/uc/<file_name>``)."""
        parsed = urlparse(self.url)
        path = parsed.netloc + parsed.path
        return f"{path.rstrip('/')}/{self.file_name}" if parsed.query else path

    @property
    def crop_pct(self) -> float:
        return self.crop / self.resize


def _problem(release: Release) -> str | None:
    """What is wrong with a record's fields (types, ranges, names that would escape the cache), or ``None``."""
    for key in _TEXT_FIELDS:
        if not isinstance(getattr(release, key), str) or not getattr(release, key):
            return f"{key} must be a non-empty string; got {getattr(release, key)!r}"
    for key in _OPTIONAL_TEXT_FIELDS:
        if getattr(release, key) is not None and not isinstance(getattr(release, key), str):
            return f"{key} must be a string or null; got {getattr(release, key)!r}"
    for key in ("name", "file_name"):
        value = getattr(release, key)
        if not _PLAIN_NAME.match(value) or value in (".", ".."):
            return f"{key} {value!r} must be a plain name (letters, digits, . _ + -; no / and no leading dot)"
    url_problem = _url_problem(release.url)
    if url_problem:
        return f"url {release.url!r} {url_problem}"
    for key in ("image_mean", "image_std"):
        value = getattr(release, key)
        if not isinstance(value, tuple) or len(value) != 3 or not all(_is_number(v) for v in value):
            return f"{key} must be 3 numbers (one per RGB channel); got {value!r}"
    if not all(v > 0 for v in release.image_std):
        return f"image_std must be positive; got {release.image_std!r}"
    for key, optional in (("resize", False), ("crop", False), ("size", True), ("epochs", True)):
        value = getattr(release, key)
        if not (optional and value is None) and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            return f"{key} must be a positive integer{' or null' if optional else ''}; got {value!r}"
    if release.crop > release.resize:
        return f"crop {release.crop} is larger than resize {release.resize} (the centre crop of the resized image)"
    if release.top1 is not None and not (_is_number(release.top1) and 0 <= release.top1 <= 100):
        return f"top1 must be a percentage in [0, 100] or null; got {release.top1!r}"
    for key in ("sources", "unverified"):
        value = getattr(release, key)
        if not isinstance(value, tuple) or not all(isinstance(item, str) for item in value):
            return f"{key} must be a list of strings; got {value!r}"
    if release.checksum is not None:
        algorithm, _, digest = release.checksum.partition(":")
        if algorithm not in _DIGEST_HEX or not re.fullmatch(r"[0-9a-f]+", digest):
            return f"checksum {release.checksum!r} is not md5:HEX or sha256:HEX (lower-case hex digits)"
        if not _MIN_CHECKSUM_HEX <= len(digest) <= _DIGEST_HEX[algorithm]:
            return (f"checksum {release.checksum!r} has {len(digest)} hex digits; a {algorithm} checksum needs "
                    f"{_MIN_CHECKSUM_HEX} to {_DIGEST_HEX[algorithm]} to verify the file")  # fmt: skip
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _url_problem(url: str) -> str | None:
    """Why ``url`` cannot name a file in the cache (its host and path become folders there), or ``None``."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return "must be an http(s) URL with a host"
    if not _PLAIN_NAME.match(parsed.netloc.replace(":", "_")) or parsed.username is not None:
        return "must have a plain host (and port), without user information"
    segments = unquote(parsed.path).split("/")[1:]
    if not segments or posixpath.normpath(unquote(parsed.path)) != unquote(parsed.path) or any(
        segment in ("", ".", "..") or "\\" in segment for segment in segments
    ):
        return "must have a normalized path of plain names (no ., .., // or \\)"
    return None


def load_registry(path: str | os.PathLike | None = None) -> dict[str, Release]:
    """The releases by name: from the JSON list at ``path`` or ``$QSCORE_HF_ZOO_REGISTRY``, else the shipped ones."""
    path = path or os.environ.get(REGISTRY_ENV)
    if path:
        try:
            records = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"zoo registry {path} (${REGISTRY_ENV}) is not a readable JSON list: {error}") from None
    else:
        from .releases import RELEASES as records
    releases = [Release.from_dict(record) for record in records]
    registry = {release.name: release for release in releases}
    if len(registry) != len(releases):
        raise ValueError(f"zoo registry {path or 'qscore_hf/zoo/releases.py'} names a release twice")
    return registry


def get_release(name: str, registry: Mapping[str, Release] | None = None) -> Release:
    """The release called ``name``; ``UnknownReleaseError`` lists the known names otherwise."""
    registry = load_registry() if registry is None else registry
    if name not in registry:
        raise UnknownReleaseError(f"{name!r} is no zoo release; known: {', '.join(registry)} (qscore-hf zoo list)")
    return registry[name]
