"""Shared fixtures: real images (scikit-learn's bundled digits) and a clean, offline environment for subprocesses."""

from __future__ import annotations

import os

import numpy as np
import pytest

_HF_ENV_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "EVALUATE_")


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
