"""Released ViT checkpoints convert strictly: DINO backbone files and full checkpoints (the teacher), MoCo v3.

Fixtures are timm VisionTransformers saved under each release's key names (DINO's ViT uses timm's names; MoCo v3
wraps timm's ViT as ``module.base_encoder`` with 12 heads for ViT-S); the expected features are those models' own
(the CLS token after the final LayerNorm).
"""

from __future__ import annotations

import pytest
import timm
import torch

from qscore_hf import QScoreModel
from qscore_hf.convert import ConversionError, ConversionReport, convert_checkpoint, detect_format
from qscore_hf.convert.architecture import infer_vit

pytestmark = pytest.mark.usefixtures("one_thread")


def _vit(seed: int, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_small_patch16_224", num_classes=0, **kwargs).eval()


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def _features(model: QScoreModel, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x, return_qscore=False).features


def _expected(vit: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The source model's features: timm's ViT without classifier returns the CLS token after the final norm."""
    with torch.no_grad():
        return vit(x)


def test_dino_vit_backbone_file(tmp_path, pixels):
    vit = _vit(0)
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(vit.state_dict(), path)
    assert detect_format(path).format == "dino_vit_backbone"
    model = convert_checkpoint(path)
    assert model.config.backbone == "vit_small_patch16_224" and model.config.ssl_method == "dino"
    with torch.no_grad():
        tokens = vit.forward_features(pixels)  # already through the final LayerNorm
    assert (_features(model, pixels) - tokens[:, 0]).abs().max() < 1e-5


def test_dino_vit_full_checkpoint_uses_the_teacher(tmp_path, pixels):
    teacher, student = _vit(1), _vit(2)
    head = {"head.mlp.0.weight": torch.randn(16, 384), "head.mlp.0.bias": torch.zeros(16),
            "head.last_layer.weight_g": torch.ones(8, 1), "head.last_layer.weight_v": torch.randn(8, 16)}  # fmt: skip
    checkpoint = {
        "student": {**{f"module.backbone.{k}": v for k, v in student.state_dict().items()},
                    **{f"module.{k}": v for k, v in head.items()}},
        "teacher": {**{f"backbone.{k}": v for k, v in teacher.state_dict().items()}, **head},
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 100,
    }  # fmt: skip
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    model = convert_checkpoint(path)
    report = ConversionReport.from_config(model.config)
    assert report.format == "dino_vit_full" and report.dropped == {"projector": 4}
    assert (_features(model, pixels) - _expected(teacher, pixels)).abs().max() < 1e-5


def test_mocov3_vit_small_has_twelve_heads(tmp_path, pixels):
    vit = _vit(3, num_heads=12)
    encoder = {f"module.base_encoder.{k}": v for k, v in vit.state_dict().items()}
    projector = {"module.base_encoder.head.0.weight": torch.randn(32, 384),
                 "module.base_encoder.head.0.bias": torch.zeros(32)}  # fmt: skip
    momentum = {k.replace("base_encoder", "momentum_encoder"): v + 1 for k, v in {**encoder, **projector}.items()}
    state = {**encoder, **projector, **momentum, "module.predictor.0.weight": torch.randn(8, 32)}
    path = tmp_path / "vit-s-300ep.pth.tar"
    torch.save({"epoch": 300, "arch": "vit_small", "state_dict": state, "optimizer": {}}, path)
    model = convert_checkpoint(path)
    report = ConversionReport.from_config(model.config)
    assert report.format == "mocov3_vit" and report.method == "mocov3"
    assert model.config.backbone_config == {"num_heads": 12}
    expected = _expected(vit, pixels)
    assert (_features(model, pixels) - expected).abs().max() < 1e-5
    # With timm's default 6 heads the same weights give other features: the head count matters.
    six_heads = _vit(0)
    six_heads.load_state_dict(vit.state_dict())
    assert (_expected(six_heads, pixels) - expected).abs().max() > 1e-3
    model.save_pretrained(tmp_path / "saved")
    assert torch.equal(_features(QScoreModel.from_pretrained(tmp_path / "saved"), pixels), _features(model, pixels))


@pytest.mark.parametrize(
    ("name", "expected"),
    [("vit_small_patch16_224", (384, 16, 197)), ("vit_small_patch8_224", (384, 8, 785)),
     ("vit_base_patch16_224", (768, 16, 197)), ("vit_base_patch8_224", (768, 8, 785))],
)  # fmt: skip
def test_dino_release_shapes_are_named(name, expected):
    """DINO's S/16, S/8, B/16, B/8 (shapes only: built on the meta device)."""
    with torch.device("meta"):
        state = timm.create_model(name, num_classes=0).state_dict()
    shape = infer_vit(state)
    assert (shape.embed_dim, shape.patch_size, shape.num_tokens) == expected and shape.depth == 12
    assert shape.name == name
    assert detect_format(state).format == "dino_vit_backbone"


def test_wrong_size_position_embedding_is_named(tmp_path):
    state = _vit(0).state_dict()
    state["pos_embed"] = state["pos_embed"][:, :50]
    path = tmp_path / "dino_vits16.pth"
    torch.save(state, path)
    with pytest.raises(ConversionError, match=r"pos_embed \(checkpoint \(1, 50, 384\), vit_small_patch16_224 "
                                              r"expects \(1, 197, 384\)\)"):  # fmt: skip
        convert_checkpoint(path)


def test_missing_tensor_is_named(tmp_path):
    state = {f"module.base_encoder.{k}": v for k, v in _vit(0, num_heads=12).state_dict().items()}
    del state["module.base_encoder.blocks.5.mlp.fc2.bias"]
    path = tmp_path / "vit-s-300ep.pth.tar"
    torch.save({"state_dict": state}, path)
    missing = r"missing backbone tensors: module\.base_encoder\.blocks\.5\.mlp\.fc2\.bias"
    with pytest.raises(ConversionError, match=missing):
        convert_checkpoint(path)


def test_unknown_vit_width_is_named(tmp_path):
    with torch.device("meta"):
        state = timm.create_model("vit_tiny_patch16_224", num_classes=0).state_dict()
    torch.save({k: torch.zeros(v.shape) for k, v in state.items()}, tmp_path / "tiny.pth")
    with pytest.raises(ConversionError, match=r"ViT, width 192, patch 16, 12 blocks.*pass --arch"):
        convert_checkpoint(tmp_path / "tiny.pth")
