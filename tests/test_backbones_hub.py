"""QScoreModel over transformers and timm repos, loaded by id from a Hub cache laid out as huggingface_hub lays it
out, offline.

Expectations come from the source models themselves: each family's linearly probed representation computed with
the original transformers/timm model (CLS token of ``last_hidden_state``, its mean patch token, the pooled output,
timm's pre-logits), and the source's own image processor for the preprocessing.
"""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.models import save_for_hf
from transformers import (
    AutoImageProcessor,
    BitImageProcessor,
    BertConfig,
    BertModel,
    ConvNextConfig,
    ConvNextImageProcessor,
    ConvNextModel,
    Dinov2Config,
    Dinov2Model,
    ResNetConfig,
    ResNetModel,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

import huggingface_hub.constants as hub_constants
from qscore_hf import QScoreModel
from qscore_hf.backbones import build_backbone

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::qscore_hf.NegativeFeaturesWarning", "ignore:no discriminative features"),
]

COMMIT = hashlib.sha1(b"qscore-hf backbone test").hexdigest()
TIMM_VIT_ARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def _tiny_transformers() -> dict[str, tuple[torch.nn.Module, object]]:
    torch.manual_seed(0)
    vit = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
               patch_size=8)  # fmt: skip
    cnn = dict(hidden_sizes=[8, 16], depths=[1, 1])
    convnext_processor = ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    return {
        "vit": (ViTModel(ViTConfig(**vit)), ViTImageProcessor(size={"height": 32, "width": 32})),
        "dinov2": (
            Dinov2Model(Dinov2Config(**{k: v for k, v in vit.items() if k != "intermediate_size"}, mlp_ratio=2)),
            BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}),
        ),
        "resnet": (ResNetModel(ResNetConfig(embedding_size=8, layer_type="basic", **cnn)), convnext_processor),
        "convnext": (ConvNextModel(ConvNextConfig(num_stages=2, **cnn)), convnext_processor),
    }


@pytest.fixture(scope="module")
def sources(tmp_path_factory, hub_cache):
    """The source models (eval mode) and a Hub cache holding them as org/tiny-<name> (timm ones as org/timm-<name>)."""
    root = tmp_path_factory.mktemp("hub")
    hub = root / "hub"
    models = {}
    for name, (model, processor) in _tiny_transformers().items():
        folder = root / name
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        hub_cache(hub, f"org/tiny-{name}", folder, COMMIT)
        models[name] = (model.eval(), processor)
    torch.manual_seed(1)
    timm_models = {
        "vit": timm.create_model("vit_tiny_patch16_224", num_classes=5, **TIMM_VIT_ARGS),
        "resnet": timm.create_model("resnet10t", num_classes=5),
    }
    for name, model in timm_models.items():
        model.pretrained_cfg = {**model.pretrained_cfg, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3),
                                "crop_pct": 0.9}  # fmt: skip
        folder = root / f"timm-{name}"
        save_for_hf(model, folder, model_args=TIMM_VIT_ARGS if name == "vit" else None, safe_serialization=True)
        hub_cache(hub, f"org/timm-{name}", folder, COMMIT)
        models[f"timm-{name}"] = (model.eval(), None)
    bert = root / "bert"
    bert_config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertModel(bert_config).save_pretrained(bert)
    hub_cache(hub, "org/tiny-bert", bert, COMMIT)
    return hub, models


@pytest.fixture
def offline_hub(sources, monkeypatch):
    """Point huggingface_hub at the test cache, offline. Its constants are read at import, so patch the module
    attributes it consults on every call (and the variables, for anything reading the environment)."""
    hub, models = sources
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub))
    return models


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _representation(name: str, model: torch.nn.Module, x: torch.Tensor, pooling: str | None = None) -> torch.Tensor:
    with torch.no_grad():
        if name.startswith("timm-"):
            return model.forward_head(model.forward_features(x), pre_logits=True)
        out = model(pixel_values=x)
        if name in ("resnet", "convnext"):
            return out.pooler_output.flatten(1)
        cls = out.last_hidden_state[:, 0]
        return torch.cat([cls, out.last_hidden_state[:, 1:].mean(1)], -1) if pooling == "cls_mean" else cls


def _features(model: QScoreModel, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x, return_qscore=False).features


@pytest.mark.parametrize("name", ["vit", "dinov2", "resnet", "convnext"])
def test_transformers_repo_by_id(offline_hub, pixels, tmp_path, name):
    source, _ = offline_hub[name]
    model = QScoreModel.from_pretrained(f"org/tiny-{name}")
    expected = _representation(name, source, pixels)
    assert (_features(model, pixels) - expected).abs().max() < 1e-5
    assert model.config.hidden_size == expected.shape[1]
    assert model.config.backbone_source == {"library": "transformers", "repo_id": f"org/tiny-{name}",
                                            "revision": None, "commit": COMMIT}  # fmt: skip
    assert model.config.backbone_pooling == ("pooler" if name in ("resnet", "convnext") else "cls")

    model.save_pretrained(tmp_path / "saved")
    reloaded = QScoreModel.from_pretrained(tmp_path / "saved")
    assert torch.equal(_features(reloaded, pixels), _features(model, pixels))


def test_dinov2_mean_patch_tokens(offline_hub, pixels):
    source, _ = offline_hub["dinov2"]
    model = QScoreModel.from_pretrained("org/tiny-dinov2", pooling="cls_mean")
    expected = _representation("dinov2", source, pixels, pooling="cls_mean")
    assert expected.shape[1] == 64 and model.config.hidden_size == 64
    assert (_features(model, pixels) - expected).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["vit", "dinov2", "resnet"])
def test_image_processor_round_trip(offline_hub, tmp_path, name):
    """The saved processor prepares an image as the source's own processor does."""
    _, source_processor = offline_hub[name]
    model = QScoreModel.from_pretrained(f"org/tiny-{name}")
    model.save_pretrained(tmp_path / "saved")
    processor = AutoImageProcessor.from_pretrained(tmp_path / "saved")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8))
    expected = source_processor(image, return_tensors="pt")["pixel_values"]
    got = processor(image, return_tensors="pt")["pixel_values"]
    assert got.shape == expected.shape == (1, 3, 32, 32)
    assert (got - expected).abs().max() < 1e-5
    assert model.config.image_mean == list(source_processor.image_mean)


@pytest.mark.parametrize("repo", ["org/timm-vit", "hf-hub:org/timm-vit", "org/timm-resnet"])
def test_timm_repo_by_id(offline_hub, pixels, tmp_path, repo):
    name = "timm-vit" if "vit" in repo else "timm-resnet"
    source, _ = offline_hub[name]
    model = QScoreModel.from_pretrained(repo)
    expected = _representation(name, source, pixels)
    assert (_features(model, pixels) - expected).abs().max() < 1e-5
    config = model.config
    assert config.backbone_library == "timm" and config.backbone_source["commit"] == COMMIT
    assert config.image_mean == [0.5, 0.4, 0.3] and config.image_std == [0.2, 0.25, 0.3]
    assert config.crop_pct == 0.9 and config.source_preprocessing["crop_pct"] == 0.9
    # timm's eval transform: resize the short side to floor(size / crop_pct), centre-crop size (ViT: 35, 32).
    size = 32 if name == "timm-vit" else 176  # resnet10t's pretrained input size
    assert config.image_size == size and config.image_processor["size"] == {"shortest_edge": int(size / 0.9)}
    model.save_pretrained(tmp_path / "saved")
    reloaded = QScoreModel.from_pretrained(tmp_path / "saved")
    # Equal weights; the CPU kernels may sum in another order for differently laid-out tensors (seen: 7e-8).
    assert (_features(reloaded, pixels) - _features(model, pixels)).abs().max() < 1e-6


def test_saved_folder_rebuilds_without_the_source(offline_hub, pixels, tmp_path, monkeypatch):
    model = QScoreModel.from_pretrained("org/tiny-vit")
    model.save_pretrained(tmp_path / "saved")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    reloaded = QScoreModel.from_pretrained(tmp_path / "saved")
    assert torch.equal(_features(reloaded, pixels), _features(model, pixels))
    assert type(build_backbone(reloaded.config)) is type(reloaded.backbone)


def test_unsupported_model_type_is_named(offline_hub):
    with pytest.raises(ValueError, match=r"model type 'bert' is not supported as a backbone; supported: vit"):
        QScoreModel.from_pretrained("org/tiny-bert")


def test_pooling_rejected_for_own_folder_and_timm(offline_hub, tmp_path):
    with pytest.raises(ValueError, match="pooling='cls_mean' applies to transformers models"):
        QScoreModel.from_pretrained("org/timm-vit", pooling="cls_mean")
    with pytest.raises(ValueError, match="needs a ViT"):
        QScoreModel.from_pretrained("org/tiny-resnet", pooling="cls")
    QScoreModel.from_pretrained("org/tiny-vit").save_pretrained(tmp_path / "saved")
    with pytest.raises(ValueError, match="keeps the pooling it was saved with"):
        QScoreModel.from_pretrained(tmp_path / "saved", pooling="cls")


def test_timm_vit_built_at_requested_size():
    from qscore_hf.backbones import create_timm_backbone, timm_size_kwargs

    kwargs = timm_size_kwargs("vit_tiny_patch16_224", 32)
    assert kwargs == {"img_size": 32}
    backbone = create_timm_backbone("vit_tiny_patch16_224", model_args=kwargs)
    assert backbone(torch.zeros(1, 3, 32, 32)).shape == (1, backbone.num_features)
    assert timm_size_kwargs("resnet18", 32) == {}  # global pool: any size
    assert timm_size_kwargs("vit_tiny_patch16_224", 224) == {}
    assert timm_size_kwargs("vit_small_patch16_224.dino", 32) == {"img_size": 32}  # a pretrained tag, as in the issue


def test_fixed_size_family_without_img_size_is_refused_in_one_line(monkeypatch, tmp_path, capsys):
    """A family timm cannot build for another size (simulated: create_model rejects img_size) stops before work."""
    from qscore_hf.backbones import timm_names
    from qscore_hf.cli import main

    create = timm.create_model

    def no_img_size(name, *args, **kwargs):
        if "img_size" in kwargs:
            raise TypeError("__init__() got an unexpected keyword argument 'img_size'")
        return create(name, *args, **kwargs)

    monkeypatch.setattr(timm_names.timm, "create_model", no_img_size)
    argv = ["score", "--model", "vit_tiny_patch16_224", "--backbone-only", "--image-size", "32", "--dataset",
            "digits", "--out", str(tmp_path / "out"), "--no-progress"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vit_tiny_patch16_224 takes only 224 px input" in err[0], err
    assert "leave --image-size out or pass 224" in err[0]
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------- the commands accept them
def test_score_command_on_a_transformers_repo(offline_hub, tmp_path):
    """`qscore-hf score` over a DINOv2 repo by id, with the CLS + mean patch token features."""
    import pyarrow.parquet as pq

    from qscore_hf.cli import main

    out = tmp_path / "out"
    argv = ["score", "--model", "org/tiny-dinov2", "--pooling", "cls_mean", "--dataset", "digits", "--split",
            "train", "--max-samples", "24", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["name"] == "org/tiny-dinov2" and summary["model"]["commit"] == COMMIT
    recorded = summary["model"]["config"]
    assert recorded["backbone_pooling"] == "cls_mean" and recorded["hidden_size"] == 64
    assert recorded["backbone_source"]["repo_id"] == "org/tiny-dinov2"
    assert summary["num_samples"] == 24 and len(pq.read_table(out / "per_sample.parquet")) == 24


def test_pipeline_over_a_transformers_backbone(offline_hub):
    from transformers import pipeline

    model = QScoreModel.from_pretrained("org/tiny-vit")
    processor = model.image_processor()
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    extractor = pipeline("image-feature-extraction", model=model, image_processor=processor)
    source, _ = offline_hub["vit"]
    expected = _representation("vit", source, processor(image, return_tensors="pt")["pixel_values"])
    np.testing.assert_allclose(np.asarray(extractor(image)).reshape(-1), expected[0].numpy(), atol=1e-5)


def test_metric_refuses_a_repo_without_statistics(offline_hub):
    import evaluate

    from qscore_hf.evaluate_metric import METRIC_PATH

    metric = evaluate.load(str(METRIC_PATH))
    features = np.abs(np.random.default_rng(0).normal(size=(8, 32))).astype(np.float32)
    with pytest.raises(ValueError, match="org/tiny-vit has no activation statistics"):
        metric.compute(predictions=features, activation_stats="org/tiny-vit")


def test_backbone_only_vit_at_32px_resamples_cached_weights(tmp_path, monkeypatch, hub_cache):
    """Issue 11 item 14: a ViT name with --image-size 32 is built for 32 px, timm's weights resampled to it."""
    from timm.layers import resample_abs_pos_embed
    from safetensors.torch import save_file

    from qscore_hf.scoring import load_model

    name = "vit_tiny_patch16_224"
    torch.manual_seed(4)
    weights = timm.create_model(name, num_classes=7).state_dict()  # as released: 224 px, with a classifier
    hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    files = tmp_path / "files"
    files.mkdir()
    save_file(weights, files / "model.safetensors")
    hub_cache(tmp_path / "hub", hub_id, files, COMMIT)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model, identity = load_model(name, backbone_only=True, image_size=32)
    assert identity["weights"].startswith("timm pretrained") and model.config.backbone_config == {"img_size": 32}
    expected_pos = resample_abs_pos_embed(weights["pos_embed"], (2, 2), num_prefix_tokens=1)
    assert torch.equal(model.backbone.pos_embed, expected_pos)
    assert torch.equal(model.backbone.blocks[0].attn.qkv.weight, weights["blocks.0.attn.qkv.weight"])
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).features.shape == (2, 192)


def test_linear_eval_on_a_timm_repo(offline_hub, tmp_path):
    from qscore_hf.linear_eval import run_linear_eval

    report = run_linear_eval("org/timm-resnet", "digits", tmp_path / "out", train_split="train",
                             eval_split="train", max_samples=20, epochs=2, batch_size=20,
                             cache_dir=tmp_path / "cache", progress=False)  # fmt: skip
    assert report["model"] == "org/timm-resnet" and report["num_eval"] == 20
    assert 0.0 <= report["top1"] <= 1.0


def test_convert_command_imports_a_repo_with_statistics(offline_hub, tmp_path, pixels):
    from qscore_hf.cli import main

    out = tmp_path / "out"
    argv = ["convert", "--checkpoint", "org/tiny-vit", "--compute-stats", "digits", "--stats-max-samples", "16",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    model = QScoreModel.from_pretrained(out)
    assert int(model.activation_stats.num_samples) == 16
    assert model.config.backbone_source["repo_id"] == "org/tiny-vit"
    source, _ = offline_hub["vit"]
    assert (_features(model, pixels) - _representation("vit", source, pixels)).abs().max() < 1e-5
