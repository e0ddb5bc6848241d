"""The evaluate metric: published as a Hub Space (HfApi mocked), and found by name without touching the disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qscore_hf.cli import main
from qscore_hf.evaluate_metric import METRIC_PATH, register_metric_name
from qscore_hf.evaluate_metric.space import publish_metric_space


class FakeApi:
    """Records HfApi calls and the files uploaded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.files: dict[str, bytes] = {}

    def create_repo(self, repo_id: str, **kwargs) -> None:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, repo_id: str, folder_path: str, **kwargs) -> str:
        self.calls.append(("upload_folder", {"repo_id": repo_id, **kwargs}))
        self.files = {path.name: path.read_bytes() for path in Path(folder_path).iterdir()}
        return "https://huggingface.co/spaces/org/qscore/commit/abc"


def test_publish_uploads_the_packaged_files_as_a_gradio_space():
    api = FakeApi()
    url = publish_metric_space("org/qscore", api=api)
    assert url.endswith("/commit/abc")
    (_, create), (_, upload) = api.calls
    assert create == {"repo_id": "org/qscore", "repo_type": "space", "space_sdk": "gradio", "private": None,
                      "exist_ok": True}  # fmt: skip
    assert upload["repo_type"] == "space"
    assert sorted(api.files) == ["README.md", "app.py", "qscore.py", "requirements.txt"]
    for name in ("qscore.py", "README.md", "requirements.txt"):
        assert api.files[name] == (METRIC_PATH / name).read_bytes(), name
    assert 'evaluate.load("org/qscore")' in api.files["app.py"].decode()
    assert "qscore-hf" in api.files["requirements.txt"].decode().split()


def test_publish_command_and_its_checks(monkeypatch, capsys):
    api = FakeApi()
    monkeypatch.setattr("qscore_hf.evaluate_metric.space.HfApi", lambda: api)
    requirement = "qscore-hf @ git+https://example.org/qscore-hf.git"
    assert main(["publish-metric", "--repo-id", "org/qscore", "--requirement", requirement]) == 0
    assert requirement in api.files["requirements.txt"].decode().splitlines()
    assert "evaluate.load('org/qscore')" in capsys.readouterr().out
    assert main(["publish-metric", "--repo-id", "org/other"]) == 1
    assert "the Space must be named <org>/qscore" in capsys.readouterr().err


def test_name_resolves_in_process_when_evaluate_was_imported_first(tmp_path, monkeypatch):
    import evaluate

    monkeypatch.chdir(tmp_path)
    register_metric_name()
    metric = evaluate.load("qscore")
    out = metric.compute(predictions=[[0, 0, 0, 4], [1, 1, 1, 1]], eps=1)
    assert out["q_scores"] == pytest.approx([3.0, 0.0])


_IMPORT_ONLY = r"""
import os, sys
import qscore_hf
home = sys.argv[1]
assert "evaluate" not in sys.modules, "importing qscore_hf imported evaluate"
print("WRITTEN", sorted(os.listdir(home)) if os.path.exists(home) else [])
import evaluate
print("Q", evaluate.load("qscore").compute(predictions=[[0, 0, 0, 4]], eps=1)["q_scores"])
"""


def test_import_writes_nothing_into_the_modules_cache(tmp_path, offline_env):
    home = tmp_path / "hf"
    run = subprocess.run([sys.executable, "-c", _IMPORT_ONLY, str(home)], cwd=tmp_path,
                         env=offline_env(HF_HOME=str(home)), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "WRITTEN []" in run.stdout and "Q [3.0]" in run.stdout, run.stdout
