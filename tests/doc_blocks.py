"""The code blocks of the README and the documentation pages, as the tests and CI run them (standard library only:
.ci/run calls it before any virtual environment exists).

Conventions of the pages:
- a ```python block runs as written; a page's blocks run in order in one namespace, like a notebook;
- a ```text block right after a ```python block is that block's expected output;
- each command of a ```bash block (lines joined at a trailing backslash, ``#`` comments dropped) is listed in
  tests/documented_commands.py, which says how the suite runs it;
- ``<!-- no-run: REASON -->`` on the line before a fence exempts that block (a GPU, the Hub's network), with its reason;
- ``<!-- ci: ROLE -->`` on the line before a ```bash block marks what .ci/run runs as typed (ROLE: fresh-install, the install and test commands).

    python tests/doc_blocks.py ci fresh-install   # the commands of README.md's block marked <!-- ci: fresh-install -->
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHELL = ("bash", "sh", "shell")
_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_MARK = re.compile(r"^\s*<!--\s*(no-run|ci):\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    no_run: str | None = None  # the reason, when exempt
    ci: str | None = None  # the role, when .ci/run runs it

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def pages(root: Path = ROOT) -> list[Path]:
    """README.md and every Markdown page of the documentation site."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def blocks(path: Path, root: Path = ROOT) -> list[Block]:
    """The fenced blocks of one page, with the marker on the line before each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, index = [], 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening or not opening.group(2):
            index += 1
            continue
        end = next((j for j in range(index + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"{path}:{index + 1}: a ``` fence that is never closed")
        indent = len(opening.group(1))
        text = "\n".join(line[indent:] for line in lines[index + 1 : end]) + "\n"
        mark = _MARK.match(lines[index - 1]) if index else None
        kind, value = (mark.group(1), mark.group(2)) if mark else (None, None)
        if kind == "no-run" and not value:
            raise ValueError(f"{path}:{index}: <!-- no-run: --> needs a reason")
        found.append(Block(str(path.relative_to(root)), index + 1, opening.group(2).lower(), text,
                           value if kind == "no-run" else None, value if kind == "ci" else None))  # fmt: skip
        index = end + 1
    return found


def commands(block: Block) -> list[str]:
    """A shell block's commands: continuation lines joined, comments and blank lines dropped, spaces squeezed."""
    joined, current = [], ""
    for raw in block.text.splitlines():
        line = _drop_comment(raw).rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            joined.append(" ".join(current.split()))
        current = ""
    if current.strip():
        joined.append(" ".join(current.split()))
    return joined


def _drop_comment(line: str) -> str:
    """``line`` without a ``#`` comment (a ``#`` at the start or after a blank, outside quotes)."""
    quote = None
    for position, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (position == 0 or line[position - 1].isspace()):
            return line[:position]
    return line


def ci_commands(role: str, root: Path = ROOT) -> list[str]:
    """The commands of README.md's blocks marked ``<!-- ci: ROLE -->``."""
    marked = [block for block in blocks(root / "README.md", root) if block.ci == role]
    if not marked:
        raise SystemExit(f"README.md has no ```bash block marked <!-- ci: {role} -->")
    return [command for block in marked for command in commands(block)]


def scratch_clone(tmp_path: Path) -> Path:
    """A fresh clone's working tree to run commands in: the checkout copied (no .git, no caches), nothing shared."""
    work = tmp_path / "clone"
    shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "*.egg-info",
                                                              "build", "dist", "runs", "outputs", "qscore-demo"))
    return work


def user_environment(tmp_path: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The user's environment, offline, with a Hugging Face home of its own and this interpreter's scripts first."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": path, **(extra or {})}


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "ci":
        raise SystemExit("usage: python tests/doc_blocks.py ci ROLE")
    print("\n".join(ci_commands(sys.argv[2])))
