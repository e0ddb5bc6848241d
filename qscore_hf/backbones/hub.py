"""Find a model's files, locally or through huggingface_hub's cache, and tell which library wrote them."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from huggingface_hub import constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import HFValidationError

__all__ = ["SourceRepo", "find_source", "hub_unreachable", "read_config"]

TIMM_HUB_PREFIX = "hf-hub:"


@dataclass(frozen=True)
class SourceRepo:
    """A model folder or Hub repo and its parsed ``config.json``.

    ``repo_id``, ``revision`` and ``commit`` are ``None`` for a local folder; ``commit`` is the snapshot the
    cache resolved ``revision`` to.
    """

    folder: Path
    config: dict[str, Any]
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None

    @property
    def library(self) -> str:
        """``"qscore"`` (our own folders), ``"timm"`` (``architecture`` in config.json) or ``"transformers"``."""
        if self.config.get("model_type") == "qscore":
            return "qscore"
        if "architecture" in self.config:
            return "timm"
        return "transformers"

    def record(self) -> dict[str, Any]:
        """Where the backbone came from, for ``QScoreConfig.backbone_source``."""
        location = {"repo_id": self.repo_id, "revision": self.revision, "commit": self.commit}
        if self.repo_id is None:
            location["path"] = str(self.folder)
        return {"library": self.library, **location}

    def snapshot(self, **hub_kwargs: Any) -> Path:
        """The folder with all of the repo's files (downloaded into the cache once; offline, the cached snapshot)."""
        if self.repo_id is None:
            return self.folder
        return Path(snapshot_download(self.repo_id, revision=self.commit or self.revision, **hub_kwargs))


def find_source(name_or_path: str | Path, revision: str | None = None, **hub_kwargs: Any) -> SourceRepo | None:
    """The folder (local, or the cached Hub snapshot) holding ``config.json`` of ``name_or_path``; ``None`` when
    there is no such config (callers then leave the error to transformers, which names it).

    ``name_or_path`` is a local folder, a Hub id, or a timm id with the ``hf-hub:`` prefix. ``hub_kwargs`` go to
    huggingface_hub (``cache_dir``, ``token``, ``local_files_only``); with ``HF_HUB_OFFLINE=1`` the cache answers.
    """
    name = str(name_or_path)
    name = name[len(TIMM_HUB_PREFIX) :] if name.startswith(TIMM_HUB_PREFIX) else name
    path = Path(name).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            return None
        return SourceRepo(path, read_config(config_file))
    try:
        config_file = Path(hf_hub_download(name, "config.json", revision=revision, **hub_kwargs))
    except (OSError, ValueError, HFValidationError):
        return None
    snapshot = config_file.parent
    commit = snapshot.name if snapshot.parent.name == "snapshots" else None
    return SourceRepo(snapshot, read_config(config_file), name, revision, commit)


def read_config(config_file: Path) -> dict[str, Any]:
    """The parsed ``config.json``, or ``ValueError`` in one line when it is not a JSON object."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(
            f"{config_file} is not valid JSON ({error}): a damaged download or a hand edit; download the repo again "
            "or fix config.json."
        ) from None
    if not isinstance(config, dict):
        raise ValueError(
            f"{config_file} holds a JSON {type(config).__name__}, not an object of settings; download the repo again "
            "or fix config.json."
        )
    return config


def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be asked (``"huggingface.co does not resolve: ..."``: no network), or ``None``
    when it can, or need not be (``HF_HUB_OFFLINE=1``: the cache answers without asking).

    A name that does not resolve fails at once here; huggingface_hub would retry it five times with back-off, about
    30 s per file (2.5 minutes before ``from_pretrained`` of an absent Hub id gives up).
    """
    if constants.HF_HUB_OFFLINE:
        return None
    host = urlparse(constants.ENDPOINT).hostname or constants.ENDPOINT
    try:
        socket.getaddrinfo(host, 443)
    except OSError as error:  # socket.gaierror
        return f"{host} does not resolve: {error}"
    return None
