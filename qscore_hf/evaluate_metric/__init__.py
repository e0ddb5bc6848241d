"""Make ``evaluate.load("qscore")`` find this package's metric, offline, from any working directory.

``evaluate.load`` resolves a bare name by asking the Hub for ``evaluate-metric/<name>`` and, when that fails
(offline, or no such Hub repo), by importing the newest copy in its modules cache
(``HF_MODULES_CACHE/evaluate_modules/metrics/evaluate-metric--<name>/<64-hex hash>/<name>.py``). We place our
module there, under the hash of its content, and make it the newest copy. ``evaluate.load(METRIC_PATH)`` loads
the same file by path without any of this.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["METRIC_PATH", "install_evaluate_metric"]

METRIC_NAME = "qscore"
METRIC_PATH = Path(__file__).parent / METRIC_NAME
_FILES = (f"{METRIC_NAME}.py", "README.md")


def _atomic_copy(source: Path, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def install_evaluate_metric() -> Path:
    """Copy the metric into evaluate's modules cache as ``evaluate-metric--qscore``; returns its folder."""
    from evaluate.loading import init_dynamic_modules
    from filelock import FileLock

    digest = hashlib.sha256()
    for name in _FILES:
        digest.update((METRIC_PATH / name).read_bytes())
    module_root = Path(init_dynamic_modules()) / "metrics" / f"evaluate-metric--{METRIC_NAME}"
    target = module_root / digest.hexdigest()
    module_root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(module_root) + ".lock"):
        (module_root / "__init__.py").touch()
        target.mkdir(exist_ok=True)
        (target / "__init__.py").touch()
        for name in _FILES:
            if not (target / name).exists():
                _atomic_copy(METRIC_PATH / name, target / name)
        # evaluate picks the copy whose script is newest: ours, even if another version was cached later.
        os.utime(target / f"{METRIC_NAME}.py")
    return target
