"""Tests of frozen-feature extraction and its disk cache (qscore_hf.features).

Expectations are independent of the code under test: features computed by hand (the model's image processor on the
PIL images, then one forward pass), labels read from the data set, and forward passes counted with a hook on the
backbone. Images are scikit-learn's digits (built-in data set ``digits``), upsampled to 16 px.
"""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from qscore_hf import QScoreConfig, QScoreModel
from qscore_hf.data import ImageDataset, load_image_dataset
from qscore_hf.features import FeatureSet, extract_features, feature_cache_key, iter_features

ROWS = 40
BATCH = 16  # ROWS is not a multiple of BATCH: the last batch is partial


# Tiny CPU workloads run faster (and steadier on a shared machine) without intra-op threads.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def model() -> QScoreModel:
    torch.manual_seed(0)
    return QScoreModel(QScoreConfig(backbone="resnet18_cifar", image_size=16, crop_pct=1.0, qscore_eps=2.0)).eval()


@pytest.fixture
def digits_test() -> ImageDataset:
    return load_image_dataset("digits", "test", max_samples=ROWS)


def streaming(image_dataset: ImageDataset) -> ImageDataset:
    """The same rows as an ``IterableDataset`` (length unknown to the extractor)."""
    iterable = image_dataset.dataset.to_iterable_dataset()
    return ImageDataset(iterable, image_dataset.image_column, image_dataset.label_column, image_dataset.name,
                        image_dataset.split)  # fmt: skip


def reference_features(model: QScoreModel, image_dataset: ImageDataset) -> np.ndarray:
    """Every image through the model's processor and one forward pass, by hand."""
    images = list(image_dataset.dataset[image_dataset.image_column])
    pixels = model.image_processor()(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(pixels, return_qscore=False).features.numpy()


class ForwardCounter:
    """Counts backbone forward calls (images and calls) through a forward hook."""

    def __init__(self, model: QScoreModel) -> None:
        self.calls = 0
        self.images = 0
        model.backbone.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.calls += 1
        self.images += inputs[0].shape[0]


def extract(model, image_dataset, cache_dir=None, **kwargs) -> FeatureSet:
    return extract_features(model, image_dataset, batch_size=BATCH, cache_dir=cache_dir, progress=False, **kwargs)


# ----------------------------------------------------------------------------------------------------- values
def test_features_and_labels_match_a_hand_computed_pass(model, digits_test):
    result = extract(model, digits_test)
    assert result.features.dtype == np.float32 and result.features.shape == (ROWS, 512)
    np.testing.assert_allclose(result.features, reference_features(model, digits_test), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(result.labels, np.asarray(list(digits_test.dataset["label"])))
    np.testing.assert_array_equal(result.row_ids, np.arange(ROWS))
    assert result.cache_path is None and not result.from_cache


def test_iter_features_yields_batches_in_order(model, digits_test):
    batches = list(iter_features(model, digits_test, batch_size=BATCH, progress=False))
    assert [len(batch.features) for batch in batches] == [16, 16, 8]
    np.testing.assert_array_equal(torch.cat([b.labels for b in batches]).numpy(), list(digits_test.dataset["label"]))


def test_extraction_restores_training_mode(model, digits_test):
    model.train()
    extract(model, digits_test)
    assert model.training


def test_unlabelled_data_set_has_no_labels(model, digits_test):
    unlabelled = ImageDataset(digits_test.dataset.remove_columns("label"), "image", None, "digits", "test")
    result = extract(model, unlabelled)
    assert result.labels is None and result.features.shape == (ROWS, 512)


def test_bf16_autocast_returns_close_float32_features(model, digits_test):
    exact = reference_features(model, digits_test)
    result = extract(model, digits_test, dtype=torch.bfloat16)
    assert result.features.dtype == np.float32
    assert np.abs(result.features - exact).max() <= 0.05 * np.abs(exact).max()


# ----------------------------------------------------------------------------------------------------- cache
def test_second_call_loads_the_cache_without_running_the_model(model, digits_test, tmp_path):
    counter = ForwardCounter(model)
    first = extract(model, digits_test, tmp_path)
    assert counter.images == ROWS and not first.from_cache
    assert isinstance(first.features, np.memmap)
    calls = counter.calls
    second = extract(model, digits_test, tmp_path)
    assert counter.calls == calls, "a cached extraction must not run the model"
    assert second.from_cache and isinstance(second.features, np.memmap) and not second.features.flags.writeable
    np.testing.assert_array_equal(second.features, first.features)
    np.testing.assert_array_equal(second.labels, first.labels)
    np.testing.assert_allclose(second.features, reference_features(model, digits_test), rtol=1e-4, atol=1e-5)
    # the default pipeline, auto, takes the tensor one on digits (a map-style data set of 8x8 images)
    folder = tmp_path / feature_cache_key(model, digits_test, data_pipeline="tensor")
    assert second.cache_path == folder
    assert sorted(p.name for p in folder.iterdir()) == ["features.npy", "labels.npy", "meta.json"]
    assert np.load(folder / "features.npy").shape == (ROWS, 512)  # a plain .npy any NumPy can read


def test_changed_weights_invalidate_the_cache(model, digits_test, tmp_path):
    before = np.array(extract(model, digits_test, tmp_path).features)
    with torch.no_grad():
        model.backbone.conv1.weight.mul_(2.0)
    counter = ForwardCounter(model)
    after = extract(model, digits_test, tmp_path)
    assert counter.images == ROWS and not after.from_cache
    assert not np.allclose(after.features, before)
    np.testing.assert_allclose(after.features, reference_features(model, digits_test), rtol=1e-4, atol=1e-5)


def test_other_rows_or_precision_get_their_own_cache(model, digits_test, tmp_path):
    extract(model, digits_test, tmp_path)
    fewer = load_image_dataset("digits", "test", max_samples=ROWS // 2)
    assert extract(model, fewer, tmp_path).features.shape == (ROWS // 2, 512)
    assert not extract(model, digits_test, tmp_path, dtype=torch.bfloat16).from_cache
    first_eight = ImageDataset(digits_test.dataset.to_iterable_dataset().take(8), "image", "label", "digits", "test")
    assert extract(model, first_eight, tmp_path).features.shape == (8, 512)
    assert extract(model, streaming(digits_test), tmp_path).features.shape == (ROWS, 512)
    assert len(list(tmp_path.iterdir())) == 5


# ----------------------------------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("cached", [False, True])
def test_streaming_gives_the_same_features_as_map_style(model, digits_test, tmp_path, cached):
    cache_dir = tmp_path if cached else None
    mapped = extract(model, digits_test, cache_dir)
    streamed = extract(model, streaming(digits_test), cache_dir)
    np.testing.assert_allclose(streamed.features, mapped.features, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(streamed.labels, mapped.labels)
    np.testing.assert_array_equal(streamed.row_ids, np.arange(ROWS))
    if cached:
        counter = ForwardCounter(model)
        again = extract(model, streaming(digits_test), cache_dir)
        assert again.from_cache and counter.calls == 0
        np.testing.assert_array_equal(again.features, streamed.features)
        assert sorted(p.name for p in again.cache_path.iterdir()) == ["features.npy", "labels.npy", "meta.json"]


# ----------------------------------------------------------------------------------------------------- failures
@pytest.mark.parametrize("stream", [False, True], ids=["map-style", "streaming"])
def test_interrupted_extraction_leaves_no_trusted_cache(model, digits_test, tmp_path, stream):
    data = streaming(digits_test) if stream else digits_test
    calls = {"n": 0}

    def failing_hook(module, inputs, output):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption in the second batch")

    handle = model.backbone.register_forward_hook(failing_hook)
    with pytest.raises(KeyboardInterrupt):
        extract(model, data, tmp_path)
    handle.remove()
    assert list(tmp_path.iterdir()) == [], "no partial folder, final or temporary, may remain"
    counter = ForwardCounter(model)
    result = extract(model, data, tmp_path)
    assert counter.images == ROWS and not result.from_cache
    np.testing.assert_allclose(result.features, reference_features(model, digits_test), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("damage", ["truncate_features", "remove_meta", "foreign_meta"])
def test_damaged_cache_is_recomputed(model, digits_test, tmp_path, damage):
    folder = extract(model, digits_test, tmp_path).cache_path
    if damage == "truncate_features":
        data = (folder / "features.npy").read_bytes()
        (folder / "features.npy").write_bytes(data[: len(data) // 2])
    elif damage == "remove_meta":
        (folder / "meta.json").unlink()
    else:
        meta = json.loads((folder / "meta.json").read_text())
        meta["identity"]["weights"] = "0" * 32
        (folder / "meta.json").write_text(json.dumps(meta))
    counter = ForwardCounter(model)
    result = extract(model, digits_test, tmp_path)
    assert counter.images == ROWS and not result.from_cache
    np.testing.assert_allclose(result.features, reference_features(model, digits_test), rtol=1e-4, atol=1e-5)
    assert extract(model, digits_test, tmp_path).from_cache


def test_empty_data_set_is_an_error(model, digits_test, tmp_path):
    empty = ImageDataset(digits_test.dataset.select([]), "image", "label", "digits", "test")
    with pytest.raises(ValueError, match="no images"):
        extract(model, empty, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cache_written_meanwhile_by_another_process_is_kept(model, digits_test, tmp_path, monkeypatch):
    from qscore_hf import features as features_module

    folder = extract(model, digits_test, tmp_path).cache_path
    winner = shutil.copytree(folder, tmp_path.parent / f"{tmp_path.name}-winner")
    (winner / "written-by-the-other-process").touch()
    shutil.rmtree(folder)
    finish = features_module._FeatureWriter.finish

    def finish_while_another_process_wins(self):
        finish(self)
        shutil.copytree(winner, folder)

    monkeypatch.setattr(features_module._FeatureWriter, "finish", finish_while_another_process_wins)
    result = extract(model, digits_test, tmp_path)
    assert (folder / "written-by-the-other-process").exists()
    assert [p.name for p in tmp_path.iterdir()] == [folder.name], "the losing temporary folder is removed"
    np.testing.assert_allclose(result.features, reference_features(model, digits_test), rtol=1e-4, atol=1e-5)


def test_temporary_folders_of_killed_extractions_are_swept(model, digits_test, tmp_path):
    """A SIGKILLed extraction leaves ``.<key>.tmp-<pid>-<random>``: the next extraction into the cache removes those
    of processes that are gone (and unnamed ones of earlier versions), never one of a running process."""
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [tmp_path / f".{'a' * 16}.tmp-{gone.pid}-x1y2z3", tmp_path / f".{'b' * 16}.tmp-k9_old"]
        live = tmp_path / f".{'c' * 16}.tmp-{running.pid}-q8w7e6"
        for folder in (*stale, live):
            folder.mkdir()
            (folder / "features.raw").write_bytes(b"\0" * 1024)
        (tmp_path / "notes.tmp-1").mkdir()  # not a temporary folder of ours
        extract(model, digits_test, tmp_path)
        assert not any(folder.exists() for folder in stale)
        assert live.is_dir() and (tmp_path / "notes.tmp-1").is_dir()
    finally:
        running.kill()
        running.wait()


def test_high_bit_depth_grey_images_are_read_on_their_scale(model, tmp_path):
    """16-bit PNG and TIFF, 32-bit integer and float TIFF give the features of the 8-bit image of the same picture
    (``round(v / 257)``, ``round(v * 255)``); pixels outside their scale are skipped, named, not clipped."""
    import datasets
    from PIL import Image

    grey16 = (np.arange(16 * 16, dtype=np.float64).reshape(16, 16) * 256 + 7).astype(np.uint16)
    files = {"png16.png": grey16, "tif16.tif": grey16, "int32.tif": grey16.astype(np.int32),
             "float.tif": (grey16 / 65535.0).astype(np.float32),
             "reference.png": np.round(grey16 / 257.0).astype(np.uint8)}  # fmt: skip
    out_of_scale = {"int32-wide.tif": np.full((16, 16), 70000, np.int32), "float-wide.tif": np.full((16, 16), 2.0,
                                                                                                   np.float32)}  # fmt: skip
    for name, pixels in {**files, **out_of_scale}.items():
        Image.fromarray(pixels).save(tmp_path / name)
    assert Image.open(tmp_path / "png16.png").mode == "I;16"  # PIL's 16-bit mode, which its RGB conversion clips
    paths = [str(tmp_path / name) for name in (*files, *out_of_scale)]
    dataset = datasets.Dataset.from_dict({"image": paths}).cast_column("image", datasets.Image())
    result = extract(model, ImageDataset(dataset, "image", None, "grey", "test"), skip_unreadable=True)
    assert [image.row_id for image in result.skipped] == [5, 6]
    assert all("no 8-bit reading" in image.error for image in result.skipped)
    np.testing.assert_array_equal(result.row_ids, [0, 1, 2, 3, 4])
    for row in range(4):
        np.testing.assert_allclose(result.features[row], result.features[4], rtol=1e-5, atol=1e-6)
