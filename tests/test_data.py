"""Data set resolution: the built-in offline data sets and local folders, against known facts about the data."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from PIL import Image

from qscore_hf import data as data_module
from qscore_hf.data import load_image_dataset

FASHION_FILES = data_module.FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
needs_fashion = pytest.mark.skipif(
    not FASHION_FILES.exists(), reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)"
)


def test_digits_splits_partition_the_1797_images():
    train, test = load_image_dataset("digits", "train"), load_image_dataset("digits", "test")
    assert (len(train.dataset), len(test.dataset)) == (1437, 360)  # scikit-learn's digits: 1797 images, 20% test
    assert train.label_column == "label" and train.num_classes == 10
    # Stratified: every class is in both splits in about its overall proportion (~10%).
    counts = np.bincount(test.dataset["label"], minlength=10)
    assert counts.min() >= 33 and counts.max() <= 40
    assert train.dataset[0]["image"].size == (8, 8)


@needs_fashion
def test_fashion_mnist_reads_the_published_labels_and_images():
    # The first labels of Fashion-MNIST's files, as published by Zalando Research.
    assert load_image_dataset("fashion_mnist", "train", max_samples=10).dataset["label"] == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    test = load_image_dataset("fashion_mnist", "test", max_samples=10)
    assert test.dataset["label"] == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert test.dataset.features["label"].names[9] == "ankle boot"
    image = np.asarray(test.dataset[0]["image"])
    assert image.shape == (28, 28) and image.dtype == np.uint8 and image.max() > 200 and image[0, 0] == 0


@needs_fashion
def test_built_in_streaming_yields_the_same_rows():
    loaded = load_image_dataset("fashion_mnist", "test", max_samples=6)
    streamed = load_image_dataset("fashion_mnist", "test", max_samples=6, streaming=True)
    assert isinstance(streamed.dataset, datasets.IterableDataset)
    assert [row["label"] for row in streamed.dataset] == loaded.dataset["label"]


def test_missing_fashion_mnist_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
        load_image_dataset("fashion_mnist", "train")


def test_unknown_split_is_named():
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_image_dataset("digits", "validation")


@pytest.fixture
def image_folder(tmp_path, digits):
    images, _, target = digits
    for index in range(12):
        folder = tmp_path / "folder" / "train" / f"class_{target[index]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index]).save(folder / f"{index}.png")
    return tmp_path / "folder", sorted({f"class_{t}" for t in target[:12]})


def test_local_imagefolder(image_folder):
    path, classes = image_folder
    loaded = load_image_dataset(str(path), "train")
    assert len(loaded.dataset) == 12 and loaded.image_column == "image"
    assert loaded.dataset.features[loaded.label_column].names == classes


def test_local_parquet_and_saved_arrow(image_folder, tmp_path):
    path, _ = image_folder
    source = load_image_dataset(str(path), "train").dataset
    parquet_dir = tmp_path / "pq" / "data"
    parquet_dir.mkdir(parents=True)
    source.to_parquet(str(parquet_dir / "train-00000.parquet"))
    from_parquet = load_image_dataset(str(tmp_path / "pq"), "train", label_column="label")
    assert from_parquet.dataset["label"] == source["label"]
    source.save_to_disk(str(tmp_path / "arrow"))
    from_arrow = load_image_dataset(str(tmp_path / "arrow"), "train")
    assert from_arrow.dataset["label"] == source["label"]


def test_unknown_local_path_and_column_are_named(image_folder, tmp_path):
    with pytest.raises(ValueError, match="no such file or folder"):
        load_image_dataset(str(tmp_path / "nope"), "train")
    with pytest.raises(ValueError, match="no label column 'species'"):
        load_image_dataset(str(image_folder[0]), "train", label_column="species")


@needs_fashion
def test_row_slices_select_the_published_rows():
    # train[3:7] are rows 3..6 of the training split: labels 3, 0, 2, 7 of the published list above.
    sliced = load_image_dataset("fashion_mnist", "train[3:7]")
    assert sliced.dataset["label"] == [3, 0, 2, 7] and sliced.split == "train[3:7]"
    # max_samples counts from the slice's start; an open end runs to max_samples (or the split's end).
    assert load_image_dataset("fashion_mnist", "train[3:7]", max_samples=2).dataset["label"] == [3, 0]
    assert load_image_dataset("fashion_mnist", "train[5:]", max_samples=3).dataset["label"] == [2, 7, 2]
    assert load_image_dataset("fashion_mnist", "test[:3]").dataset["label"] == [9, 2, 1]


def test_row_slices_of_digits_and_local_folders(image_folder):
    whole = load_image_dataset("digits", "train").dataset
    sliced = load_image_dataset("digits", "train[100:110]").dataset
    assert sliced["label"] == whole["label"][100:110]
    assert np.array_equal(np.asarray(sliced[0]["image"]), np.asarray(whole[100]["image"]))
    path, _ = image_folder
    folder = load_image_dataset(str(path), "train")
    assert load_image_dataset(str(path), "train[1:3]").dataset["label"] == folder.dataset["label"][1:3]


@pytest.mark.parametrize("split, message", [("train[5:2]", "selects no rows"), ("train[a:b]", "NAME\\[START:STOP\\]"),
                                            ("train[2000:]", "starts at row 2000")])  # fmt: skip
def test_bad_row_slices_are_named(split, message):
    with pytest.raises(ValueError, match=message):
        load_image_dataset("digits", split)
