"""Atomic folder writes: model folders keep unrelated files, report folders are replaced whole."""

from __future__ import annotations

import pytest

from qscore_hf.io_utils import atomic_directory


@pytest.fixture
def existing(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale_plot.png").write_text("earlier run")
    (target / "config.json").write_text("old config")
    return target


def test_model_folder_keeps_unrelated_files_but_not_old_configs(existing):
    with atomic_directory(existing) as tmp:
        (tmp / "model.safetensors").write_text("new weights")
    assert sorted(p.name for p in existing.iterdir()) == ["model.safetensors", "stale_plot.png"]


def test_report_folder_is_replaced_whole(existing):
    with atomic_directory(existing, keep_other_files=False) as tmp:
        (tmp / "summary.json").write_text("{}")
    assert sorted(p.name for p in existing.iterdir()) == ["summary.json"]


def test_failure_leaves_the_old_folder_and_no_temporary_one(existing):
    with pytest.raises(RuntimeError):
        with atomic_directory(existing, keep_other_files=False) as tmp:
            (tmp / "summary.json").write_text("{}")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in existing.parent.iterdir()) == ["out"]
    assert (existing / "stale_plot.png").read_text() == "earlier run"
