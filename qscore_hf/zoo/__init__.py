"""The zoo: released SSL backbones as a registry of data (``releases.py``), built into ``QScoreModel`` folders by
``qscore-hf zoo build`` and loadable by name with ``QScoreModel.from_pretrained("<zoo name>")``.

Example::

    from qscore_hf.zoo import build_release, get_release

    build_release(get_release("mocov2-r50-800ep"), "models/mocov2-r50-800ep", stats="imagenet_val_folder")
"""

from .build import BuildError, build_release, built_folder
from .download import ChecksumMismatchError, DownloadError, fetch_release_file
from .registry import Release, UnknownReleaseError, get_release, load_registry

__all__ = [
    "BuildError",
    "ChecksumMismatchError",
    "DownloadError",
    "Release",
    "UnknownReleaseError",
    "build_release",
    "built_folder",
    "fetch_release_file",
    "get_release",
    "load_registry",
]
