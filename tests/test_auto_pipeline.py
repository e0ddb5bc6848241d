"""The default data pipeline, auto: the tensor pipeline where it can serve the run, and then exactly what an
explicit --data-pipeline tensor gives; the pil pipeline otherwise, said in exactly one line naming why (a streamed
data set, sharded extraction, a recipe op without a kornia translation, images of several sizes, an array over the
size limit or the free disk space); the pipeline taken, never "auto", is what the feature cache and the model's
training config record. Real images: scikit-learn's digits."""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False) where a test reads
# the output line by line; no tracker and no loader workers in pre-training (as in test_tensor_pipeline.py). The
# scoring tests keep every other default on: the data pipeline above all.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from qscore_hf import QScoreConfig, QScoreModel, decoded
from qscore_hf.cli import main
from qscore_hf.data import ImageDataset, load_image_dataset
from qscore_hf.data_pipelines import TensorPipelineRefused, tensor_or_none
from qscore_hf.features import extract_features, feature_cache_key, resolve_data_pipeline
from qscore_hf.pretraining import PretrainConfig, pretrain

pytestmark = pytest.mark.usefixtures("one_thread")


def said(text: str) -> list[str]:
    """The lines of ``text`` that say which data pipeline a run took."""
    return [line for line in text.splitlines() if line.startswith("data pipeline:")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    QScoreModel(QScoreConfig(backbone="resnet10t", image_size=16, crop_pct=1.0, qscore_eps=0.5)).save_pretrained(folder)
    return folder


@pytest.fixture
def decoded_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QSCORE_HF_DECODED_CACHE", str(tmp_path / "decoded"))
    return tmp_path / "decoded"


def test_auto_extracts_what_the_tensor_pipeline_does_and_caches_it_under_its_key(model_dir, tmp_path, decoded_cache,
                                                                                 capsys):  # fmt: skip
    model = QScoreModel.from_pretrained(model_dir)
    data = load_image_dataset("digits", "test")
    auto = extract_features(model, data, batch_size=64, cache_dir=tmp_path / "cache", progress=False)
    assert said(capsys.readouterr().out) == []  # taking the tensor pipeline is no fallback: nothing to say
    assert auto.cache_path == tmp_path / "cache" / feature_cache_key(model, data, data_pipeline="tensor")
    assert [entry.name for entry in decoded_cache.iterdir() if not entry.name.startswith(".")]  # decoded once
    tensor = extract_features(model, data, batch_size=64, progress=False, data_pipeline="tensor")
    np.testing.assert_array_equal(auto.features, tensor.features)
    np.testing.assert_array_equal(auto.labels, tensor.labels)
    # the loader's features keep the key they always had (no pipeline in it), apart from the tensor pipeline's
    pil = extract_features(model, data, batch_size=64, cache_dir=tmp_path / "cache", progress=False,
                           data_pipeline="pil")  # fmt: skip
    assert pil.cache_path == tmp_path / "cache" / feature_cache_key(model, data) != auto.cache_path
    np.testing.assert_allclose(auto.features, pil.features, rtol=0, atol=1e-4 * float(np.abs(pil.features).max()))
    with pytest.raises(ValueError, match="feature cache is keyed on the data pipeline taken"):
        feature_cache_key(model, data, data_pipeline="auto")


def test_a_streamed_data_set_is_scored_through_pil_said_in_one_line(model_dir, tmp_path, decoded_cache, capsys):
    common = ["score", "--model", str(model_dir), "--dataset", "digits", "--split", "test", "--streaming",
              "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "auto")]) == 0
    assert said(capsys.readouterr().out) == [
        "data pipeline: pil (data set 'digits' is streamed; the tensor pipeline needs a map-style data set)"
    ]
    assert not decoded_cache.exists()
    # named, the tensor pipeline refuses as before; named pil says nothing
    assert main([*common, "--data-pipeline", "tensor", "--out", str(tmp_path / "tensor")]) == 1
    assert "is streamed" in capsys.readouterr().err
    assert main([*common, "--data-pipeline", "pil", "--out", str(tmp_path / "pil")]) == 0
    assert said(capsys.readouterr().out) == []


def test_sharded_scoring_takes_pil_said_in_one_line(model_dir, tmp_path, decoded_cache, capsys):
    common = ["score", "--model", str(model_dir), "--dataset", "digits", "--split", "test", "--batch-size", "32",
              "--shard-rows", "128", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "auto")]) == 0
    assert said(capsys.readouterr().out) == [
        "data pipeline: pil (the features are extracted in shards, whose images are decoded in the loader)"
    ]
    model = QScoreModel.from_pretrained(model_dir)
    shards = tmp_path / "cache" / f"{feature_cache_key(model, load_image_dataset('digits', 'test'))}-shards"
    assert shards.is_dir() and not decoded_cache.exists()  # the loader's shards; nothing decoded once


def tiny(output_dir, **overrides) -> PretrainConfig:
    """Six BYOL steps on 64 digits (every default on but the progress bars, the tracker and the loader workers; each
    step logged)."""
    settings = dict(method="byol", output_dir=str(output_dir), dataset="digits", backbone="resnet10t", image_size=16,
                    batch_size=16, max_samples=64, epochs=3, max_steps=6, num_workers=0, log_with="none",
                    progress=False, eval_split=None, seed=5, log_every=1)  # fmt: skip
    return PretrainConfig(**{**settings, **overrides})


def test_auto_pretrains_what_the_tensor_pipeline_does_and_records_it(tmp_path, decoded_cache, capsys):
    auto = pretrain(tiny(tmp_path / "auto"))
    assert said(capsys.readouterr().out) == []
    tensor = pretrain(tiny(tmp_path / "tensor", data_pipeline="tensor"))
    expected, weights = load_file(tensor / "model.safetensors"), load_file(auto / "model.safetensors")
    assert expected.keys() == weights.keys()
    for key in expected:
        assert torch.equal(expected[key], weights[key]), key
    logs = [[{key: value for key, value in json.loads(line).items() if key != "images_per_s"}
             for line in (tmp_path / run / "train_log.jsonl").read_text().splitlines()] for run in ("auto", "tensor")]
    assert sum("loss" in entry for entry in logs[0]) == 6 and logs[0] == logs[1]
    assert QScoreModel.from_pretrained(auto).config.training["data_pipeline"] == "tensor"


def test_a_recipe_without_a_kornia_translation_pretrains_through_pil(tmp_path, decoded_cache, capsys, monkeypatch):
    from lightly.transforms import SimCLRTransform

    from qscore_hf.ssl.simclr import SimCLR

    rotating = staticmethod(lambda settings: SimCLRTransform(input_size=settings.image_size, rr_prob=0.5,
                                                             normalize=settings.normalize))  # fmt: skip
    monkeypatch.setattr(SimCLR, "build_transform", rotating)
    model_dir = pretrain(tiny(tmp_path / "auto", method="simclr", max_steps=2))
    assert said(capsys.readouterr().out) == [
        "data pipeline: pil (the recipe's lightly's RandomRotate has no kornia translation)"
    ]
    assert QScoreModel.from_pretrained(model_dir).config.training["data_pipeline"] == "pil"
    assert not decoded_cache.exists()
    with pytest.raises(TensorPipelineRefused, match="no translation of lightly's RandomRotate; use --data-pipeline"):
        pretrain(tiny(tmp_path / "tensor", method="simclr", data_pipeline="tensor"))


def digits_of_two_sizes(folder, digits) -> ImageDataset:
    """30 digits at 8x8, then 10 stretched to 8x12: an image folder of real images of two sizes."""
    images, _, target = digits
    for index in range(40):
        image = PIL.Image.fromarray(images[index]).convert("RGB")
        if index >= 30:
            image = image.resize((12, 8))
        (folder / str(target[index])).mkdir(parents=True, exist_ok=True)
        image.save(folder / str(target[index]) / f"{index:03d}.png")
    return load_image_dataset(str(folder), "train")


def test_images_of_several_sizes_take_pil_unless_the_tensor_pipeline_is_named(model_dir, tmp_path, decoded_cache,
                                                                              digits, capsys):  # fmt: skip
    data, model = digits_of_two_sizes(tmp_path / "folder", digits), QScoreModel.from_pretrained(model_dir)
    assert resolve_data_pipeline(model, data, "auto", progress=False) == "pil"
    (line,) = said(capsys.readouterr().out)
    assert line.startswith("data pipeline: pil (the images of ") and "have several sizes (row " in line
    assert line.endswith("is 8x12, not 8x8); the tensor pipeline would resize them to one)")
    # named, the tensor pipeline resizes them (its resize policy); auto does not take that resized array either
    assert resolve_data_pipeline(model, data, "tensor", progress=False) == "tensor"
    assert "10 of 40 images" in capsys.readouterr().out
    assert resolve_data_pipeline(model, data, "auto", progress=False) == "pil"
    assert said(capsys.readouterr().out) == [
        f"data pipeline: pil (the images of {data.name!r} have several sizes (10 of them are not 8x8); the tensor "
        "pipeline would resize them to one)"
    ]


def test_an_array_over_the_limit_or_the_free_space_takes_pil(tmp_path, decoded_cache, monkeypatch):
    data = load_image_dataset("digits", "test")  # 360 images of 8x8: 69,120 bytes decoded
    lines: list[str] = []
    small = lambda: decoded.decode_images(data, progress=False, max_bytes=60_000)  # noqa: E731
    assert tensor_or_none("auto", small, say=lines.append) is None
    assert lines == ["data pipeline: pil (360 images of 8x8 take 67.5 KiB decoded, over the 58.6 KiB limit of the "
                     "decode-once array)"]  # fmt: skip
    with pytest.raises(TensorPipelineRefused, match="use --data-pipeline pil"):
        tensor_or_none("tensor", small)

    class FullDisk:
        free = 1000

    monkeypatch.setattr(decoded.shutil, "disk_usage", lambda path: FullDisk)
    lines.clear()
    assert tensor_or_none("auto", lambda: decoded.decode_images(data, progress=False), say=lines.append) is None
    assert lines == [f"data pipeline: pil (360 images of 8x8 take 67.5 KiB decoded, more than the 1000 bytes free "
                     f"under {decoded_cache})"]  # fmt: skip
    assert not any(entry.name.endswith(".npy") for entry in decoded_cache.rglob("*"))  # nothing half-written


def test_images_much_larger_than_the_model_reads_are_scored_through_pil(model_dir, tmp_path, decoded_cache, digits,
                                                                        capsys):  # fmt: skip
    """Digits at 64x64 for a model reading 16 px: the loader decodes them at a reduced size (bounded_decode) where an
    array would hold them whole."""
    images, _, target = digits
    for index in range(20):
        folder = tmp_path / "large" / str(target[index])
        folder.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(images[index]).resize((64, 64)).convert("RGB").save(folder / f"{index:03d}.png")
    data, model = load_image_dataset(str(tmp_path / "large"), "train"), QScoreModel.from_pretrained(model_dir)
    assert resolve_data_pipeline(model, data, "auto", progress=False) == "pil"
    assert said(capsys.readouterr().out) == [
        f"data pipeline: pil (the images of {data.name!r} (64x64) are much larger than the 16 px the model reads; "
        "the loader decodes them at a reduced size)"
    ]
    assert resolve_data_pipeline(model, data, "tensor", progress=False) == "tensor"  # named: decoded whole


def test_auto_resumes_on_the_pipeline_its_checkpoint_was_written_with(tmp_path, decoded_cache, capsys):
    """A run checkpointed on pil (explicitly, or by the old default: a checkpoint without the record) and resumed with
    the default auto goes on with pil, ending where an uninterrupted pil run ends."""
    straight = load_file(pretrain(tiny(tmp_path / "straight", data_pipeline="pil")) / "model.safetensors")
    for name, drop_record in (("recorded", False), ("older", True)):
        assert pretrain(tiny(tmp_path / name, data_pipeline="pil", stop_after_steps=4, checkpoint_every=2)) is None
        checkpoint = tmp_path / name / "checkpoints" / "step_00000004"
        assert (checkpoint / "data_pipeline.txt").read_text() == "pil"
        if drop_record:
            (checkpoint / "data_pipeline.txt").unlink()
        resumed = pretrain(tiny(tmp_path / name, resume="auto"))
        assert QScoreModel.from_pretrained(resumed).config.training["data_pipeline"] == "pil"
        weights = load_file(resumed / "model.safetensors")
        for key in straight:
            assert torch.equal(straight[key], weights[key]), (name, key)
    assert not decoded_cache.exists()  # nothing was decoded once: every run took pil
    assert "from here on the views differ" not in capsys.readouterr().out


def test_a_pipeline_named_on_resume_that_is_not_the_checkpoints_is_taken_with_one_line(tmp_path, decoded_cache, capsys):
    assert pretrain(tiny(tmp_path / "run", data_pipeline="pil", stop_after_steps=2, checkpoint_every=2)) is None
    capsys.readouterr()
    resumed = pretrain(tiny(tmp_path / "run", resume="auto", data_pipeline="tensor"))
    lines = [line for line in said(capsys.readouterr().out) if "from here on" in line]
    assert lines == ["data pipeline: tensor, as --data-pipeline names it, though step_00000002 was written by a run on "
                     "pil: from here on the views differ from an uninterrupted run's (--data-pipeline auto resumes on "
                     "pil)"]  # fmt: skip
    assert QScoreModel.from_pretrained(resumed).config.training["data_pipeline"] == "tensor"
    assert decoded_cache.exists()  # the resumed steps drew their views from the decoded array
