"""The zoo: released SSL backbones as a registry of data (``releases.py``), built into ``QScoreModel`` folders by
``qscore-hf zoo build`` and loadable by name with ``QScoreModel.from_pretrained("<zoo name>")``.

Example::

    from qscore_hf.zoo import build_release, get_release

    build_release(get_release("mocov2-r50-800ep"), "models/mocov2-r50-800ep", stats="imagenet_val_folder")

Each public name is imported on first use (PEP 562), so that ``qscore-hf zoo`` parses its arguments, and reads the
registry, without importing huggingface_hub or the conversion stack (bench/startup.py).
"""

from __future__ import annotations

from ..lazy_exports import lazy_exports
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .build import BuildError, build_release, built_folder
    from .download import ChecksumMismatchError, DownloadError, fetch_release_file
    from .registry import Release, UnknownReleaseError, get_release, load_registry

# public name -> module that defines it
_LAZY = {
    "BuildError": ".build",
    "build_release": ".build",
    "built_folder": ".build",
    "ChecksumMismatchError": ".download",
    "DownloadError": ".download",
    "fetch_release_file": ".download",
    "Release": ".registry",
    "UnknownReleaseError": ".registry",
    "get_release": ".registry",
    "load_registry": ".registry",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
