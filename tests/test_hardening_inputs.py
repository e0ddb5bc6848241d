"""Hardening (issue 33, items 6, 8-10, 17-18, 21-23): stale caches, strict dtypes and label columns, config and data
file validation, 16-bit images, report schemas and metric inputs. Every expectation is independent of the code under
test (hand-written values, round trips, the input itself)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from qscore_hf.data import load_image_dataset


# ------------------------------------------------------------------------------ 6: content identifies local files
def _replace_keeping_mtime(path, image: np.ndarray) -> None:
    stat = os.stat(path)
    Image.fromarray(image).save(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_an_image_replaced_with_its_mtime_kept_changes_the_fingerprint(tmp_path, digits, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    images, _, target = digits
    for index in range(6):
        folder = tmp_path / "folder" / "train" / f"class_{target[index]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index]).save(folder / f"{index}.png")
    before = load_image_dataset(str(tmp_path / "folder"), "train").dataset
    first = next(iter((tmp_path / "folder" / "train").rglob("0.png")))
    _replace_keeping_mtime(first, 255 - images[0])  # `cp -p`: other pixels, same path, same mtime
    after = load_image_dataset(str(tmp_path / "folder"), "train").dataset
    assert after._fingerprint != before._fingerprint
    paths = [image["path"] for image in after.cast_column("image", datasets.Image(decode=False))["image"]]
    row = [path.endswith("/0.png") for path in paths].index(True)
    np.testing.assert_array_equal(np.asarray(after[row]["image"]), 255 - images[0])


def test_a_parquet_file_replaced_with_its_mtime_kept_is_read_again(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    path = tmp_path / "data.parquet"
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    blank = [np.zeros((4, 4), np.uint8)] * 2
    datasets.Dataset.from_dict({"image": blank, "label": [0, 1]}, features=features).to_parquet(str(path))
    assert load_image_dataset(str(path)).dataset["label"] == [0, 1]
    stat = os.stat(path)
    datasets.Dataset.from_dict({"image": blank, "label": [1, 0]}, features=features).to_parquet(str(path))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert load_image_dataset(str(path)).dataset["label"] == [1, 0]
