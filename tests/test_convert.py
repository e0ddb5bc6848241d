"""Checkpoint conversion: one fixture per row of shared/CHECKPOINTS.md's layout table, built in the release's own
layout (torchvision/timm ResNets with random weights and BatchNorm statistics, keys prefixed as released, with the
heads, extras and non-tensor entries the release carries, saved the way it saves them), converted, and compared
with the reference backbone's pooled output. Then detection, the report, the errors, safety, the CLI and loading.

Head sizes are small (the keys and groups are what the layouts define); no weights are committed.
"""

from __future__ import annotations

import argparse
import copy
import fractions
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import AutoModel

from qscore_hf import QScoreModel, cli
from qscore_hf.convert import (
    ConversionError,
    ConversionReport,
    TrustedCheckpointWarning,
    convert_checkpoint,
    detect_format,
)

TOL = 1e-5


# ------------------------------------------------------------------------------------------- reference models
def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random BatchNorm affine parameters and running statistics (the defaults 1/0 would hide a mix-up)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight")) or name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(("running_mean", ".bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif name.endswith("num_batches_tracked"):
                tensor.fill_(1234)
    return model.eval()


def tv_resnet(arch: str = "resnet18", cifar: bool = False, seed: int = 0) -> nn.Module:
    """A torchvision ResNet; ``cifar``: solo-learn's stem (3x3 stride-1 conv, padding 2, no max-pool)."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)()
    if cifar:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
        model.maxpool = nn.Identity()
    return randomize(model, seed)


def tv_features(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """The pooled output of a torchvision ResNet: its forward with ``fc = Identity``."""
    pooled = copy.deepcopy(model)
    pooled.fc = nn.Identity()
    return pooled.eval()


def state(model: nn.Module, fc: bool = True) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if fc or not k.startswith("fc.")}


def prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {prefix + key: value for key, value in tensors.items()}


def other(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """A momentum/student copy: same keys, different values."""
    return {key: value + 0.5 if value.is_floating_point() else value.clone() for key, value in tensors.items()}


def linear(name: str, n_in: int, n_out: int, bias: bool = True) -> dict[str, Tensor]:
    out = {f"{name}.weight": torch.randn(n_out, n_in)}
    return out | ({f"{name}.bias": torch.randn(n_out)} if bias else {})


def bn1d(name: str, n: int, affine: bool = True) -> dict[str, Tensor]:
    stats = {f"{name}.running_mean": torch.randn(n), f"{name}.running_var": torch.rand(n) + 0.5,
             f"{name}.num_batches_tracked": torch.tensor(10)}  # fmt: skip
    return ({f"{name}.weight": torch.rand(n), f"{name}.bias": torch.randn(n)} if affine else {}) | stats


def sgd_state() -> dict[str, Any]:
    return {"state": {0: {"momentum_buffer": torch.randn(8)}},
            "param_groups": [{"lr": 0.03, "momentum": 0.9, "dampening": 0, "weight_decay": 1e-4, "nesterov": False,
                              "params": [0]}]}  # fmt: skip


def lightning(state_dict: dict[str, Tensor], hyper_parameters: Any) -> dict[str, Any]:
    """A Lightning ``.ckpt`` dict as ``Trainer.save_checkpoint`` writes it (plain types besides tensors)."""
    return {
        "epoch": 399,
        "global_step": 39900,
        "pytorch-lightning_version": "2.0.9",
        "state_dict": state_dict,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_loop.state_dict": {"_batches_that_stepped": 39900},
                               "epoch_loop.batch_progress": {"total": {"ready": 100, "completed": 100}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None, 'mode': 'min'}": {
            "monitor": None, "best_model_score": None, "best_model_path": "/ckpt/last.ckpt", "current_score": None,
            "dirpath": "/ckpt", "best_k_models": {}, "kth_best_model_path": "", "kth_value": torch.tensor(float("inf")),
            "last_model_path": "/ckpt/last.ckpt"}},
        "optimizer_states": [sgd_state()],
        "lr_schedulers": [{"T_max": 400, "eta_min": 0.0, "base_lrs": [0.3], "last_epoch": 399, "_step_count": 400,
                           "_get_lr_called_within_step": False, "_last_lr": [0.0]}],
        "hparams_name": "kwargs",
        "hyper_parameters": hyper_parameters,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ the releases
Built = tuple[Path, Callable[[Tensor], Tensor]]


def moco(tmp: Path, version: int = 2) -> Built:
    ref = tv_resnet()
    head = linear("fc.0", 512, 512) | linear("fc.2", 512, 128) if version == 2 else linear("fc", 512, 128)
    query = state(ref, fc=False) | head
    tensors = prefixed(query, "module.encoder_q.") | prefixed(other(query), "module.encoder_k.")
    tensors |= {"module.queue": torch.randn(128, 256), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    path = tmp / f"moco_v{version}_200ep_pretrain.pth.tar"
    # MoCo's files predate the zip format: saved with the legacy serialization
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": tensors, "optimizer": sgd_state()}, path,
               _use_new_zipfile_serialization=False)  # fmt: skip
    return path, tv_features(ref)


def mocov3(tmp: Path) -> Built:
    ref = tv_resnet(seed=1)
    projector = linear("fc.0", 512, 64, False) | bn1d("fc.1", 64) | linear("fc.3", 64, 32, False) | bn1d("fc.4", 32, False)
    base = state(ref, fc=False) | projector
    predictor = linear("0", 32, 64, False) | bn1d("1", 64) | linear("3", 64, 32, False)
    tensors = prefixed(base, "module.base_encoder.") | prefixed(other(base), "module.momentum_encoder.")
    tensors |= prefixed(predictor, "module.predictor.")
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 7}
    path = tmp / "r-50-1000ep.pth.tar"
    torch.save({"epoch": 1000, "arch": "resnet18", "state_dict": tensors, "optimizer": sgd_state(), "scaler": scaler}, path)
    return path, tv_features(ref)


def simsiam(tmp: Path) -> Built:
    ref = tv_resnet(seed=2)
    projector = (linear("fc.0", 512, 512, False) | bn1d("fc.1", 512) | linear("fc.3", 512, 512, False)
                 | bn1d("fc.4", 512) | linear("fc.6", 512, 64) | bn1d("fc.7", 64, False))  # fmt: skip
    predictor = linear("0", 64, 16, False) | bn1d("1", 16) | linear("3", 16, 64)
    tensors = prefixed(state(ref, fc=False) | projector, "module.encoder.") | prefixed(predictor, "module.predictor.")
    path = tmp / "checkpoint_0099.pth.tar"
    torch.save({"epoch": 100, "arch": "resnet18", "state_dict": tensors, "optimizer": sgd_state()}, path)
    return path, tv_features(ref)


def swav(tmp: Path) -> Built:
    ref = tv_resnet(seed=3)
    head = linear("projection_head.0", 512, 64) | bn1d("projection_head.1", 64) | linear("projection_head.3", 64, 16)
    tensors = prefixed(state(ref, fc=False) | head | {"prototypes.weight": torch.randn(30, 16)}, "module.")
    path = tmp / "swav_800ep_pretrain.pth.tar"
    torch.save(tensors, path)
    return path, tv_features(ref)


def dino_backbone(tmp: Path) -> Built:
    ref = tv_resnet(seed=4)
    path = tmp / "dino_resnet50_pretrain.pth"
    torch.save(state(ref, fc=False), path)
    return path, tv_features(ref)


def dino_full(tmp: Path, teacher_prefix: str = "module.") -> Built:
    ref = tv_resnet(seed=5)
    head = (linear("head.mlp.0", 512, 64) | linear("head.mlp.2", 64, 64) | linear("head.mlp.4", 64, 16)
            | {"head.last_layer.weight_g": torch.randn(100, 1), "head.last_layer.weight_v": torch.randn(100, 16)})  # fmt: skip
    teacher = prefixed(prefixed(state(ref, fc=False), "backbone.") | head, teacher_prefix)
    student = prefixed(other(prefixed(state(ref, fc=False), "backbone.") | head), "module.")
    args = argparse.Namespace(arch="resnet18", out_dim=100, use_fp16=True, lr=0.3, output_dir="/checkpoint/dino")
    checkpoint = {"student": student, "teacher": teacher, "optimizer": sgd_state(), "epoch": 100, "args": args,
                  "dino_loss": {"center": torch.randn(1, 100)},
                  "fp16_scaler": {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                  "growth_interval": 2000, "_growth_tracker": 3}}  # fmt: skip
    path = tmp / "checkpoint.pth"
    torch.save(checkpoint, path)
    return path, tv_features(ref)


def byol_converted(tmp: Path) -> Built:
    ref = tv_resnet(seed=6)
    path = tmp / "pretrain_res50x1.pth.tar"
    torch.save({k: v for k, v in state(ref).items() if "num_batches_tracked" not in k}, path)
    return path, tv_features(ref)


def simclr_v1_converted(tmp: Path) -> Built:
    ref = tv_resnet("resnet50", seed=7)
    path = tmp / "resnet50-1x.pth"
    torch.save({"state_dict": state(ref)}, path)
    return path, tv_features(ref)


def solo_learn_imagenet(tmp: Path) -> Built:
    """solo-learn >= 1.0.3 (`backbone.`), BYOL on ImageNet-100; hyper-parameters as plain types."""
    ref = tv_resnet(seed=8)
    projector = linear("0", 512, 64) | bn1d("1", 64) | linear("3", 64, 32)
    predictor = linear("0", 32, 64) | bn1d("1", 64) | linear("3", 64, 32)
    backbone = state(ref, fc=False)
    tensors = (prefixed(backbone, "backbone.") | prefixed(projector, "projector.") | prefixed(predictor, "predictor.")
               | prefixed(other(backbone), "momentum_backbone.") | prefixed(other(projector), "momentum_projector.")
               | linear("classifier", 512, 100))  # fmt: skip
    cfg = {"method": "byol", "backbone": {"name": "resnet18", "kwargs": {}}, "data": {"dataset": "imagenet100",
           "num_classes": 100}, "optimizer": {"name": "lars", "lr": 0.5}, "max_epochs": 400}  # fmt: skip
    path = tmp / "byol-imagenet100-ep=399.ckpt"
    torch.save(lightning(tensors, {"cfg": cfg}), path)
    return path, tv_features(ref)


def solo_learn_cifar_old(tmp: Path) -> Built:
    """solo-learn < 1.0.3 (`encoder.`), SimCLR on CIFAR-10 with the padding-2 CIFAR stem; flat hyper-parameters."""
    ref = tv_resnet(cifar=True, seed=9)
    tensors = (prefixed(state(ref, fc=False), "encoder.") | prefixed(linear("0", 512, 64) | linear("2", 64, 32), "projector.")
               | linear("classifier", 512, 10))  # fmt: skip
    hparams = {"encoder": "resnet18", "n_classes": 10, "cifar": True, "method": "simclr", "dataset": "cifar10",
               "data_dir": Path("/datasets"), "train_dir": Path("cifar10/train"), "max_epochs": 1000, "lr": 0.4,
               "temperature": 0.2, "proj_hidden_dim": 2048}  # fmt: skip
    path = tmp / "simclr-cifar10-ep=999.ckpt"
    torch.save(lightning(tensors, hparams), path)
    return path, tv_features(ref)


def solo_learn_omegaconf(tmp: Path) -> Built:
    """solo-learn >= 1.0.6 saves its hydra config (an omegaconf DictConfig) as hyper-parameters: MoCo v2+, CIFAR-100."""
    omegaconf = pytest.importorskip("omegaconf")
    ref = tv_resnet(cifar=True, seed=10)
    projector = linear("0", 512, 64) | linear("2", 64, 32)
    backbone = state(ref, fc=False)
    tensors = (prefixed(backbone, "backbone.") | prefixed(projector, "projector.") | prefixed(other(backbone),
               "momentum_backbone.") | prefixed(other(projector), "momentum_projector.") | linear("classifier", 512, 100)
               | {"queue": torch.randn(2, 32, 64), "queue_ptr": torch.zeros(1, dtype=torch.long)})  # fmt: skip
    cfg = omegaconf.OmegaConf.create({"method": "mocov2plus", "backbone": {"name": "resnet18", "kwargs": {}},
                                      "data": {"dataset": "cifar100", "num_classes": 100, "num_large_crops": 2},
                                      "optimizer": {"name": "sgd", "lr": 0.3, "kwargs": {"momentum": 0.9}},
                                      "scheduler": {"lr_decay_steps": None}, "max_epochs": 1000})  # fmt: skip
    path = tmp / "mocov2plus-cifar100.ckpt"
    torch.save(lightning(tensors, {"cfg": cfg}), path)
    return path, tv_features(ref)


def lightly_dino(tmp: Path) -> Built:
    """lightly's DINO: `backbone` is the EMA teacher, `student_backbone` the student."""
    ref = tv_resnet(seed=11)
    head = linear("layers.0", 512, 64) | linear("layers.2", 64, 64) | linear("layers.4", 64, 16)
    head |= {"last_layer.parametrizations.weight.original0": torch.randn(100, 1),
             "last_layer.parametrizations.weight.original1": torch.randn(100, 16)}  # fmt: skip
    backbone = state(ref, fc=False)
    tensors = (prefixed(backbone, "backbone.") | prefixed(head, "projection_head.") | prefixed(other(backbone),
               "student_backbone.") | prefixed(other(head), "student_projection_head.")
               | {"criterion.center": torch.randn(1, 100)} | linear("online_classifier.classification_head", 512, 1000))  # fmt: skip
    path = tmp / "dino-epoch=99.ckpt"
    torch.save(lightning(tensors, {"batch_size_per_device": 128, "num_classes": 1000}), path)
    return path, tv_features(ref)


def lightly_simclr(tmp: Path) -> Built:
    ref = tv_resnet(seed=12)
    tensors = (prefixed(state(ref, fc=False), "backbone.") | prefixed(linear("layers.0", 512, 64) | bn1d("layers.1", 64)
               | linear("layers.3", 64, 32), "projection_head.") | linear("online_classifier.classification_head", 512, 1000))  # fmt: skip
    path = tmp / "simclr-epoch=99.ckpt"
    torch.save(lightning(tensors, {"batch_size_per_device": 256, "num_classes": 1000}), path)
    return path, tv_features(ref)


def torchvision_plain(tmp: Path) -> Built:
    ref = tv_resnet(seed=13)
    path = tmp / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    return path, tv_features(ref)


def timm_plain(tmp: Path) -> Built:
    torch.manual_seed(14)
    ref = randomize(timm.create_model("resnet18"), 14)
    path = tmp / "timm-resnet18.pth"
    torch.save(ref.state_dict(), path)
    return path, lambda x: ref.forward_head(ref.forward_features(x), pre_logits=True)


def torchvision_safetensors(tmp: Path) -> Built:
    ref = tv_resnet(seed=15)
    path = tmp / "model.safetensors"
    save_file(state(ref), path)
    return path, tv_features(ref)


@dataclass
class Row:
    build: Callable[[Path], Built]
    format: str
    method: str | None
    ssl_method: str | None
    config: dict[str, Any] = field(default_factory=dict)
    method_arg: str | None = None
    size: int = 64


IMAGENET_CONFIG = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "image_size": 224}
ROWS = {
    "moco_v1": Row(lambda tmp: moco(tmp, 1), "moco", "mocov1", "moco", {"backbone": "resnet18", **IMAGENET_CONFIG}),
    "moco_v2": Row(moco, "moco", "mocov2", "moco", {"pretraining_data": "imagenet-1k"}),
    "moco_v3": Row(mocov3, "mocov3", "mocov3", "moco"),
    "simsiam": Row(simsiam, "simsiam", "simsiam", "simsiam"),
    "swav": Row(swav, "swav", "swav", "swav", {"image_std": [0.228, 0.224, 0.225], "image_mean": [0.485, 0.456, 0.406]}),
    "dino_backbone": Row(dino_backbone, "dino_backbone", "dino", "dino"),
    "dino_full": Row(dino_full, "dino_full", "dino", "dino"),
    "dino_full_teacher_without_ddp": Row(lambda tmp: dino_full(tmp, ""), "dino_full", "dino", "dino"),
    "byol_converted": Row(byol_converted, "byol_converted", "byol", "byol"),
    "simclr_v1_converted_r50": Row(simclr_v1_converted, "simclr_v1_converted", "simclr", "simclr",
                                   {"backbone": "resnet50", "image_mean": [0.0] * 3, "image_std": [1.0] * 3}),  # fmt: skip
    "solo_learn_imagenet100": Row(solo_learn_imagenet, "solo_learn", "byol", "byol",
                                  {"pretraining_data": "imagenet-100", "backbone": "resnet18", **IMAGENET_CONFIG}),
    "solo_learn_cifar_encoder_prefix": Row(solo_learn_cifar_old, "solo_learn", "simclr", "simclr", {
        "backbone": "resnet18_cifar", "stem_padding": 2, "image_size": 32, "pretraining_data": "cifar10",
        "image_mean": [0.4914, 0.4822, 0.4465], "image_std": [0.2470, 0.2435, 0.2616]}, size=32),  # fmt: skip
    "solo_learn_omegaconf": Row(solo_learn_omegaconf, "solo_learn", "mocov2plus", "moco", {
        "backbone": "resnet18_cifar", "stem_padding": 2, "pretraining_data": "cifar100"}, size=32),  # fmt: skip
    "lightly_dino_teacher": Row(lightly_dino, "lightly", "dino", "dino"),
    "lightly_simclr": Row(lightly_simclr, "lightly", "simclr", "simclr", method_arg="simclr"),
    "torchvision": Row(torchvision_plain, "torchvision", None, None, {"pretraining_data": None}),
    "timm": Row(timm_plain, "torchvision", None, None),
    "safetensors": Row(torchvision_safetensors, "torchvision", None, None),
}


@pytest.mark.parametrize("name", ROWS)
def test_release_layout_converts_exactly(name, tmp_path):
    row = ROWS[name]
    path, reference = row.build(tmp_path)
    assert detect_format(path).format == row.format

    model = convert_checkpoint(path, method=row.method_arg)
    report = ConversionReport.from_config(model.config)
    assert (report.format, report.method, model.config.ssl_method) == (row.format, row.method, row.ssl_method)
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert report.source_file == path.name
    for key, value in row.config.items():
        assert getattr(model.config, key) == pytest.approx(value) if isinstance(value, list) else getattr(model.config, key) == value

    images = torch.randn(3, 3, row.size, row.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features, expected = model(images, return_qscore=False).features, reference(images)
    assert features.shape == expected.shape
    assert (features - expected).abs().max().item() < TOL


def test_report_counts_every_tensor_by_group(tmp_path):
    # MoCo v2 on ResNet-18, counted from the fixture: torchvision's resnet18 has 122 tensors, 2 of them `fc`;
    # encoder_q = 120 backbone + 4 MLP (fc.0/fc.2 weight+bias); encoder_k = the same 124; queue + queue_ptr.
    path, _ = moco(tmp_path, 2)
    report = ConversionReport.from_config(convert_checkpoint(path).config)
    assert report.consumed == 120
    assert report.dropped == {"encoder copies": 124, "projector": 4, "queue": 2}
    assert report.filled == {}
    assert report.other_entries == ["epoch", "arch", "optimizer"]
    assert (report.license["id"], report.license["confirmed"]) == ("mit", False)  # LICENSE is MIT since 2023-01

    # BYOL converted omits the 20 BatchNorm counters of ResNet-18 (1 stem + 8 blocks x 2 + 3 shortcuts): filled.
    path, _ = byol_converted(tmp_path)
    report = ConversionReport.from_config(convert_checkpoint(path).config)
    assert (report.consumed, report.filled, report.dropped) == (100, {"num_batches_tracked": 20}, {"supervised head": 2})


def test_lightly_dino_notes_teacher_and_solo_learn_notes_stem(tmp_path):
    path, _ = lightly_dino(tmp_path)
    assert any("teacher" in note for note in ConversionReport.from_config(convert_checkpoint(path).config).notes)
    path, _ = solo_learn_cifar_old(tmp_path)
    assert any("padding 2" in note for note in ConversionReport.from_config(convert_checkpoint(path).config).notes)


def test_explicit_format_accepts_a_flat_state_dict(tmp_path):
    """A release's state dict re-saved on its own (here as safetensors) converts when its format is named."""
    path, reference = moco(tmp_path)
    flat = tmp_path / "moco_state_dict.safetensors"
    save_file(torch.load(path, weights_only=True)["state_dict"], flat)
    model = convert_checkpoint(flat, format="moco")
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (model(images, return_qscore=False).features - reference(images)).abs().max().item() < TOL


# ---------------------------------------------------------------------------------------------------- errors
def _resave(path: Path, edit: Callable[[dict], None]) -> Path:
    checkpoint = torch.load(path, weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_file_fails_naming_it(tmp_path, legacy):
    path = tmp_path / "moco.pth.tar"
    torch.save({"state_dict": state(tv_resnet())}, path, _use_new_zipfile_serialization=not legacy)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConversionError, match=r"moco\.pth\.tar is not a readable PyTorch checkpoint: it looks truncated"):
        convert_checkpoint(path)


def test_missing_backbone_tensor_fails(tmp_path):
    path = _resave(moco(tmp_path)[0], lambda c: c["state_dict"].pop("module.encoder_q.layer3.1.bn2.running_var"))
    with pytest.raises(ConversionError, match=r"(?m)format 'moco'.*\n  missing backbone tensors: module\.encoder_q\.layer3\.1\.bn2\.running_var$") as error:
        convert_checkpoint(path)
    assert "How to proceed" in str(error.value)


def test_unknown_extra_key_fails(tmp_path):
    path = _resave(moco(tmp_path)[0], lambda c: c["state_dict"].update({"module.memory_bank": torch.zeros(4)}))
    with pytest.raises(ConversionError, match=r"unknown keys \(neither backbone weights nor a known head of moco\): module\.memory_bank"):
        convert_checkpoint(path)


def test_resnet18_checkpoint_as_resnet50_fails(tmp_path):
    path, _ = moco(tmp_path)
    with pytest.raises(ConversionError) as error:
        convert_checkpoint(path, arch="resnet50")
    message = str(error.value)
    assert "the checkpoint has a BasicBlock, blocks [2, 2, 2, 2], 7x7 ImageNet stem (resnet18) but resnet50 was asked for" in message
    assert "module.encoder_q.layer1.0.conv1.weight (checkpoint (64, 64, 3, 3), resnet50 expects (64, 64, 1, 1))" in message
    assert "pass --arch resnet18 or leave --arch out" in message


def test_wide_variant_fails(tmp_path):
    tensors = state(tv_resnet())
    tensors["conv1.weight"], tensors["bn1.weight"] = torch.randn(128, 3, 7, 7), torch.randn(128)
    path = tmp_path / "swav_RN50w2.pth"
    torch.save(tensors, path)
    with pytest.raises(ConversionError, match="wide ResNet .*conv1 has 128 output channels.*not supported"):
        convert_checkpoint(path)


def test_ambiguous_lightning_method_asks_for_it(tmp_path):
    path, _ = lightly_simclr(tmp_path)
    with pytest.raises(ConversionError, match=r"does not say which method.*pass --method"):
        convert_checkpoint(path)


def test_unknown_layout_fails(tmp_path):
    path = tmp_path / "weird.pth"
    torch.save({"model": {"encoder.stem.weight": torch.zeros(1)}}, path)
    with pytest.raises(ConversionError, match=r"no known checkpoint layout fits \(a dict with top-level keys model\)"):
        convert_checkpoint(path)


def test_pickle_with_unlisted_global_needs_trust(tmp_path):
    path = _resave(moco(tmp_path)[0], lambda c: c.update({"best_acc1": fractions.Fraction(1, 3)}))
    with pytest.raises(ConversionError, match=r"pickles `fractions\.Fraction`.*--trust-checkpoint"):
        convert_checkpoint(path)
    with pytest.warns(TrustedCheckpointWarning, match="weights_only=False"):
        model = convert_checkpoint(path, trust_checkpoint=True)
    assert ConversionReport.from_config(model.config).format == "moco"


# ------------------------------------------------------------------------------------------ CLI and loading
def test_cli_converts_computes_stats_pushes_and_output_loads(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    path, reference = solo_learn_cifar_old(tmp_path)
    out = tmp_path / "simclr-r18-cifar10"
    pushed: dict[str, Any] = {}

    def create_repo(self, repo_id, **kwargs):
        pushed["created"] = repo_id

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        pushed.update(repo_id=repo_id, files=sorted(p.name for p in Path(folder_path).iterdir()))
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/0", commit_message="", commit_description="", oid="0"
        )

    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    code = cli.main(["convert", "--checkpoint", str(path), "--out", str(out), "--compute-stats", "digits",
                     "--stats-max-samples", "40", "--push-to-hub", "org/simclr-r18-cifar10"])  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "format: solo_learn (auto-detected: solo-learn" in printed.out
    assert "activation statistics: 40 images of digits/train" in printed.out
    assert "hf_secret_token_value" not in printed.out + printed.err
    assert pushed["created"] == pushed["repo_id"] == "org/simclr-r18-cifar10"
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= set(pushed["files"])
    assert not list(tmp_path.glob(".simclr-r18-cifar10.tmp-*"))  # atomic: no temporary folder left

    config = json.loads((out / "config.json").read_text())
    assert config["conversion"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert config["conversion"]["format"] == "solo_learn" and config["stem_padding"] == 2
    images = torch.randn(2, 3, 32, 32)
    for loaded in (QScoreModel.from_pretrained(out), AutoModel.from_pretrained(out)):
        assert isinstance(loaded, QScoreModel)
        assert int(loaded.activation_stats.num_samples) == 40
        with torch.no_grad():
            features = loaded.eval()(images, return_qscore=False).features
            assert (features - reference(images)).abs().max().item() < TOL
    card = (out / "README.md").read_text()
    assert "license: mit" in card and "`simclr-cifar10-ep=999.ckpt`" in card
    assert 'QScoreModel.from_pretrained("org/simclr-r18-cifar10")' in card


def test_cli_reports_errors_with_exit_code_1(tmp_path, capsys):
    path, _ = moco(tmp_path)
    code = cli.main(["convert", "--checkpoint", str(path), "--out", str(tmp_path / "out"), "--arch", "resnet50"])
    assert code == 1
    assert "qscore-hf convert: error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
