"""Every shell command of the README and the documentation that tests/documented_commands.py marks ``Run`` runs as a
user types it, with the defaults a user gets (trackers, progress bars, workers), only data and step counts shrunk.

The pages run in order (README.md, then docs/) in one scratch clone, each page's commands in its order, so a later
command uses what an earlier one wrote (a guide's `score` reads the model its training command wrote). A command that
several pages repeat runs once: its outputs are already there for the next page."""

from __future__ import annotations

import subprocess

import pytest

from doc_blocks import SHELL, blocks, commands, pages, scratch_clone, user_environment
from documented_commands import COMMANDS, Run

pytestmark = pytest.mark.runs_long  # minutes of training and scoring: started first under pytest-xdist


def test_documented_commands_run_as_typed(tmp_path):
    work, ran = scratch_clone(tmp_path), []
    for block in (b for page in pages() for b in blocks(page) if b.lang in SHELL and b.no_run is None):
        for command in commands(block):
            entry = COMMANDS[command]
            if not isinstance(entry, Run) or command in ran:
                continue
            typed = f"{command} {entry.shrink}".strip()
            run = subprocess.run(["bash", "-c", typed], cwd=work, env=user_environment(tmp_path, entry.env),
                                 capture_output=True, text=True, timeout=entry.timeout, stdin=subprocess.DEVNULL)  # fmt: skip
            assert run.returncode == 0, f"{block.where}: {typed}\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
            assert entry.expect in run.stdout + run.stderr, f"{block.where}: {typed}: no {entry.expect!r} in\n{run.stdout}"
            ran.append(command)
    assert len(ran) == sum(isinstance(entry, Run) for entry in COMMANDS.values())
