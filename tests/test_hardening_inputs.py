"""Hardening (issue 33, items 6, 8-10, 17-18, 21-23): stale caches, strict dtypes and label columns, config and data
file validation, 16-bit images, report schemas and metric inputs. Every expectation is independent of the code under
test (hand-written values, round trips, the input itself)."""

from __future__ import annotations

import os
import re

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


# ------------------------------------------------------------------------------ 9: integer features, exactly
# One row of 2**30 + (0, 1, 0, 0): mean 2**30 + 1/4, std sqrt(3/16) < 3/4, so at eps 1 exactly the +1 entry is
# selected and Q = 3/4. Rounded to float32 first, the four entries are equal and Q would be 0.
_BIG_ROW = [2**30, 2**30 + 1, 2**30, 2**30]


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_integer_features_above_2_to_the_24_score_exactly(dtype):
    import torch

    from qscore_hf.score import qscore

    q = qscore(np.array([_BIG_ROW] * 3, dtype=dtype), eps=1.0)
    np.testing.assert_array_equal(np.asarray(q, dtype=np.float64), [0.75] * 3)
    q = qscore(torch.tensor([_BIG_ROW], dtype=torch.int64), eps=1.0)
    assert float(q[0]) == 0.75


def test_integers_no_float_holds_are_refused():
    from qscore_hf.score import qscore

    with pytest.raises(ValueError, match=r"beyond 2\*\*53"):
        qscore(np.array([[2**60, 0, 1]], dtype=np.int64), eps=1.0)


@pytest.fixture(scope="module")
def metric():
    import evaluate

    from qscore_hf.evaluate_metric import METRIC_PATH

    return evaluate.load(str(METRIC_PATH))


def test_the_metric_scores_large_integers_exactly(metric):
    out = metric.compute(predictions=[_BIG_ROW] * 3, eps=1.0)
    assert out["q_scores"] == [0.75] * 3


def test_the_metric_scores_float32_predictions_as_before(metric):
    row = np.array([0.1, 0.7, 0.2, 0.3], dtype=np.float32)  # float32 values, scored in float32 as before
    from qscore_hf.score import qscore

    expected = np.asarray(qscore(row[None], eps=1.0))
    assert metric.compute(predictions=[row.tolist()], eps=1.0)["q_scores"] == expected.tolist()


# ------------------------------------------------------------------------------ 23: metric leftovers
@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(predictions=[[1.0, 2.0], [1.0]]), "row 0 has 2 values, row 1 has 1"),
        (dict(predictions=[]), "predictions is empty"),
        (dict(predictions=[[1.0, 2.0, 3.0]] * 4, p_lo=-5, p_hi=500), r"0 <= p_lo <= p_hi <= 100"),
        (dict(predictions=[[1.0, 2.0, 3.0]] * 4, activation_stats={"counts": [1.5, 2, 3], "num_samples": 10}),
         "counts must be whole numbers.*with fractions"),
        (dict(predictions=[[1.0, 2.0, 3.0]] * 4,
              activation_stats={"counts": np.array([True, False, True]), "num_samples": 10}),
         "counts must be whole numbers.*bool"),
        (dict(predictions=[[1.0, 2.0, 3.0]] * 4, activation_stats={"counts": [1, 2, 3], "num_samples": 10.5}),
         "num_samples must be whole numbers"),
    ],
    ids=["ragged", "empty", "percentiles", "fractional-counts", "mask-as-counts", "fractional-num-samples"],
)
def test_metric_inputs_are_refused_in_one_line(metric, kwargs, words):
    with pytest.raises(ValueError, match=words) as error:
        metric.compute(**kwargs)
    assert "\n" not in str(error.value) and "inhomogeneous" not in str(error.value)


def test_whole_float_counts_are_still_counts(metric):
    # counts [1, 2, 3] of 10 samples as floats: the same statistics as integers
    as_ints = metric.compute(predictions=[[1.0, 2.0, 3.0]] * 2, eps=0.5,
                             activation_stats={"counts": [1, 2, 3], "num_samples": 10})  # fmt: skip
    as_floats = metric.compute(predictions=[[1.0, 2.0, 3.0]] * 2, eps=0.5,
                               activation_stats={"counts": [1.0, 2.0, 3.0], "num_samples": 10.0})  # fmt: skip
    assert as_floats["q_scores"] == as_ints["q_scores"] and as_ints["num_discriminative"] >= 1


# ------------------------------------------------------------------------------ 10: labels are class indices
def _labelled(tmp_path, labels: list, dtype) -> "ImageDataset":
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from qscore_hf.data import ImageDataset

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value(dtype)})
    images = [np.full((8, 8), (40 * k) % 256, np.uint8) for k in range(len(labels))]
    dataset = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    return ImageDataset(dataset, "image", "label", "crafted", "train")


@pytest.fixture(scope="module")
def tiny_model():
    from qscore_hf import QScoreConfig, QScoreModel

    return QScoreModel(QScoreConfig(backbone="test_resnet", image_size=32, crop_pct=1.0)).eval()


@pytest.mark.parametrize(
    "labels, dtype, row, shown",
    [
        ([0, 1, 0.7, 1.7], "float64", 2, "0.7"),
        ([0, 1, 2, None], "int64", 3, "None"),
        (["cat", "dog", "cat", "dog"], "string", 0, "'cat'"),
        ([0, 1, 10**9, 1], "int64", 2, "1000000000"),
        ([0, -5, 1, 1], "int64", 1, "-5"),
    ],
    ids=["fractions", "null", "strings", "huge", "negative"],
)
def test_bad_labels_are_one_line_naming_the_column_and_row(tmp_path, tiny_model, labels, dtype, row, shown):
    from qscore_hf.features import extract_features

    data = _labelled(tmp_path, labels, dtype)
    with pytest.raises(ValueError, match=rf"label column 'label': row {row} holds {shown}, not a class index") as error:
        extract_features(tiny_model, data, batch_size=3, device="cpu", progress=False)
    assert "\n" not in str(error.value)


def test_class_indices_as_ints_or_whole_floats_are_kept(tmp_path, tiny_model):
    from qscore_hf.features import extract_features

    for labels, dtype in (([0, 3, 1, -1], "int64"), ([0.0, 3.0, 1.0, -1.0], "float64")):
        out = extract_features(tiny_model, _labelled(tmp_path, labels, dtype), batch_size=3, device="cpu",
                               progress=False)  # fmt: skip
        assert out.labels.tolist() == [0, 3, 1, -1]


# ------------------------------------------------------------------------------ 17: every config field checked
@pytest.mark.parametrize(
    "fields, named",
    [
        (dict(backbone=5), "backbone"),
        (dict(dtype="float1024"), "dtype"),
        (dict(backbone_config=[1, 2]), "backbone_config"),
        (dict(image_processor=["size"]), "image_processor"),
        (dict(image_size=200000), "image_size"),
        (dict(image_processor={"size": {"shortest_edge": -5}}), r"image_processor.size.shortest_edge"),
        (dict(crop_pct=1e-9), "crop_pct"),
        (dict(hidden_size=-3), "hidden_size"),
        (dict(probe_head=True, num_labels=10**9), r"num_labels \(id2label\)"),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, dict) else None,
)
def test_config_values_that_would_crash_later_are_named_on_load(tmp_path, tiny_model, fields, named):
    import json

    from qscore_hf import QScoreConfig, QScoreModel

    with pytest.raises(ValueError, match=rf"^config field {named}[^\n]*$"):
        QScoreConfig(**fields)
    tiny_model.save_pretrained(tmp_path / "model")
    config_file = tmp_path / "model" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **fields}))
    with pytest.raises(ValueError, match=rf"config field {named}"):
        QScoreModel.from_pretrained(tmp_path / "model")


# ------------------------------------------------------------------------------ 22: report.json's schema
_REPORT = {
    "dataset": "digits", "train_split": "train", "eval_split": "test", "num_train": 100, "num_eval": 50,
    "probe": {"optimizer": "lbfgs", "epochs": 100}, "top1": 0.9, "auprc_correct": 0.95,
    "auprc_misclassified": 0.3, "auroc": 0.7, "auroc_ci": [0.6, 0.8], "base_rate_correct": 0.9,
    "base_rate_misclassified": 0.1,
    "qscore": {"eps": 1.0, "normalize": "l1", "p_lo": 0.0, "p_hi": 100.0, "num_discriminative": 64},
    "comparison": {"scores": [{"score": "q_score", "auroc": 0.7, "auroc_ci": [0.6, 0.8], "auprc_correct": 0.95,
                               "auprc_misclassified": 0.3}],
                   "base_rate_correct": 0.9, "base_rate_misclassified": 0.1, "num_samples": 50},
}  # fmt: skip


def test_a_well_formed_report_is_read(tmp_path):
    import json

    from qscore_hf.cards import load_report

    (tmp_path / "report.json").write_text(json.dumps(_REPORT))
    assert load_report(tmp_path / "report.json") == _REPORT


@pytest.mark.parametrize(
    "change, named",
    [
        (dict(qscore="high"), "qscore must be an object"),
        (dict(probe=[1, 2]), "probe must be an object"),
        (dict(dataset=5), "dataset must be a non-empty string"),
        (dict(comparison={"verdict": "good"}), "comparison must be an object whose scores is a list"),
        (dict(top1=90.0), r"top1 must be a number in \[0, 1\]; got 90.0"),
        (dict(top1="high"), r"top1 must be a number in \[0, 1\]"),
        (dict(auroc=float("nan")), r"auroc must be a number in \[0, 1\]; got nan"),
        (dict(auroc_ci="narrow"), r"auroc_ci must be a pair \[low, high\]"),
        (dict(auroc_ci=[0.9, 0.1]), r"auroc_ci must be a pair"),
        (dict(num_eval=-3), "num_eval must be a whole number >= 0"),
    ],
    ids=lambda value: "-".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else None,
)
def test_card_refuses_a_report_of_wrong_types_in_one_line(tmp_path, capsys, change, named):
    import json

    from qscore_hf.cli import main

    (tmp_path / "report.json").write_text(json.dumps({**_REPORT, **change}))
    card = tmp_path / "card" / "README.md"
    assert main(["card", "--results", str(tmp_path / "report.json"), "--model", str(tmp_path), "--out", str(card)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "report.json" in err, err
    assert re.search(named, err) and not card.exists(), err


# ------------------------------------------------------------------------------ 21: one 16-bit scaling for both paths
def test_the_public_processor_scales_16_bit_images_as_the_data_set_path(tmp_path):
    from qscore_hf import QScoreConfig, QScoreImageProcessor

    processor = QScoreImageProcessor.from_model_config(QScoreConfig(backbone="test_resnet", image_size=8, crop_pct=1.0))
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)  # 0 .. 63000 of 65535
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")  # a 16-bit grey PNG: PIL opens it as I;16 or I
    with Image.open(tmp_path / "ramp16.png") as sixteen:
        assert sixteen.mode.startswith("I")
        got = processor(sixteen, return_tensors="np")["pixel_values"]
    eight = Image.fromarray(np.round(ramp * (255 / 65535)).astype(np.uint8))  # the same picture on 8 bits
    np.testing.assert_allclose(got, processor(eight, return_tensors="np")["pixel_values"], atol=1e-6)
    assert got.std() > 0.5  # not saturated to white


def test_the_public_processor_names_pixels_outside_their_scale():
    from qscore_hf import QScoreConfig, QScoreImageProcessor

    processor = QScoreImageProcessor.from_model_config(QScoreConfig(backbone="test_resnet", image_size=8, crop_pct=1.0))
    with pytest.raises(ValueError, match=r"F image with pixels from 7 to 7, outside \[0, 1\]"):
        processor(Image.fromarray(np.full((8, 8), 7.0, np.float32)), return_tensors="np")


# ------------------------------------------------------------------------------ 18: damaged data files, named
_FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(_FASHION), reason="Debian's dataset-fashion-mnist is not installed")
@pytest.mark.parametrize("damage", ["truncated-images", "short-labels"])
def test_a_damaged_fashion_mnist_file_is_named(tmp_path, monkeypatch, damage):
    import gzip
    import shutil

    from qscore_hf import data as data_module

    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copyfile(f"{_FASHION}/{name}", tmp_path / name)
    if damage == "truncated-images":
        bad = tmp_path / "t10k-images-idx3-ubyte.gz"
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
        words = "is truncated or damaged"
    else:
        bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
        header = (2049).to_bytes(4, "big") + (100).to_bytes(4, "big")
        bad.write_bytes(gzip.compress(header + bytes(100)))  # a labels file of 100 labels for 10000 images
        words = "holds 100 labels but"
    monkeypatch.setattr(data_module, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bad))} {words}[^\n]*$"):
        load_image_dataset("fashion_mnist", "test")


@pytest.mark.parametrize("where", ["folder", "cifar10-dir"])
def test_a_truncated_parquet_file_is_named(tmp_path, monkeypatch, where):
    import datasets

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    folder = tmp_path / "data"
    folder.mkdir()
    good = datasets.Dataset.from_dict({"img": [np.zeros((4, 4), np.uint8)] * 2, "label": [0, 1]}, features=features)
    good.to_parquet(str(folder / "train-00000-of-00001.parquet"))
    good.to_parquet(str(folder / "test-00000-of-00001.parquet"))
    bad = folder / "train-00000-of-00001.parquet"
    bad.write_bytes(bad.read_bytes()[:100])
    if where == "cifar10-dir":
        monkeypatch.setenv("QSCORE_CIFAR10_DIR", str(folder))
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad))} is not a readable parquet file[^\n]*$"):
        load_image_dataset("cifar10" if where == "cifar10-dir" else str(folder), "train")


# ------------------------------------------------------------------------------ 20: a full disk is one line, no SIGBUS
def test_a_cache_on_a_full_disk_fails_in_one_line(tmp_path, tiny_model):
    import subprocess

    from qscore_hf.features import extract_features

    cache = tmp_path / "cache"
    cache.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(cache)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        # 2000 rows x 96 float32 features = 750 KiB, three times the disk
        data = _labelled(tmp_path, [0, 1] * 1000, "int64")
        with pytest.raises(OSError, match=rf"cannot reserve 0.7 MiB for the features in the cache folder {cache}"):
            extract_features(tiny_model, data, batch_size=16, device="cpu", progress=False, cache_dir=cache)
        assert not any(cache.iterdir())  # nothing half-written is left
    finally:
        subprocess.run(["umount", str(cache)], check=True)
