"""Atomic folder writes: model folders keep unrelated files, report folders are replaced whole."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from qscore_hf.io_utils import (
    OUTPUT_MANIFEST,
    atomic_directory,
    atomic_write_text,
    check_model_source,
    check_writable,
    recover_directory,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def existing(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale_plot.png").write_text("earlier run")
    (target / "config.json").write_text("old config")
    return target


@pytest.fixture
def report(existing):
    """``existing`` as an earlier report write left it: its manifest lists its entries."""
    (existing / OUTPUT_MANIFEST).write_text('{"files": ["config.json", "stale_plot.png"]}')
    return existing


def test_model_folder_keeps_unrelated_files_but_not_old_configs(existing):
    with atomic_directory(existing) as tmp:
        (tmp / "model.safetensors").write_text("new weights")
    assert sorted(p.name for p in existing.iterdir()) == ["model.safetensors", "stale_plot.png"]


def test_report_folder_is_replaced_whole(report):
    with atomic_directory(report, keep_other_files=False) as tmp:
        (tmp / "summary.json").write_text("{}")
    assert sorted(p.name for p in report.iterdir()) == [OUTPUT_MANIFEST, "summary.json"]


def test_report_folder_without_a_manifest_is_refused(existing):
    with pytest.raises(FileExistsError, match="config.json, stale_plot.png"):
        with atomic_directory(existing, keep_other_files=False) as tmp:
            (tmp / "summary.json").write_text("{}")
    assert sorted(p.name for p in existing.iterdir()) == ["config.json", "stale_plot.png"]


def test_failure_leaves_the_old_folder_and_no_temporary_one(report):
    with pytest.raises(RuntimeError):
        with atomic_directory(report, keep_other_files=False) as tmp:
            (tmp / "summary.json").write_text("{}")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in report.parent.iterdir()) == ["out"]
    assert (report / "stale_plot.png").read_text() == "earlier run"


# ------------------------------------------------------------------------------ killed writes, modes, writability
KILLED_WRITE = """
import os, signal, sys
from pathlib import Path
from qscore_hf.io_utils import atomic_directory

target, kill_at = Path(sys.argv[1]), sys.argv[2]
renames = []
real_rename = os.rename

def rename(source, destination):
    renames.append((source, destination))
    if kill_at == f"rename {len(renames)}":
        os.kill(os.getpid(), signal.SIGKILL)
    real_rename(source, destination)

os.rename = rename
with atomic_directory(target, keep_other_files=False) as tmp:
    (tmp / "summary.json").write_text("new")
    if kill_at == "writing":
        os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_write(target: Path, kill_at: str) -> None:
    run = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(target), kill_at], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)  # fmt: skip
    assert run.returncode == -9, run.stderr.decode()[-2000:]


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    ("kill_at", "debris", "after_recovery"),
    [
        ("writing", ".out.tmp-", "old"),  # the new folder was incomplete: dropped
        ("rename 2", ".out.new-", "old"),  # complete, but the old folder was still in place: the old one stays
        ("rename 3", ".out.old-", "new"),  # killed between the two renames of the swap: the complete new one
    ],
)
def test_a_killed_write_is_recovered_and_its_debris_removed(report, kill_at, debris, after_recovery):
    existing = report
    _killed_write(existing, kill_at)
    left = _names(existing.parent)
    assert any(name.startswith(debris) for name in left), left
    if kill_at == "rename 3":  # the target is missing at this instant...
        assert "out" not in left
    recover_directory(existing)  # ...and the next write (or this) puts a complete folder back
    assert _names(existing.parent) == ["out"]
    expected = ["summary.json"] if after_recovery == "new" else ["config.json", "stale_plot.png"]
    expected = sorted([*expected, OUTPUT_MANIFEST])
    assert _names(existing) == expected


def test_next_write_cleans_debris_but_not_a_running_writers(report):
    existing = report
    _killed_write(existing, "writing")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = existing.parent / f".out.tmp-{sleeper.pid}-abcd1234"
        live.mkdir()
        with atomic_directory(existing) as tmp:
            (tmp / "model.safetensors").write_text("new weights")
        assert _names(existing.parent) == [live.name, "out"]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_output_gets_the_modes_of_the_users_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "sub").mkdir()
            fd, private = tempfile.mkstemp(dir=tmp / "sub")  # a library's 0600 temporary file, kept as output
            os.close(fd)
            (tmp / "weights.safetensors").write_text("w")
    finally:
        os.umask(previous)
    out = tmp_path / "out"
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert stat.S_IMODE((out / "sub").stat().st_mode) == 0o750
    assert stat.S_IMODE((out / "sub" / os.path.basename(private)).stat().st_mode) == 0o640
    assert stat.S_IMODE((out / "weights.safetensors").stat().st_mode) == 0o640


def test_atomic_write_text_replaces_a_file_keeping_its_mode_and_leaves_no_temporary(tmp_path):
    card = tmp_path / "README.md"
    card.write_text("old card")
    card.chmod(0o604)
    atomic_write_text(card, "new card")
    assert card.read_text() == "new card" and stat.S_IMODE(card.stat().st_mode) == 0o604
    previous = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "zoo.json", "{}\n")  # a new file: the umask's mode, not a temporary's 0600
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "zoo.json").stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "zoo.json"]


def test_check_writable_fails_in_one_line(tmp_path):
    check_writable(tmp_path / "new" / "deeper")  # creatable: fine, and nothing is created
    assert not (tmp_path / "new").exists()
    with pytest.raises(PermissionError, match=r"^--out /proc/qscore/out: cannot write under /proc \(.+\); choose a writable folder\.$"):
        check_writable("/proc/qscore/out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        check_writable(tmp_path / "file" / "out")


def test_missing_model_folder_is_named_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "byol" / "model").mkdir(parents=True)
    check_model_source("runs/byol/model")  # an existing folder
    check_model_source("org/byol-r18")  # shaped like a Hub id: left to huggingface_hub
    for missing in ("runs/byol-qreg/model", "./model", "model/"):
        with pytest.raises(FileNotFoundError, match=rf"^{missing}: no such model folder \(and not a Hub id org/name\)"):
            check_model_source(missing)
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a model folder"):
        check_model_source("weights.bin")
