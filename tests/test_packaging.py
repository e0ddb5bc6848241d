"""What a normal (non-editable) install ships: every file the package reads. `.ci/run` also builds the wheel,
installs it into a fresh environment and writes a model card with it."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_package_data_lists_every_non_python_file_of_the_package():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["qscore_hf"]
    package = ROOT / "qscore_hf"
    data_files = [
        path.relative_to(package).as_posix()
        for path in package.rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    ]
    assert "templates/model_card.md" in data_files
    unshipped = [name for name in data_files if not any(fnmatch.fnmatch(name, pattern) for pattern in globs)]
    assert unshipped == []
    # the metric module is a .py file outside any Python package: it is shipped only through package-data
    assert any(fnmatch.fnmatch("evaluate_metric/qscore/qscore.py", pattern) for pattern in globs)
