"""The documented commands are the tested commands: every ```python block of the README and the documentation runs
as written (and prints what the page says it prints), and every shell command has an entry in
tests/documented_commands.py saying who runs it as typed: .ci/run or tests/test_documented_commands.py.
Conventions: tests/doc_blocks.py."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

from doc_blocks import ROOT, SHELL, Block, blocks, ci_commands, commands, pages, scratch_clone, user_environment
from documented_commands import CI, COMMANDS, DOCUMENTED, ENTRY_POINTS, Run

PAGES = {str(page.relative_to(ROOT)): blocks(page) for page in pages()}


def _runnable(lang: tuple[str, ...] | str) -> dict[str, list[Block]]:
    langs = (lang,) if isinstance(lang, str) else lang
    found = {page: [b for b in found if b.lang in langs and b.no_run is None] for page, found in PAGES.items()}
    return {page: found for page, found in found.items() if found}


def _documented_commands() -> dict[str, str]:
    """command -> where it first appears."""
    found: dict[str, str] = {}
    for block in (b for page in PAGES.values() for b in page if b.lang in SHELL and b.no_run is None):
        for command in commands(block):
            found.setdefault(command, block.where)
    return found


def test_every_documented_command_has_an_entry_and_every_entry_a_command():
    documented = _documented_commands()
    missing = {command: where for command, where in documented.items() if command not in COMMANDS}
    assert not missing, f"documented commands with no entry in tests/documented_commands.py: {missing}"
    stale = sorted(set(COMMANDS) - set(documented))
    assert not stale, f"entries of tests/documented_commands.py that no page documents any more: {stale}"


def test_ci_runs_the_readme_install_and_test_commands_as_typed():
    ci_run = (ROOT / ".ci" / "run").read_text()
    marked = set(ci_commands("fresh-install"))
    assert 'readme fresh-install' in ci_run and 'python tests/doc_blocks.py ci "$1"' in ci_run
    assert {command for command, entry in COMMANDS.items() if entry == CI} == marked


@pytest.mark.parametrize("page", sorted(_runnable("python")))
def test_python_blocks_run_as_written(page, tmp_path):
    page_blocks = [b for b in PAGES[page] if b.no_run is None]
    runnable = [b for b in page_blocks if b.lang == "python"]
    expected = {}  # index of a python block -> the text block right after it
    for before, after in zip(page_blocks, page_blocks[1:]):
        if before.lang == "python" and after.lang == "text" and after.line == _closing_line(before) + 1:
            expected[runnable.index(before)] = after.text
    work = scratch_clone(tmp_path)
    source = tmp_path / "blocks.json"
    source.write_text(json.dumps([{"where": b.where, "text": b.text} for b in runnable]))
    run = subprocess.run([sys.executable, "-c", NOTEBOOK, str(source), str(tmp_path / "out.json")], cwd=work,
                         env=user_environment(tmp_path), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    outputs = json.loads((tmp_path / "out.json").read_text())
    for index, text in expected.items():
        assert _lines(outputs[index]) == _lines(text), f"{runnable[index].where} printed:\n{outputs[index]}"


def _closing_line(block: Block) -> int:
    return block.line + block.text.count("\n") + 1


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip("\n").splitlines()]


# Runs a page's python blocks in order in one namespace; each block's stdout is kept for the comparison.
NOTEBOOK = """
import contextlib, io, json, sys
blocks = json.load(open(sys.argv[1]))
namespace, outputs = {"__name__": "__main__"}, []
for block in blocks:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(compile(block["text"], block["where"], "exec"), namespace)
    outputs.append(buffer.getvalue())
    sys.stdout.write(buffer.getvalue())
json.dump(outputs, open(sys.argv[2], "w"))
"""


def test_the_block_reader_on_a_page_written_for_it(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Intro\n\n```bash\npip install -e \".[test]\"   # the tests\nqscore-hf score --model m \\\n"
        "    --dataset digits --out 'a # b'\n\n```\n<!-- no-run: needs 8 GPUs -->\n```bash\naccelerate launch x\n```\n"
        "<!-- ci: install -->\n```bash\npip install .\n```\n```python\nprint(1)\n```\n```text\n1\n```\n"
    )
    found = blocks(page, tmp_path)
    assert [(b.lang, b.line, b.no_run, b.ci) for b in found] == [
        ("bash", 3, None, None), ("bash", 10, "needs 8 GPUs", None), ("bash", 14, None, "install"),
        ("python", 17, None, None), ("text", 20, None, None),
    ]
    assert commands(found[0]) == ['pip install -e ".[test]"', "qscore-hf score --model m --dataset digits --out 'a # b'"]
    assert _closing_line(found[3]) + 1 == found[4].line
    (tmp_path / "bad.md").write_text("```python\nprint(1)\n")
    with pytest.raises(ValueError, match="never closed"):
        blocks(tmp_path / "bad.md", tmp_path)


# What switches a default off in a test's code: the progress bars, the tracker, the loader's workers.
DEFAULTS_OFF = ("--no-progress", "progress=False", 'log_with="none"', '"--log-with", "none"', "num_workers=0",
                '"--num-workers", "0"')  # fmt: skip


def _entry_points() -> set[str]:
    from qscore_hf import cli

    names = {f"qscore-hf {command}" for command in cli._COMMANDS if command != "zoo"}
    zoo = cli._build_parser("zoo")._subparsers._group_actions[0].choices["zoo"]
    names |= {f"qscore-hf zoo {action}" for action in zoo._subparsers._group_actions[0].choices}
    return names | {"training/pretrain.py", "training/linear_eval.py"}


def test_every_entry_point_keeps_one_test_with_every_default_on():
    assert set(ENTRY_POINTS) == _entry_points()
    for entry_point, where in ENTRY_POINTS.items():
        if where == DOCUMENTED:
            script = entry_point.replace("qscore-hf ", "-m qscore_hf.cli ")
            typed = [c for c, e in COMMANDS.items() if isinstance(e, Run) and (entry_point in c or script in c)]
            assert typed, f"{entry_point}: no documented command runs it"
            continue
        file, name = where.split("::")
        (function,) = [n for n in ast.walk(ast.parse((ROOT / file).read_text()))
                       if isinstance(n, ast.FunctionDef) and n.name == name]  # fmt: skip
        source = ast.get_source_segment((ROOT / file).read_text(), function)
        assert not [marker for marker in DEFAULTS_OFF if marker in source], f"{where} switches a default off"
