"""The code a saved ``QScoreModel`` folder carries, so that transformers loads it where qscore_hf is not installed.

transformers' ``trust_remote_code`` convention (what ``register_for_auto_class`` produces): ``config.json`` and
``preprocessor_config.json`` name their classes in ``auto_map`` (``"module.Class"``), and the folder holds those
modules and every module they import relatively, as flat files. A sub-package (``backbones/``) is written as
``backbones.py`` (its ``__init__``) beside its modules: they import each other only as ``from .name import``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

__all__ = ["AUTO_MAP", "PROCESSOR_AUTO_MAP", "write_remote_code"]

AUTO_MAP = {"AutoConfig": "configuration_qscore.QScoreConfig", "AutoModel": "modeling_qscore.QScoreModel"}
PROCESSOR_AUTO_MAP = {"AutoImageProcessor": "image_processing_qscore.QScoreImageProcessor"}
_PACKAGE = Path(__file__).parent
_RELATIVE_IMPORT = re.compile(r"^\s*from\s+\.(\w+)\s+import", flags=re.MULTILINE)
_PARENT_IMPORT = re.compile(r"^\s*from\s+\.\.", flags=re.MULTILINE)
# `from . import name` and `from .package.module import`: Python resolves them, transformers' loader does not (it
# copies no `name`, and looks for a flat file `package.module.py`).
_UNFOLLOWED_IMPORT = re.compile(r"^\s*(from\s+\.(?:\s+import\s+\w+|\w+\.[\w.]+\s+import))", flags=re.MULTILINE)


def _module_file(folder: Path, name: str) -> Path:
    """``name.py`` in ``folder``, or the ``__init__.py`` of the sub-package ``name``."""
    flat = folder / f"{name}.py"
    return flat if flat.is_file() else folder / name / "__init__.py"


def _code_files() -> dict[str, Path]:
    """Flat file name -> source file, for the Auto classes' modules and everything they import relatively."""
    roots = {value.split(".")[0] for value in (*AUTO_MAP.values(), *PROCESSOR_AUTO_MAP.values())}
    todo = [(name, _PACKAGE) for name in sorted(roots)]
    files: dict[str, Path] = {}
    while todo:
        name, folder = todo.pop()
        if f"{name}.py" in files:
            continue
        source = _module_file(folder, name)
        if not source.is_file():
            raise FileNotFoundError(f"remote code: module {name!r} imported relatively has no file in {folder}")
        text = source.read_text(encoding="utf-8")
        if _PARENT_IMPORT.search(text):
            raise ValueError(f"remote code: {source} imports from a parent package (from ..); flat files cannot")
        unfollowed = _UNFOLLOWED_IMPORT.search(text)
        if unfollowed:
            raise ValueError(
                f"remote code: {source} has `{unfollowed.group(1)}`, which transformers' remote-code loader does not "
                "follow (the folder would not load where qscore_hf is not installed); write `from .name import ...` "
                "of a sibling module, or import an optional sub-package by name (importlib.import_module)"
            )
        files[f"{name}.py"] = source
        todo.extend((child, source.parent) for child in _RELATIVE_IMPORT.findall(text))
    return files


def _add_auto_map(json_file: Path, auto_map: dict[str, str]) -> None:
    data = json.loads(json_file.read_text(encoding="utf-8"))
    data["auto_map"] = {**data.get("auto_map", {}), **auto_map}
    json_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_remote_code(folder: str | Path) -> list[str]:
    """Copy the modeling code into a saved model folder and point its ``auto_map`` at it; returns the file names."""
    folder = Path(folder)
    files = _code_files()
    for name, source in files.items():
        shutil.copyfile(source, folder / name)
    _add_auto_map(folder / "config.json", AUTO_MAP)
    _add_auto_map(folder / "preprocessor_config.json", PROCESSOR_AUTO_MAP)
    return sorted(files)
