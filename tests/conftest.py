"""Shared fixtures: real images (scikit-learn's bundled digits) and a clean, offline environment for subprocesses."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np
import pytest

_HF_ENV_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "EVALUATE_")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, give each worker its share of the cores: every worker's torch would otherwise start one
    thread per core, and on 2 cores two workers would fight over 4 busy threads."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files marked ``runs_long`` first: pytest-xdist hands out whole files in this order, so the longest ones start
    at once on their own workers instead of running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("runs_long") is None)  # stable: the rest keep their order


@pytest.fixture(scope="session", autouse=True)
def decoded_images_in_a_temporary_folder(tmp_path_factory):
    """The default data pipeline (auto) decodes a data set once into ``$QSCORE_HF_DECODED_CACHE``
    (``qscore_hf.decoded``): this session's temporary folder rather than the user's cache (subprocesses inherit it);
    tests that look at that folder set their own."""
    previous = os.environ.get("QSCORE_HF_DECODED_CACHE")
    os.environ["QSCORE_HF_DECODED_CACHE"] = str(tmp_path_factory.mktemp("decoded"))
    yield
    if previous is None:
        os.environ.pop("QSCORE_HF_DECODED_CACHE", None)
    else:
        os.environ["QSCORE_HF_DECODED_CACHE"] = previous


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits (bundled, no download): ``(images uint8 0..255 of shape (N, 8, 8), data, target)``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return images, bunch.data.astype(np.float64), bunch.target


@pytest.fixture
def one_thread():
    """Run the test with one intra-op thread (restored afterwards); modules opt in with ``usefixtures``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["fused", "eager"])
def score_path(request, monkeypatch) -> str:
    """Run the test once on each CPU path of ``qscore_hf.score``: the fused numba kernel (forced at every size; by
    default it takes inputs of 2**20 elements and more) and the eager PyTorch one (``QSCORE_HF_FUSED=0``)."""
    import qscore_hf.score as score

    monkeypatch.setattr(score, "_warned_call_sites", set())  # each path warns afresh at a call site
    if request.param == "fused":
        monkeypatch.setenv(score.FUSED_ENV, "1")
        monkeypatch.setattr(score, "_FUSED_MIN_ELEMENTS", 0)
    else:
        monkeypatch.setenv(score.FUSED_ENV, "0")
    return request.param


@pytest.fixture
def offline_env():
    """Build the environment of a subprocess: the current one without any Hugging Face variable, plus ``extra``
    (e.g. ``HF_HOME``), offline. The variables take effect before the subprocess imports anything."""

    def make(**extra: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith(_HF_ENV_PREFIXES)}
        env["HF_HUB_OFFLINE"] = "1"
        env["PYTHONWARNINGS"] = "ignore"
        env.update({key: str(value) for key, value in extra.items()})
        return env

    return make


@pytest.fixture(scope="session")
def hub_cache() -> Callable[[Path, str, Path, str], Path]:
    """``add(hub, repo_id, files_from, commit)``: put the files of a folder into a Hugging Face cache laid out as
    huggingface_hub lays it out (``models--org--name/{blobs/<sha256>, refs/main, snapshots/<commit>/<file> -> blob}``);
    returns the snapshot folder."""

    def add(hub: Path, repo_id: str, files_from: Path, commit: str) -> Path:
        repo = hub / ("models--" + repo_id.replace("/", "--"))
        snapshot = repo / "snapshots" / commit
        (repo / "blobs").mkdir(parents=True)
        (repo / "refs").mkdir()
        snapshot.mkdir(parents=True)
        for source in sorted(files_from.iterdir()):
            data = source.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            (snapshot / source.name).symlink_to(os.path.relpath(blob, snapshot))
        (repo / "refs" / "main").write_text(commit)  # no newline, as huggingface_hub writes it
        return snapshot

    return add


def _script_importer(folder: str) -> Callable[[str], ModuleType]:
    """Import ``<folder>/<name>.py`` of the repository: its scripts import their siblings by plain name."""

    def load(name: str) -> ModuleType:
        path = str(Path(__file__).resolve().parents[1] / folder)
        sys.path.insert(0, path)
        try:
            return importlib.import_module(name)
        finally:
            sys.path.remove(path)

    return load


@pytest.fixture(scope="session")
def import_bench() -> Callable[[str], ModuleType]:
    """``import_bench(name)``: import the speed benchmark ``bench/<name>.py``."""
    return _script_importer("bench")


@pytest.fixture(scope="session")
def import_study() -> Callable[[str], ModuleType]:
    """``import_study(name)``: import the study script ``studies/<name>.py``."""
    return _script_importer("studies")


@pytest.fixture(scope="session")
def training_script() -> Callable[[str], ModuleType]:
    """``training_script(name)``: a fresh module of ``training/<name>.py`` (a script, not an importable package)."""

    def load(name: str) -> ModuleType:
        path = Path(__file__).resolve().parents[1] / "training" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"{name}_script", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
