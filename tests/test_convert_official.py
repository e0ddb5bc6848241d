"""Official checkpoint layouts beyond the release files (training checkpoints of SwAV, solo-learn's args.json,
lightly's suffix-named momentum copies, whole pickled modules), unsafe and oversized files, and what a converted
card claims. Each fixture is built in the layout the repository's own save code writes (see shared/CHECKPOINTS.md)."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from test_convert import TOL, bn1d, lightning, linear, other, prefixed, sgd_state, state, tv_features, tv_resnet

from qscore_hf import QScoreConfig, cli
from qscore_hf.convert import (
    CheckpointExpansionError,
    ConversionError,
    ConversionReport,
    TrustedCheckpointWarning,
    UnsafeCheckpointError,
    convert_checkpoint,
    detect_format,
)


def assert_same_features(model, reference, size: int = 64) -> None:
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(images, return_qscore=False).features - reference(images)).abs().max().item() < TOL


# ------------------------------------------------------------------------------------------- official layouts
def swav_training_checkpoint(tmp: Path):
    """main_swav.py's own checkpoint: {epoch, state_dict (DDP: `module.*`), optimizer, amp}."""
    ref = tv_resnet(seed=21)
    head = linear("projection_head.0", 512, 64) | bn1d("projection_head.1", 64) | linear("projection_head.3", 64, 16)
    tensors = prefixed(state(ref, fc=False) | head | {"prototypes.weight": torch.randn(30, 16)}, "module.")
    amp = {"loss_scaler0": {"loss_scale": 65536.0, "unskipped": 120}}
    path = tmp / "checkpoint.pth.tar"
    torch.save({"epoch": 100, "state_dict": tensors, "optimizer": sgd_state(), "amp": amp}, path)
    return path, tv_features(ref)


@pytest.mark.parametrize("format", ["auto", "swav", "swav_train"])
def test_swav_training_checkpoint_converts_with_auto_and_named_formats(tmp_path, format):
    path, reference = swav_training_checkpoint(tmp_path)
    model = convert_checkpoint(path, format=format)
    report = ConversionReport.from_config(model.config)
    assert report.method == "swav" and report.dropped == {"projector": 2 + 5 + 2, "prototypes": 1}
    assert model.config.image_std == pytest.approx([0.228, 0.224, 0.225])
    assert_same_features(model, reference)
    if format == "auto":
        assert report.format == "swav_train"
        assert report.other_entries == ["epoch", "optimizer", "amp"]


def test_whole_pickled_module_is_refused_then_converts_when_trusted(tmp_path):
    ref = tv_resnet(seed=22)
    path = tmp_path / "model.pth"
    torch.save(ref, path)  # the whole nn.Module, pickled by reference to torchvision's class
    with pytest.raises(UnsafeCheckpointError, match=r"refused as unsafe: it pickles `torchvision\.models\.resnet\.ResNet`.*--trust-checkpoint"):
        convert_checkpoint(path)
    with pytest.warns(TrustedCheckpointWarning):
        model = convert_checkpoint(path, trust_checkpoint=True)
    assert ConversionReport.from_config(model.config).format == "torchvision"
    assert_same_features(model, tv_features(ref))


def solo_learn_run(tmp: Path, args: dict):
    """solo-learn: a Lightning checkpoint without hyper-parameters (it never calls save_hyperparameters), and the
    Checkpointer's args.json beside it."""
    ref = tv_resnet(cifar=True, seed=23)
    backbone = state(ref, fc=False)
    projector = linear("0", 512, 64) | bn1d("1", 64) | linear("3", 64, 32)
    tensors = (prefixed(backbone, "backbone.") | prefixed(projector, "projector.")
               | prefixed(linear("0", 32, 64) | linear("2", 64, 32), "predictor.")
               | prefixed(other(backbone), "momentum_backbone.") | prefixed(other(projector), "momentum_projector.")
               | linear("classifier", 512, 100))  # fmt: skip
    checkpoint = lightning(tensors, None)
    del checkpoint["hyper_parameters"], checkpoint["hparams_name"]
    run = tmp / "trained_models" / "byol" / "3kxj2q1c"
    run.mkdir(parents=True)
    path = run / "byol-cifar100-3kxj2q1c-ep=999.ckpt"
    torch.save(checkpoint, path)
    (run / "args.json").write_text(json.dumps(args))
    return path, tv_features(ref)


# solo-learn >= 1.0.6 dumps its hydra config; earlier versions their argparse arguments (`encoder` before 1.0.3)
SOLO_ARGS = {
    "hydra config": {"name": "byol-cifar100", "method": "byol", "backbone": {"name": "resnet18", "kwargs": {}},
                     "data": {"dataset": "cifar100", "num_classes": 100}, "max_epochs": 1000},
    "argparse": {"name": "byol-cifar100", "method": "byol", "backbone": "resnet18", "dataset": "cifar100",
                 "data_dir": "<not serializable>", "max_epochs": 1000},
    "argparse, encoder": {"name": "byol-cifar100", "method": "byol", "encoder": "resnet18", "dataset": "cifar100"},
}  # fmt: skip


@pytest.mark.parametrize("version", SOLO_ARGS)
def test_solo_learn_reads_method_and_dataset_from_args_json(tmp_path, version):
    path, reference = solo_learn_run(tmp_path, SOLO_ARGS[version])
    model = convert_checkpoint(path)  # no --method needed
    report = ConversionReport.from_config(model.config)
    assert (report.format, report.method, model.config.ssl_method) == ("solo_learn", "byol", "byol")
    assert report.method_source == "from args.json beside the checkpoint"
    assert (model.config.pretraining_data, report.pretraining_data_source) == ("cifar100", "from args.json beside the checkpoint")
    assert model.config.image_mean == pytest.approx([0.5071, 0.4865, 0.4409])  # solo-learn's CIFAR-100 statistics
    assert report.inferred == ["license"]
    assert not any("names the backbone" in note for note in report.notes)
    assert_same_features(model, reference, size=32)


def test_solo_learn_args_json_naming_another_backbone_is_noted(tmp_path):
    path, _ = solo_learn_run(tmp_path, {"method": "byol", "backbone": {"name": "resnet50"}, "data": {"dataset": "cifar10"}})
    report = ConversionReport.from_config(convert_checkpoint(path).config)
    assert any("names the backbone 'resnet50', but the weights are a resnet18_cifar" in note for note in report.notes)


def test_solo_learn_unreadable_args_json_is_named(tmp_path):
    path, _ = solo_learn_run(tmp_path, {})
    (path.parent / "args.json").write_text("{not json")
    with pytest.raises(ConversionError, match=r"args\.json \(the settings solo_learn writes beside .*\.ckpt\) is not readable JSON"):
        convert_checkpoint(path)


def test_lightly_momentum_copies_with_a_suffix_are_dropped_by_rule(tmp_path):
    """lightly's examples and TiCo-style modules name EMA copies `backbone_momentum` / `projection_head_momentum`."""
    ref = tv_resnet(seed=24)
    backbone = state(ref, fc=False)
    head = linear("layers.0", 512, 64) | bn1d("layers.1", 64) | linear("layers.3", 64, 32)
    tensors = (prefixed(backbone, "backbone.") | prefixed(head, "projection_head.")
               | prefixed(other(backbone), "backbone_momentum.") | prefixed(other(head), "projection_head_momentum.")
               | linear("online_classifier.classification_head", 512, 1000))  # fmt: skip
    path = tmp_path / "tico-epoch=99.ckpt"
    torch.save(lightning(tensors, {"batch_size_per_device": 256, "num_classes": 1000}), path)
    assert detect_format(path).format == "lightly"
    model = convert_checkpoint(path, method="tico")
    report = ConversionReport.from_config(model.config)
    assert report.dropped == {"encoder copies": len(backbone), "momentum copies": len(head), "projector": len(head),
                              "online classifier": 2}  # fmt: skip
    assert report.consumed == len(backbone) and model.config.ssl_method is None and report.method == "tico"
    assert_same_features(model, tv_features(ref))

    # a momentum encoder beside a prediction head is BYOL's layout, whichever way the copy is named
    head_p = prefixed(linear("layers.0", 32, 64) | linear("layers.2", 64, 32), "prediction_head.")
    torch.save(lightning(tensors | head_p, {"batch_size_per_device": 256}), path)
    assert ConversionReport.from_config(convert_checkpoint(path).config).method == "byol"


# -------------------------------------------------------------------------------------- unsafe and oversized
class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


@pytest.mark.parametrize("save", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_as_unsafe(tmp_path, save, capfd):
    path = tmp_path / "evil.pth"
    if save == "torch.save":
        torch.save({"state_dict": {}, "payload": _RunsCode()}, path)
    else:
        path.write_bytes(pickle.dumps({"payload": _RunsCode()}, protocol=5))
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pth was refused as unsafe") as error:
        convert_checkpoint(path)
    message = str(error.value)
    assert "truncated" not in message and "download it again" not in message
    if save == "torch.save":
        assert "`posix.system`" in message or "`nt.system`" in message
    assert "this must never run" not in capfd.readouterr().out
    # the CLI: one line, exit code 1
    assert cli.main(["convert", "--checkpoint", str(path), "--out", str(tmp_path / "out")]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "refused as unsafe" in err and not (tmp_path / "out").exists()


def test_zip_that_expands_far_beyond_its_size_is_refused_before_loading(tmp_path):
    # A torch.save zip re-packed with deflate: 40 MiB of zeros in a file of about 40 KB.
    buffer = io.BytesIO()
    torch.save({"state_dict": {"conv1.weight": torch.zeros(10 * 2**20)}}, buffer)
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as packed:
        for entry in source.infolist():
            packed.writestr(entry.filename, source.read(entry.filename))
    assert path.stat().st_size < 2**20
    with pytest.raises(CheckpointExpansionError, match=r"bomb\.pth is a 0\.\d MiB zip whose entries expand to 40\.0 MiB"):
        convert_checkpoint(path)


def test_deflated_checkpoint_within_the_cap_still_loads(tmp_path):
    ref = tv_resnet(seed=25)
    buffer = io.BytesIO()
    torch.save(ref.state_dict(), buffer)
    path = tmp_path / "resnet18-deflated.pth"
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as packed:
        for entry in source.infolist():
            packed.writestr(entry.filename, source.read(entry.filename))
    assert_same_features(convert_checkpoint(path), tv_features(ref))


# ----------------------------------------------------------------------------------------- what the card says
def moco_v2(tmp: Path) -> Path:
    ref = tv_resnet(seed=26)
    query = state(ref, fc=False) | linear("fc.0", 512, 512) | linear("fc.2", 512, 128)
    tensors = prefixed(query, "module.encoder_q.") | prefixed(other(query), "module.encoder_k.")
    tensors |= {"module.queue": torch.randn(128, 256), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    path = tmp / "random_weights.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": tensors, "optimizer": sgd_state()}, path)
    return path


def test_card_says_what_the_key_layout_alone_suggests(tmp_path):
    path = moco_v2(tmp_path)
    assert cli.main(["convert", "--checkpoint", str(path), "--out", str(tmp_path / "inferred")]) == 0
    card = ModelCard.load(tmp_path / "inferred" / "README.md")
    assert "trained with" not in card.text
    assert "- method: mocov2 (inferred from the key layout: the heads in the checkpoint)" in card.text
    assert "- pre-training data: imagenet-1k (inferred from the key layout: the moco release's data)" in card.text
    assert "does not record its method, pretraining data, license" in card.text
    assert card.data.datasets is None  # no metadata claim from the layout alone
    # MoCo v1/v2: the repository's LICENSE is MIT since January 2023 (its README still says CC-BY-NC 4.0)
    assert card.data.license == "mit" and "README still" in card.text


def test_flags_state_pretraining_data_and_license(tmp_path, capsys):
    path = moco_v2(tmp_path)
    out = tmp_path / "stated"
    code = cli.main(["convert", "--checkpoint", str(path), "--out", str(out), "--method", "mocov2",
                     "--pretraining-data", "imagenet-1k", "--license", "cc-by-nc-4.0"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    card = ModelCard.load(out / "README.md")
    assert (card.data.license, card.data.datasets) == ("cc-by-nc-4.0", ["imagenet-1k"])
    assert "- pre-training data: imagenet-1k (given)" in card.text and "given (--license)" in card.text
    assert "inferred from the key layout" not in card.text
    report = ConversionReport.from_config(QScoreConfig.from_pretrained(out))
    assert report.inferred == [] and report.license["confirmed"]
