"""The documentation site builds in MkDocs' strict mode (a broken link, a missing page or a docstring that does not
parse fails it) and its API reference documents every public symbol of qscore_hf."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_strict_build(tmp_path):
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=REPO, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin",
                                                                         "PYTHONPATH": str(REPO), "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert 'id="qscore_hf.QScoreModel"' in api  # mkdocstrings rendered the docstrings, not just the headings


def test_api_reference_lists_every_public_symbol():
    import qscore_hf

    documented = set(re.findall(r"^::: qscore_hf\.(\w+)$", (REPO / "docs" / "api.md").read_text(), flags=re.M))
    missing = sorted(set(qscore_hf.__all__) - documented)
    assert not missing, f"add `::: qscore_hf.NAME` to docs/api.md for {missing}"


def test_every_page_is_in_the_navigation():
    nav = (REPO / "mkdocs.yml").read_text()
    pages = {str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md")}
    assert not [p for p in sorted(pages) if p not in nav]
