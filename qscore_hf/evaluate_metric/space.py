"""Publish the metric as a Hub Space, evaluate's convention for community metrics: then
``evaluate.load("<org>/qscore")`` works anywhere online (where the packages in ``requirements.txt`` install)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from huggingface_hub import HfApi

from . import METRIC_FILES, METRIC_NAME, METRIC_PATH

__all__ = ["publish_metric_space", "space_files"]

_APP = '''import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load("{repo_id}")
launch_gradio_widget(module)
'''


def space_files(folder: str | Path, repo_id: str, requirement: str | None = None) -> list[str]:
    """Write the Space's files into ``folder``: the packaged module, its card and ``requirements.txt`` as shipped,
    plus the ``app.py`` evaluate's Spaces run. ``requirement`` replaces the ``qscore-hf`` line (e.g. a git URL)."""
    folder = Path(folder)
    for name in METRIC_FILES:
        shutil.copyfile(METRIC_PATH / name, folder / name)
    if requirement:
        lines = (folder / "requirements.txt").read_text(encoding="utf-8").splitlines()
        lines = [requirement if line.strip() == "qscore-hf" else line for line in lines]
        (folder / "requirements.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "app.py").write_text(_APP.format(repo_id=repo_id), encoding="utf-8")
    return sorted(path.name for path in folder.iterdir())


def publish_metric_space(
    repo_id: str, private: bool | None = None, requirement: str | None = None, api: HfApi | None = None
) -> str:
    """Create (or update) the Gradio Space ``repo_id`` holding the metric; returns the commit URL.

    The Space's name must be ``<org>/qscore`` for ``evaluate.load`` to find the module file ``qscore.py`` in it.
    The token comes from ``HF_TOKEN`` or ``huggingface-cli login``.
    """
    if repo_id.count("/") != 1 or repo_id.split("/")[1] != METRIC_NAME:
        raise ValueError(
            f"the Space must be named <org>/{METRIC_NAME} (evaluate loads {METRIC_NAME}.py from it); got {repo_id!r}."
        )
    api = api or HfApi()
    api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        space_files(tmp, repo_id, requirement)
        commit = api.upload_folder(repo_id=repo_id, folder_path=tmp, repo_type="space",
                                   commit_message="Publish the qscore metric")  # fmt: skip
    return str(getattr(commit, "commit_url", commit))
