"""Hardening round 3, items 1-2: a write replaces only what qscore-hf wrote itself, and saving through links keeps
them links (issue 33)."""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qscore_hf import QScoreConfig, QScoreModel
from qscore_hf.cli import main
from qscore_hf.io_utils import OUTPUT_MANIFEST, atomic_directory, check_output_folder

SMALL = dict(backbone="resnet18_cifar", image_size=32, crop_pct=1.0)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def thesis(tmp_path) -> Path:
    """A user's folder: a thesis and a data sub-folder that no qscore-hf command wrote."""
    folder = tmp_path / "thesis"
    (folder / "data").mkdir(parents=True)
    (folder / "thesis.tex").write_text("three years of work")
    (folder / "data" / "table.csv").write_text("1,2,3")
    return folder


# ------------------------------------------------------------------------------------------- item 1: report folders
def test_a_report_write_refuses_a_folder_holding_other_files_and_changes_nothing(thesis):
    with pytest.raises(FileExistsError, match=r"thesis\.tex") as error:
        with atomic_directory(thesis, keep_other_files=False) as tmp:
            (tmp / "summary.json").write_text("{}")
    assert "\n" not in str(error.value) and "new or empty folder" in str(error.value)
    assert _names(thesis) == ["data", "thesis.tex"] and (thesis / "thesis.tex").read_text() == "three years of work"
    assert _names(thesis.parent) == ["thesis"]  # no temporary folder left


def test_a_file_appearing_during_the_work_is_not_deleted_either(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileExistsError, match="notes.txt"):
        with atomic_directory(out, keep_other_files=False) as tmp:
            out.mkdir()
            (out / "notes.txt").write_text("written meanwhile")
            (tmp / "summary.json").write_text("{}")
    assert (out / "notes.txt").read_text() == "written meanwhile"


def test_a_report_folder_it_wrote_is_replaced_whole_stale_plots_included(tmp_path):
    out = tmp_path / "out"
    with atomic_directory(out, keep_other_files=False) as tmp:
        (tmp / "summary.json").write_text("first")
        (tmp / "pr_curve.png").write_text("only the first run drew this")
        (tmp / "images").mkdir()
    with atomic_directory(out, keep_other_files=False) as tmp:
        (tmp / "summary.json").write_text("second")
    assert _names(out) == [OUTPUT_MANIFEST, "summary.json"] and (out / "summary.json").read_text() == "second"


def test_score_cli_refuses_such_a_folder_before_any_work(thesis, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()  # never loaded: the output folder is refused first
    assert main(["score", "--model", str(model), "--dataset", "digits", "--out", str(thesis), "--no-progress"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("qscore-hf score: error:") and "thesis.tex" in error and "\n" not in error
    assert _names(thesis) == ["data", "thesis.tex"]


def test_out_dot_writes_into_the_current_folder(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for text in ("first", "second"):  # the second replaces the first: it is the command's own output
        with atomic_directory(".", keep_other_files=False) as tmp:
            (tmp / "summary.json").write_text(text)
    assert Path.cwd() == work and (work / "summary.json").read_text() == "second"
    assert _names(tmp_path) == ["work"]
    (work / "thesis.tex").write_text("mine")
    with pytest.raises(FileExistsError, match="thesis.tex"):
        check_output_folder(".")


# -------------------------------------------------------------------------------------------- item 1: model folders
def test_a_model_save_replaces_only_its_own_weight_and_config_files(tmp_path):
    folder = tmp_path / "model"
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "model.safetensors").write_text("an earlier checkpoint")
    (folder / "model_notes.txt").write_text("notes")
    (folder / "config.json.bak").write_text("a backup")
    (folder / "model-00001-of-00002.safetensors").write_text("a stale shard of an earlier save")
    (folder / "model.safetensors.index.json").write_text("{}")
    torch.manual_seed(0)
    model = QScoreModel(QScoreConfig(**SMALL)).eval()
    model.save_pretrained(folder)
    names = set(_names(folder))
    assert {"models", "model_notes.txt", "config.json.bak", "model.safetensors", "config.json"} <= names
    assert not {"model-00001-of-00002.safetensors", "model.safetensors.index.json", OUTPUT_MANIFEST} & names
    assert (folder / "models" / "model.safetensors").read_text() == "an earlier checkpoint"
    assert (folder / "model_notes.txt").read_text() == "notes"
    QScoreModel.from_pretrained(folder)


# ------------------------------------------------------------------------------------------------ item 2: symlinks
def test_saving_to_a_link_writes_through_it_and_keeps_it_a_link(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "step_1000").mkdir(parents=True)
    (checkpoints / "step_1000" / "model.safetensors").write_text("old weights")
    (checkpoints / "step_1000" / "notes.txt").write_text("step 1000")
    (checkpoints / "latest").symlink_to("step_1000")
    with atomic_directory(checkpoints / "latest") as tmp:
        (tmp / "model.safetensors").write_text("new weights")
    assert (checkpoints / "latest").is_symlink() and os.readlink(checkpoints / "latest") == "step_1000"
    assert (checkpoints / "step_1000" / "model.safetensors").read_text() == "new weights"
    assert (checkpoints / "step_1000" / "notes.txt").read_text() == "step 1000"
    assert _names(checkpoints) == ["latest", "step_1000"]  # no .latest.old-* link left behind


def test_a_linked_data_folder_stays_a_link_and_is_not_copied(tmp_path):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "images.bin").write_bytes(b"x" * 1000)
    folder = tmp_path / "runs" / "model"
    folder.mkdir(parents=True)
    (folder / "data").symlink_to("../../dataset")
    (folder / "gone").symlink_to("../../no-such-file")  # dangling: must not make the folder unsavable
    (folder / "logs").mkdir()
    (folder / "logs" / "train.jsonl").write_text("{}\n")
    (folder / "logs" / "latest.jsonl").symlink_to("train.jsonl")
    for round_ in range(2):
        with atomic_directory(folder) as tmp:
            (tmp / "model.safetensors").write_text(f"weights {round_}")
    assert (folder / "data").is_symlink() and os.readlink(folder / "data") == "../../dataset"
    assert (folder / "gone").is_symlink() and not (folder / "gone").exists()
    assert (folder / "logs" / "latest.jsonl").is_symlink() and (folder / "logs" / "train.jsonl").read_text() == "{}\n"
    assert _names(dataset) == ["images.bin"]
    assert _names(folder.parent) == ["model"]


def test_a_re_save_keeps_the_user_files_modes_and_content(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    script = folder / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o750)
    with atomic_directory(folder) as tmp:
        (tmp / "model.safetensors").write_text("weights")
    assert (script.stat().st_mode & 0o777) == 0o750 and script.read_text() == "#!/bin/sh\n"


def test_a_real_model_saved_through_a_link_loads_back(tmp_path):
    (tmp_path / "step_1").mkdir()
    (tmp_path / "latest").symlink_to("step_1")
    torch.manual_seed(1)
    model = QScoreModel(QScoreConfig(**SMALL)).eval()
    model.save_pretrained(tmp_path / "latest")
    assert (tmp_path / "latest").is_symlink()
    weights = load_file(str(tmp_path / "step_1" / "model.safetensors"))
    assert torch.equal(weights["backbone.conv1.weight"], model.backbone.conv1.weight.detach())
    QScoreModel.from_pretrained(tmp_path / "latest")


# ------------------------------------------------------------------------- item 3: backbone_config.checkpoint_path
@pytest.mark.parametrize("target", ["missing.safetensors", "secret.pth"])
def test_a_config_cannot_make_timm_read_a_file(tmp_path, capsys, target):
    import json

    folder = tmp_path / "model"
    torch.manual_seed(2)
    QScoreModel(QScoreConfig(backbone="resnet10t", image_size=32, crop_pct=1.0)).save_pretrained(folder)
    (tmp_path / "secret.pth").write_bytes(b"not for timm")
    config = json.loads((folder / "config.json").read_text())
    config["backbone_config"] = {"checkpoint_path": str(tmp_path / target)}
    (folder / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    with pytest.raises(ValueError, match=r"backbone_config\.checkpoint_path is not an argument of the architecture"):
        QScoreModel.from_pretrained(folder)
    assert main(["info", str(folder)]) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "Remove backbone_config.checkpoint_path" in error, error
