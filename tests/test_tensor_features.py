"""Features with --data-pipeline tensor (images decoded once, each batch preprocessed on the model's device) equal the
loader's (--data-pipeline pil) on real CIFAR-10 images, for extraction, `qscore-hf score` and linear evaluation."""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log; no model card update in linear evaluation: the model folder is shared by the tests of this file; the
# loader's pipeline named (pil), since the default, auto, takes the tensor one on these images.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from cifar10_subset import cifar10_rows, write_cifar10_subset
from qscore_hf import QScoreConfig, QScoreModel, decoded
from qscore_hf.cli import main
from qscore_hf.data import load_image_dataset
from qscore_hf.features import extract_features

pytestmark = pytest.mark.usefixtures("one_thread")

# On the CPU both pipelines run the same torchvision operations on the same uint8 pixels: the features agree to float
# rounding. On a GPU the resize runs there (other kernels): features within this of the loader's, relative to the
# largest feature.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """300 CIFAR-10 training images as the train split, the next 100 as the test split."""
    folder = write_cifar10_subset(tmp_path_factory.mktemp("cifar"), count=300)
    pq.write_table(cifar10_rows(300, 100), folder / "test-00000-of-00001.parquet")
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random resnet10t read at 32 px resized to 37 and centre-cropped back to 32 (crop_pct 0.875): the resize
    and the crop both change the pixels."""
    import torch

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    QScoreModel(QScoreConfig(backbone="resnet10t", image_size=32, crop_pct=0.875, qscore_eps=0.5)).save_pretrained(folder)
    return folder


def test_extracted_features_equal_the_loaders_and_each_pipeline_has_its_cache(cifar, model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("QSCORE_HF_DECODED_CACHE", str(tmp_path / "decoded"))
    model = QScoreModel.from_pretrained(model_dir)
    data = load_image_dataset(str(cifar), "train")
    loader = extract_features(model, data, batch_size=128, cache_dir=tmp_path / "cache", progress=False,
                              data_pipeline="pil")  # fmt: skip
    tensor = extract_features(model, data, batch_size=128, cache_dir=tmp_path / "cache", progress=False,
                              data_pipeline="tensor")  # fmt: skip
    assert not tensor.from_cache and tensor.cache_path != loader.cache_path
    scale = float(np.abs(loader.features).max())
    np.testing.assert_allclose(tensor.features, loader.features, rtol=0, atol=TOLERANCE * scale)
    assert tensor.labels.tolist() == loader.labels.tolist() == data.dataset["label"]
    assert tensor.row_ids.tolist() == list(range(300))

    # a later extraction reads the decoded array (nothing decoded again) and, with a cache, the features
    monkeypatch.setattr(decoded, "_build", lambda *args: pytest.fail("decoded the images a second time"))
    in_memory = extract_features(model, data, batch_size=100, progress=False, data_pipeline="tensor")
    np.testing.assert_allclose(in_memory.features, loader.features, rtol=0, atol=TOLERANCE * scale)
    again = extract_features(model, data, batch_size=128, cache_dir=tmp_path / "cache", progress=False,
                             data_pipeline="tensor")  # fmt: skip
    assert again.from_cache and again.cache_path == tensor.cache_path
    with pytest.raises(ValueError, match="unknown data pipeline 'dali'"):
        extract_features(model, data, progress=False, data_pipeline="dali")


def test_score_gives_the_loaders_q_scores_and_refuses_sharding(cifar, model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QSCORE_HF_DECODED_CACHE", str(tmp_path / "decoded"))
    common = ["score", "--model", str(model_dir), "--dataset", str(cifar), "--cache-dir", str(tmp_path / "cache"),
              "--no-progress", "--batch-size", "128"]  # fmt: skip
    assert main([*common, "--data-pipeline", "pil", "--out", str(tmp_path / "pil")]) == 0
    assert main([*common, "--data-pipeline", "tensor", "--out", str(tmp_path / "tensor")]) == 0
    pil = pq.read_table(tmp_path / "pil" / "per_sample.parquet").to_pydict()
    tensor = pq.read_table(tmp_path / "tensor" / "per_sample.parquet").to_pydict()
    assert tensor["row_id"] == pil["row_id"] == list(range(300))
    np.testing.assert_allclose(tensor["q_score"], pil["q_score"], rtol=1e-3, atol=1e-3 * max(pil["q_score"]))
    for name in ("pil", "tensor"):
        assert json.loads((tmp_path / name / "summary.json").read_text())["num_samples"] == 300
    capsys.readouterr()
    assert main([*common, "--data-pipeline", "tensor", "--shard-rows", "128", "--out", str(tmp_path / "sharded")]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the weights' loading bar
    assert error.startswith("qscore-hf score: error: sharded") and error.endswith("use --data-pipeline pil with it.")


def test_linear_evaluation_gives_the_loaders_results(cifar, model_dir, tmp_path, monkeypatch, training_script):
    monkeypatch.setenv("QSCORE_HF_DECODED_CACHE", str(tmp_path / "decoded"))
    script = training_script("linear_eval")
    reports = {}
    for pipeline in ("pil", "tensor"):
        out = tmp_path / pipeline
        argv = ["--model", str(model_dir), "--dataset", str(cifar), "--epochs", "20", "--cache-dir",
                str(tmp_path / "cache"), "--no-progress", "--no-model-card", "--data-pipeline", pipeline, "--out", str(out)]
        assert script.main(argv) == 0
        reports[pipeline] = json.loads((out / "report.json").read_text())
    assert reports["tensor"]["top1"] == pytest.approx(reports["pil"]["top1"], abs=0.011)  # one of 100 images
    assert reports["tensor"]["auroc"] == pytest.approx(reports["pil"]["auroc"], abs=0.02)
