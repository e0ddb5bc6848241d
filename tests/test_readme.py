"""The front page: short and free of development-log vocabulary, and every results
table of the README and the docs is what studies/render_results.py renders from the recorded results (its code
blocks run in tests/test_docs_contract.py)."""

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").rglob("*.md"))]
# Words of a development log, not of documentation: tracker numbers, work sessions and stops, machine anecdotes.
FORBIDDEN = [r"\bissue \d+", r"\bissues? #?\d+", r"\bstop \d+", r"\bsession\b", r"\bhelper\b", r"\bno GPU was (lent|available)",
             r"\bwas lent\b", r"\bthis task\b", r"\bpredates\b", r"\bstale\b", r"\bas measured in\b", r"\bnewcomer\b"]  # fmt: skip


def load_renderer():
    spec = importlib.util.spec_from_file_location("render_results", REPO / "studies" / "render_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 260


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_development_log_vocabulary(page):
    text = page.read_text()
    found = [m.group(0) for pattern in FORBIDDEN for m in re.finditer(pattern, text, flags=re.I)]
    assert not found, f"{page.name}: {found}"


def test_the_vocabulary_check_catches_a_log_line():
    line = "as measured in issue 22 (stop 8's figures; no GPU was lent to this task)"
    assert sum(bool(re.search(p, line, flags=re.I)) for p in FORBIDDEN) >= 4


def test_committed_results_tables_are_the_rendered_ones():
    renderer = load_renderer()
    stale = [str(page.relative_to(REPO)) for page in PAGES if renderer.render_page(page.read_text()) != page.read_text()]
    assert not stale, f"run `python studies/render_results.py`: stale tables in {stale}"
    marked = [page for page in PAGES if "<!-- results:" in page.read_text()]
    assert README in marked and REPO / "docs" / "results.md" in marked


def test_a_rendered_table_is_read_from_the_recorded_results(tmp_path):
    """The verdict's Fashion-MNIST row is the t-interval of the recorded per-encoder AUROCs, computed here by hand."""
    import json

    from scipy import stats

    renderer = load_renderer()
    test = json.loads((REPO / "studies/results/reproduce_cpu/summary.json").read_text())["scoring_selection"]["test"]
    values = test["knn_density"]["per_encoder"]
    n, mean = len(values), sum(values) / len(values)
    half = stats.t.ppf(0.975, n - 1) * (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 / n**0.5
    assert f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]" in renderer.render_verdict()
    page = "a\n<!-- results:term-ablation -->\nold\n<!-- /results:term-ablation -->\nb\n"
    rendered = renderer.render_page(page)
    assert "old" not in rendered and "| baseline |" in rendered and rendered.endswith("<!-- /results:term-ablation -->\nb\n")
    with pytest.raises(ValueError, match="unknown results table 'nope'"):
        renderer.render_page("<!-- results:nope -->\n<!-- /results:nope -->")
