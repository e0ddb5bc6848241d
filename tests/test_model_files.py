"""Damaged model folders, nonsense configs and statistics, and statistics of another width: each is one error line
that names the file or field and what to do, from ``QScoreModel.from_pretrained``, ``qscore-hf info`` and the
``evaluate`` metric."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from qscore_hf import ActivationStats, QScoreConfig, QScoreModel
from qscore_hf.cli import main
from qscore_hf.evaluate_metric import METRIC_PATH
from qscore_hf.model_files import ModelFolderError
from qscore_hf.model_snapshot import record_weights_digest

WIDTH = 512  # resnet18


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = QScoreModel(QScoreConfig(backbone="resnet18_cifar", image_size=32, crop_pct=1.0, qscore_eps=2.0))
    model.activation_stats.update(torch.rand(40, WIDTH) ** 4)
    folder = tmp_path_factory.mktemp("models") / "good"
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def folder(good_folder, tmp_path) -> Path:
    """A fresh copy of the good folder for a test to damage."""
    return Path(shutil.copytree(good_folder, tmp_path / "model"))


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this should never run",))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def _unsafe_bin(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    torch.save({"backbone.conv1.weight": torch.zeros(1), "payload": _RunsCode()}, folder / "pytorch_model.bin")


DAMAGE = {
    # name: (how to damage the folder, the file the error names, words of the message)
    "truncated": (lambda f: _truncate(f / "model.safetensors"), "model.safetensors", "truncated or damaged"),
    "empty": (lambda f: (f / "model.safetensors").write_bytes(b""), "model.safetensors", "is empty"),
    "random": (
        lambda f: (f / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(4096)),
        "model.safetensors",
        "not a readable safetensors file",
    ),
    "no config": (lambda f: (f / "config.json").unlink(), "config.json", "is missing"),
    "no weights": (lambda f: (f / "model.safetensors").unlink(), "", "no weights"),
    "unsafe pickle": (_unsafe_bin, "pytorch_model.bin", "refused as unsafe: .*posix.system"),
    "random pickle": (
        lambda f: ((f / "model.safetensors").unlink(), (f / "pytorch_model.bin").write_bytes(b"\x80\x02garbage")),
        "pytorch_model.bin",
        "not a readable PyTorch checkpoint",
    ),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_damaged_folder_is_one_named_line(name, folder, capsys):
    damage, filename, words = DAMAGE[name]
    damage(folder)
    with pytest.raises(ModelFolderError, match=words) as info:
        QScoreModel.from_pretrained(folder)
    message = str(info.value)
    assert "\n" not in message
    assert str(folder / filename) in message
    assert main(["info", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and str(folder / filename) in err
    assert "this should never run" not in capsys.readouterr().out


def test_run_folder_suggests_its_model_subfolder(good_folder, tmp_path, capsys):
    # training/pretrain.py's output folder: checkpoints/ and train_log.jsonl beside the exported model/
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000010").mkdir(parents=True)
    (run / "train_log.jsonl").write_text("{}\n")
    shutil.copytree(good_folder, run / "model")
    with pytest.raises(ModelFolderError, match=f"did you mean {run / 'model'}\\?"):
        QScoreModel.from_pretrained(run)
    assert main(["info", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"did you mean {run / 'model'}?" in err
    assert QScoreModel.from_pretrained(run / "model").config.backbone == "resnet18_cifar"  # the suggestion loads


def test_good_folder_still_loads_and_info_prints(good_folder, capsys):
    model = QScoreModel.from_pretrained(good_folder)
    assert int(model.activation_stats.num_samples) == 40
    assert main(["info", str(good_folder)]) == 0
    assert json.loads(capsys.readouterr().out)["activation_stats_samples"] == 40


# ---------------------------------------------------------------------------------------------------------
# Statistics and config fields
# ---------------------------------------------------------------------------------------------------------


def _edit_weights(folder: Path, **tensors: torch.Tensor) -> None:
    weights = load_file(str(folder / "model.safetensors"))
    weights.update({f"activation_stats.{key}": value for key, value in tensors.items()})
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    record_weights_digest(folder)  # edited on purpose: the config names the new weights (else: a mixed save)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda counts: counts.index_fill(0, torch.tensor([3]), 41), r"counts must lie in \[0, num_samples=40\].*feature 3: 41"),
        (lambda counts: counts.index_fill(0, torch.tensor([0]), -1), r"feature 0: -1"),
    ],
)
def test_counts_out_of_range_are_refused_on_load(folder, change, words):
    counts = load_file(str(folder / "model.safetensors"))["activation_stats.counts"]
    _edit_weights(folder, counts=change(counts))
    with pytest.raises(ValueError, match=words) as info:
        QScoreModel.from_pretrained(folder)
    assert str(folder) in str(info.value)


def test_negative_num_samples_refused_on_load(folder):
    _edit_weights(folder, num_samples=torch.tensor(-5))
    with pytest.raises(ValueError, match="num_samples is -5"):
        QScoreModel.from_pretrained(folder)


def test_state_dict_counts_out_of_range_refused():
    stats = ActivationStats(4, eps=1.0)
    with pytest.raises(ValueError, match=r"counts must lie in \[0, num_samples=2\]"):
        stats.load_state_dict({"counts": torch.tensor([0, 3, 1, 0]), "num_samples": torch.tensor(2)})


@pytest.mark.parametrize(
    "field, value",
    [
        ("qscore_eps", -3), ("qscore_eps", "abc"), ("qscore_eps", math.nan), ("qscore_eps", math.inf),
        ("qscore_eps", None), ("stem_padding", -1), ("stem_padding", "abc"), ("stem_padding", 1.5),
        ("image_size", 0), ("qscore_p_lo", "low"), ("crop_pct", math.nan),
    ],
)
def test_nonsense_config_field_is_named(folder, field, value, capsys):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config[field] = value
    path.write_text(json.dumps(config))  # NaN and Infinity are written as JSON's common extensions
    with pytest.raises(ValueError, match=f"config field {field}"):
        QScoreModel.from_pretrained(folder)
    assert main(["info", str(folder)]) == 1
    assert f"config field {field}" in capsys.readouterr().err
    with pytest.raises(ValueError, match=f"config field {field}"):
        QScoreConfig(**{field: value})


def test_whole_number_config_fields_accept_integral_floats():
    config = QScoreConfig(stem_padding=2.0, image_size=32.0, qscore_eps=0)
    assert (config.stem_padding, config.image_size, config.qscore_eps) == (2, 32, 0.0)


# ---------------------------------------------------------------------------------------------------------
# The evaluate metric and statistics of another width
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def metric():
    return evaluate.load(str(METRIC_PATH))


def test_metric_rejects_stats_object_of_another_width(metric):
    stats = ActivationStats(8, eps=1.0).update(torch.rand(20, 8))
    with pytest.raises(ValueError, match="activation_stats track 8 features but the predictions have 4"):
        metric.compute(predictions=[[0.0, 0.0, 0.0, 4.0], [1.0, 2.0, 3.0, 4.0]], eps=1.0, activation_stats=stats)


def test_metric_rejects_state_dict_of_another_width(metric):
    state = ActivationStats(6, eps=1.0).update(torch.rand(20, 6)).state_dict()
    with pytest.raises(ValueError, match="activation_stats track 6 features but the predictions have 4"):
        metric.compute(predictions=[[0.0, 0.0, 0.0, 4.0], [1.0, 2.0, 3.0, 4.0]], eps=1.0, activation_stats=state)


def test_metric_rejects_model_folder_of_another_width(metric, good_folder):
    with pytest.raises(ValueError, match=f"activation_stats track {WIDTH} features but the predictions have 4"):
        metric.compute(predictions=[[0.0, 0.0, 0.0, 4.0]], eps=2.0, activation_stats=str(good_folder))


def test_metric_rejects_bad_eps(metric):
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        metric.compute(predictions=[[0.0, 0.0, 0.0, 4.0]], eps=-1.0)


# ---------------------------------------------------------------------------------------------------------
# The eps the saved statistics were counted with
# ---------------------------------------------------------------------------------------------------------


def test_config_eps_other_than_the_counted_one_is_refused(folder, capsys):
    # good_folder's statistics were counted with eps = 2 (its config's qscore_eps)
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "qscore_eps": 3.0}))
    with pytest.raises(ValueError, match="counted with eps=2 but are used with eps=3 .*set qscore_eps to 2"):
        QScoreModel.from_pretrained(folder)
    assert main(["info", str(folder)]) == 1
    assert "counted with eps=2" in capsys.readouterr().err


def test_folder_saved_before_the_eps_record_loads(folder):
    weights = load_file(str(folder / "model.safetensors"))
    del weights["activation_stats.counted_eps"]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    record_weights_digest(folder)  # edited on purpose: the config names the new weights (else: a mixed save)
    model = QScoreModel.from_pretrained(folder)
    assert model.activation_stats.counted_with_eps == 2.0
    assert int(model.activation_stats.num_samples) == 40


def test_state_dict_eps_record():
    stats = ActivationStats(4, eps=0.7).update(torch.rand(10, 4))
    assert stats.to(torch.bfloat16).counted_with_eps == 0.7  # a dtype cast leaves the record alone
    with pytest.raises(ValueError, match="counted with eps=0.7 but are used with eps=1"):
        ActivationStats(4, eps=1.0).load_state_dict(stats.state_dict())
    older = {key: value for key, value in stats.state_dict().items() if key != "counted_eps"}
    loaded = ActivationStats(4, eps=1.0)
    loaded.load_state_dict(older)  # no record: taken as counted with this eps
    assert loaded.counted_with_eps == 1.0 and torch.equal(loaded.counts, stats.counts)
    assert loaded.reset().counted_with_eps == 1.0


# ---------------------------------------------------------------------------------------------------------
# The CIFAR stem's padding, which changes no tensor's shape
# ---------------------------------------------------------------------------------------------------------


def test_config_stem_padding_other_than_the_weights_is_refused(folder, capsys):
    # good_folder's resnet18_cifar was built (and saved) with the default stem_padding = 1
    assert int(load_file(str(folder / "model.safetensors"))["stem_padding"]) == 1
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "stem_padding": 2}))
    with pytest.raises(ValueError, match="stem_padding=2, but the weights were trained with stem_padding=1 .*back to 1"):
        QScoreModel.from_pretrained(folder)
    assert main(["info", str(folder)]) == 1
    assert "stem_padding=1" in capsys.readouterr().err


def test_folder_saved_before_the_stem_padding_record_loads_with_the_configs(folder):
    weights = load_file(str(folder / "model.safetensors"))
    del weights["stem_padding"]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    record_weights_digest(folder)  # edited on purpose: the config names the new weights (else: a mixed save)
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "stem_padding": 2}))
    model = QScoreModel.from_pretrained(folder)  # no record: the config's padding is taken, as before
    assert model.backbone.conv1.padding == (2, 2) and int(model.stem_padding) == 2


def test_only_cifar_stems_record_a_padding():
    assert "stem_padding" not in QScoreModel(QScoreConfig(backbone="resnet10t")).state_dict()
    padded = QScoreModel(QScoreConfig(backbone="resnet18_cifar", stem_padding=2))
    assert int(padded.state_dict()["stem_padding"]) == 2 and padded.backbone.conv1.padding == (2, 2)
