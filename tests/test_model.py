"""Tests of the Hugging Face layer: backbones, QScoreModel, its saving/loading (local, Auto classes, Hub cache),
strict weight checks, atomic saves and the image processor.

Expectations are independent of the code under test: timm models built directly, a literal per-row NumPy
reading of SPEC §2-4 (below), hand-computed pixel values, round trips, or files read back with safetensors.
Images are scikit-learn's bundled digits, resized to 32 px by the model's image processor.
"""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import qscore_hf
from qscore_hf import (
    ActivationStats,
    QScoreConfig,
    QScoreImageProcessor,
    QScoreModel,
    QScoreModelOutput,
    WeightsMismatchError,
)
from qscore_hf.backbones import create_backbone
from qscore_hf.model_snapshot import record_weights_digest

EPS = 2.0  # with random weights eps=4 leaves almost no feature highly activating; 2 gives a proper subset D
SMALL = dict(backbone="resnet18_cifar", image_size=32, crop_pct=1.0, qscore_eps=EPS)


# ---------------------------------------------------------------------------------------------------------
# Independent NumPy reference of SPEC §2-4 (float64, row by row).
# ---------------------------------------------------------------------------------------------------------


def ref_highly_activating(features: np.ndarray, eps: float) -> np.ndarray:
    h = np.asarray(features, dtype=np.float64)
    mask = np.zeros(h.shape, dtype=bool)
    for i, row in enumerate(h):
        if row.max() == row.min():  # sigma = 0: empty L_i
            continue
        mask[i] = row > row.mean() + eps * row.std()  # population std
    return mask


def ref_discriminative(features: np.ndarray, eps: float, p_lo: float = 50.0, p_hi: float = 95.0) -> np.ndarray:
    freq = ref_highly_activating(features, eps).mean(axis=0)
    lo, hi = np.percentile(freq, [p_lo, p_hi])
    return (freq >= lo) & (freq <= hi) & (freq > 0)


def ref_qscore(features: np.ndarray, discriminative: np.ndarray | None, eps: float, normalize: str = "none") -> np.ndarray:
    h = np.asarray(features, dtype=np.float64)
    mask = ref_highly_activating(h, eps)
    keep = np.ones(h.shape[1], dtype=bool) if discriminative is None else discriminative
    out = np.zeros(h.shape[0])
    for i, row in enumerate(h):
        selected = mask[i] & keep
        if not selected.any():
            continue
        mu, sigma = row.mean(), row.std()
        terms = row[selected] - mu
        if normalize == "zscore":
            terms = terms / sigma
        q = terms.mean()
        if normalize == "l1":
            q = q / np.abs(row).sum()
        out[i] = q
    return out


def as_mask(indices: torch.Tensor, width: int) -> np.ndarray:
    mask = np.zeros(width, dtype=bool)
    mask[indices.numpy()] = True
    return mask


# ---------------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------------


def make_model(seed: int = 0, **overrides) -> QScoreModel:
    torch.manual_seed(seed)
    return QScoreModel(QScoreConfig(**{**SMALL, **overrides})).eval()


@pytest.fixture(scope="module")
def pixels(digits) -> torch.Tensor:
    """96 digits as the model's image processor makes them: (96, 3, 32, 32)."""
    images = digits[0][:96]
    processor = QScoreImageProcessor.from_model_config(QScoreConfig(**SMALL))
    out = processor(list(images), return_tensors="pt")["pixel_values"]
    assert out.shape == (96, 3, 32, 32)
    return out


@pytest.fixture(scope="module")
def scored(pixels):
    """A resnet18_cifar QScoreModel with activation statistics from 64 digits, and the features of those digits
    computed batch by batch in eval mode (the statistics are asserted in test_compute_activation_stats)."""
    model = make_model(seed=1, ssl_method="byol", pretraining_data="digits")
    model.compute_activation_stats([pixels[:32], pixels[32:64]], progress=False)
    with torch.no_grad():
        reference = torch.cat([model.backbone(pixels[:32]), model.backbone(pixels[32:64])]).numpy()
    return model, reference


def features_of(model: QScoreModel, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).features.numpy()


# ---------------------------------------------------------------------------------------------------------
# Backbones
# ---------------------------------------------------------------------------------------------------------


def test_cifar_stem_is_3x3_stride1_without_maxpool():
    model = make_model()
    conv = model.backbone.conv1
    assert isinstance(conv, nn.Conv2d)
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
    assert conv.in_channels == 3 and conv.out_channels == 64 and conv.bias is None
    assert isinstance(model.backbone.maxpool, nn.Identity)

    padded = create_backbone("resnet18_cifar", stem_padding=2)
    assert padded.conv1.padding == (2, 2) and padded.conv1.kernel_size == (3, 3)
    assert isinstance(padded.maxpool, nn.Identity)
    assert make_model(stem_padding=2).backbone.conv1.padding == (2, 2)


def test_cifar_stem_keeps_resolution_until_layer2():
    # 3x3 stride-1 stem and no max-pool: layer1 sees the full 32x32 (timm's resnet18 would give 8x8).
    backbone = create_backbone("resnet18_cifar").eval()
    x = torch.zeros(1, 3, 32, 32)
    with torch.no_grad():
        y = backbone.layer1(backbone.maxpool(backbone.act1(backbone.bn1(backbone.conv1(x)))))
    assert y.shape == (1, 64, 32, 32)


def test_resnet18_features_equal_timm(pixels):
    model = make_model(seed=3, backbone="resnet18")
    reference = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    state = {key[len("backbone.") :]: value for key, value in model.state_dict().items() if key.startswith("backbone.")}
    reference.load_state_dict(state, strict=True)
    x = pixels[:4]
    with torch.no_grad():
        expected = reference(x).numpy()
    got = features_of(model, x)
    assert got.shape == (4, 512)
    assert np.abs(got - expected).max() < 1e-6


@pytest.mark.parametrize("backbone, width", [("resnet18", 512), ("resnet18_cifar", 512), ("resnet50", 2048)])
def test_hidden_size_filled_in(backbone, width):
    config = QScoreConfig(backbone=backbone)
    assert config.hidden_size is None
    model = QScoreModel(config)
    assert model.config.hidden_size == width
    assert model.activation_stats.counts.shape == (width,)


def test_hidden_size_contradicting_backbone_is_an_error():
    with pytest.raises(ValueError, match="hidden_size"):
        QScoreModel(QScoreConfig(backbone="resnet18", hidden_size=2048))


@pytest.mark.parametrize("name", ["resnet_does_not_exist", "nonsense_net_cifar"])
def test_unknown_backbone_is_named(name):
    with pytest.raises(ValueError, match=name):
        QScoreModel(QScoreConfig(backbone=name))


# ---------------------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------------------


def test_forward_shapes(pixels):
    model = make_model()
    with torch.no_grad():
        out = model(pixels[:5], return_highly_activating=True)
    assert isinstance(out, QScoreModelOutput)
    assert out.features.shape == (5, 512)
    assert out.q_scores.shape == (5,) and out.q_scores.dtype == torch.float32
    assert out.highly_activating.shape == (5, 512) and out.highly_activating.dtype == torch.bool
    assert out.logits is None
    # ReLU features, pooled: non-negative.
    assert bool((out.features >= 0).all())


def test_forward_qscores_without_statistics_match_reference(pixels):
    model = make_model()
    assert model.discriminative_features() is None
    with torch.no_grad():
        out = model(pixels[:8], return_highly_activating=True)
    h = out.features.numpy()
    np.testing.assert_allclose(out.q_scores.numpy(), ref_qscore(h, None, EPS), rtol=1e-5, atol=1e-7)
    library = qscore_hf.qscore(out.features, model.discriminative_features(), EPS, "none")
    np.testing.assert_allclose(out.q_scores.numpy(), library.numpy(), rtol=1e-6, atol=1e-7)
    assert (out.q_scores > 0).all()  # every digit has highly activating features at eps=2


def test_forward_highly_activating_matches_numpy(pixels):
    model = make_model(qscore_eps=1.0)
    with torch.no_grad():
        out = model(pixels[:8], return_highly_activating=True)
    h = out.features.numpy().astype(np.float64)
    expected = h > h.mean(axis=1, keepdims=True) + 1.0 * h.std(axis=1, keepdims=True)
    assert expected.any(axis=1).all()
    np.testing.assert_array_equal(out.highly_activating.numpy(), expected)


@pytest.mark.parametrize("normalize", ["none", "zscore", "l1"])
def test_forward_uses_config_normalize(pixels, normalize):
    model = make_model(qscore_normalize=normalize)
    with torch.no_grad():
        out = model(pixels[:6])
    expected = ref_qscore(out.features.numpy(), None, EPS, normalize)
    np.testing.assert_allclose(out.q_scores.numpy(), expected, rtol=1e-5, atol=1e-8)


def test_forward_without_qscore(pixels):
    model = make_model()
    with torch.no_grad():
        out = model(pixels[:2], return_qscore=False)
    assert out.q_scores is None and out.highly_activating is None
    assert out.features.shape == (2, 512)


def test_forward_return_dict_false_gives_tuple(pixels):
    model = make_model()
    with torch.no_grad():
        out = model(pixels[:2], return_dict=False)
        reference = model(pixels[:2])
    assert isinstance(out, tuple)
    assert torch.equal(out[0], reference.features) and torch.equal(out[1], reference.q_scores)


def test_probe_head_logits(pixels):
    model = make_model(probe_head=True, num_labels=10)
    with torch.no_grad():
        out = model(pixels[:3])
    assert out.logits.shape == (3, 10)
    weight, bias = model.classifier.weight.detach().numpy(), model.classifier.bias.detach().numpy()
    np.testing.assert_allclose(out.logits.numpy(), out.features.numpy() @ weight.T + bias, rtol=1e-5, atol=1e-6)


def test_features_carry_gradients(pixels):
    model = make_model(probe_head=True, num_labels=10)
    out = model(pixels[:2])
    out.logits.sum().backward()
    assert model.backbone.conv1.weight.grad is not None and model.backbone.conv1.weight.grad.abs().sum() > 0
    assert not out.q_scores.requires_grad


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 3, 32, 32, 1)])
def test_forward_rejects_non_4d_pixel_values(shape):
    model = make_model()
    with pytest.raises(ValueError, match="pixel_values"):
        model(torch.zeros(shape))


# ---------------------------------------------------------------------------------------------------------
# Activation statistics
# ---------------------------------------------------------------------------------------------------------


def test_compute_activation_stats(scored):
    model, reference = scored
    counts = ref_highly_activating(reference, EPS).sum(axis=0)
    np.testing.assert_array_equal(model.activation_stats.counts.numpy(), counts)
    assert int(model.activation_stats.num_samples) == 64
    # the same statistics through the library's ActivationStats on the same features
    stats = ActivationStats(512, EPS).update(torch.from_numpy(reference))
    assert torch.equal(stats.counts, model.activation_stats.counts)


def test_compute_activation_stats_from_dataloader_restores_training_mode(pixels, scored):
    scored_model, _ = scored
    model = make_model(seed=1, ssl_method="byol", pretraining_data="digits")  # same weights as `scored`
    model.train()
    loader = torch.utils.data.DataLoader([{"pixel_values": x} for x in pixels[:64]], batch_size=16)
    stats = model.compute_activation_stats(loader, progress=False)
    assert model.training  # mode restored
    assert stats is model.activation_stats
    # Statistics are of eval-mode features (train-mode BatchNorm would use batch statistics and differ).
    assert torch.equal(model.activation_stats.counts, scored_model.activation_stats.counts)
    assert int(model.activation_stats.num_samples) == 64


def test_compute_activation_stats_resets_unless_asked(pixels, scored):
    scored_model, _ = scored
    model = make_model(seed=1)
    model.compute_activation_stats([pixels[:64]], progress=False)
    model.compute_activation_stats([pixels[:64]], progress=False)  # reset=True by default
    assert torch.equal(model.activation_stats.counts, scored_model.activation_stats.counts)
    model.compute_activation_stats([pixels[:64]], progress=False, reset=False)
    assert int(model.activation_stats.num_samples) == 128
    assert torch.equal(model.activation_stats.counts, 2 * scored_model.activation_stats.counts)


def test_qscores_use_discriminative_features(pixels, scored):
    model, reference = scored
    discriminative = model.discriminative_features()
    assert discriminative is not None
    expected_mask = ref_discriminative(reference, EPS)
    np.testing.assert_array_equal(as_mask(discriminative, 512), expected_mask)
    active = ref_highly_activating(reference, EPS).any(axis=0)
    assert 0 < expected_mask.sum() < active.sum()  # D is a proper, non-empty subset of the active features

    x = pixels[64:80]  # held-out digits
    with torch.no_grad():
        out = model(x)
    h = out.features.numpy()
    expected = ref_qscore(h, expected_mask, EPS)
    np.testing.assert_allclose(out.q_scores.numpy(), expected, rtol=1e-5, atol=1e-7)
    library = qscore_hf.qscore(out.features, discriminative, EPS, "none")
    np.testing.assert_allclose(out.q_scores.numpy(), library.numpy(), rtol=1e-6, atol=1e-7)
    # and D matters: the scores differ from the all-features ones
    assert not np.allclose(expected, ref_qscore(h, None, EPS))


# ---------------------------------------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------------------------------------


def _assert_no_pickle(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert path.suffix not in {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}, path
            head = path.read_bytes()[:4]
            assert not head.startswith(b"\x80"), f"{path} looks like a pickle"
            assert not head.startswith(b"PK\x03\x04"), f"{path} looks like a torch zip checkpoint"


def test_round_trip(tmp_path, pixels, scored):
    model = copy.deepcopy(scored[0])
    model.config.image_mean = [0.1, 0.2, 0.3]
    model.config.image_std = [0.4, 0.5, 0.6]
    model.config.qscore_regularized = True
    model.config.qscore_regularization = {"lambda1": 1e-4, "lambda2": 1e-4}
    folder = tmp_path / "saved"
    model.save_pretrained(folder)

    names = {path.name for path in folder.iterdir()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json"} <= names
    _assert_no_pickle(folder)

    loaded = QScoreModel.from_pretrained(folder)
    assert not loaded.training
    config = loaded.config
    assert config.backbone == "resnet18_cifar" and config.stem_padding == 1
    assert config.ssl_method == "byol" and config.pretraining_data == "digits"
    assert config.image_size == 32 and config.crop_pct == 1.0
    assert config.image_mean == [0.1, 0.2, 0.3] and config.image_std == [0.4, 0.5, 0.6]
    assert config.qscore_eps == EPS and config.qscore_normalize == "none"
    assert config.qscore_p_lo == 50.0 and config.qscore_p_hi == 95.0
    assert config.qscore_regularized is True and config.qscore_regularization == {"lambda1": 1e-4, "lambda2": 1e-4}
    assert config.hidden_size == 512

    assert torch.equal(loaded.activation_stats.counts, model.activation_stats.counts)
    assert int(loaded.activation_stats.num_samples) == 64
    x = pixels[64:72]
    with torch.no_grad():
        before, after = model(x), loaded(x)
    assert torch.equal(before.features, after.features)
    assert torch.equal(before.q_scores, after.q_scores)
    assert torch.equal(loaded.discriminative_features(), model.discriminative_features())

    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
        assert {"activation_stats.counts", "activation_stats.num_samples"} <= keys
        np.testing.assert_array_equal(handle.get_tensor("activation_stats.counts").numpy(), model.activation_stats.counts.numpy())
        assert int(handle.get_tensor("activation_stats.num_samples")) == 64
        assert "backbone.conv1.weight" in keys and handle.get_tensor("backbone.conv1.weight").shape == (64, 3, 3, 3)
    assert not any(key.startswith("classifier.") for key in keys)

    # the saved image processor has the saved normalization and input size
    processor_config = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor_config["image_mean"] == [0.1, 0.2, 0.3] and processor_config["image_std"] == [0.4, 0.5, 0.6]
    assert processor_config["crop_size"] == {"height": 32, "width": 32}


def test_round_trip_with_probe_head(tmp_path, pixels):
    model = make_model(probe_head=True, num_labels=10)
    model.save_pretrained(tmp_path / "probe")
    loaded = QScoreModel.from_pretrained(tmp_path / "probe")
    with torch.no_grad():
        assert torch.equal(model(pixels[:2]).logits, loaded(pixels[:2]).logits)


def test_auto_classes(tmp_path):
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    model = make_model(seed=5)
    folder = tmp_path / "auto"
    model.save_pretrained(folder)
    assert isinstance(AutoConfig.from_pretrained(folder), QScoreConfig)
    auto_model = AutoModel.from_pretrained(folder)
    assert isinstance(auto_model, QScoreModel)
    assert torch.equal(auto_model.backbone.conv1.weight, model.backbone.conv1.weight)
    processor = AutoImageProcessor.from_pretrained(folder)
    assert isinstance(processor, QScoreImageProcessor)
    gray = np.full((8, 8), 255, dtype=np.uint8)
    out = processor(gray, return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 32, 32)
    expected = (1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out[0, :, 0, 0].numpy(), expected, rtol=1e-5)


_HUB_SCRIPT = r"""
import sys
import numpy as np
import torch
import huggingface_hub.constants as constants
import qscore_hf
from qscore_hf import QScoreModel, QScoreImageProcessor
from transformers import AutoModel, AutoImageProcessor

cache, x_path, features_path, scores_path = sys.argv[1:5]
assert constants.HF_HUB_CACHE == cache, (constants.HF_HUB_CACHE, cache)
assert constants.HF_HUB_OFFLINE
x = torch.from_numpy(np.load(x_path))
expected_features, expected_scores = np.load(features_path), np.load(scores_path)
for loader in (QScoreModel, AutoModel):
    model = loader.from_pretrained("org/name")
    assert type(model) is QScoreModel, type(model)
    with torch.no_grad():
        out = model(x)
    assert np.array_equal(out.features.numpy(), expected_features), loader
    assert np.array_equal(out.q_scores.numpy(), expected_scores), loader
    print("LOADED", loader.__name__, int(model.activation_stats.num_samples))
assert isinstance(AutoImageProcessor.from_pretrained("org/name"), QScoreImageProcessor)
print("PROCESSOR OK")
for loader in (QScoreModel, AutoModel):
    try:
        loader.from_pretrained("org/missing")
    except Exception as error:
        print("MISSING", loader.__name__, type(error).__name__, isinstance(error, OSError))
    else:
        print("MISSING", loader.__name__, "LOADED")
"""


def test_load_from_hub_cache_offline(tmp_path, pixels, scored, offline_env, hub_cache):
    model, _ = scored
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    hf_home = tmp_path / "hf"
    commit = hashlib.sha1(b"qscore-hf test commit").hexdigest()
    assert len(commit) == 40
    snapshot = hub_cache(hf_home / "hub", "org/name", saved, commit)
    assert (snapshot / "model.safetensors").is_symlink()

    x = pixels[80:84]
    with torch.no_grad():
        out = model(x)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "features.npy", out.features.numpy())
    np.save(tmp_path / "scores.npy", out.q_scores.numpy())
    run = subprocess.run(
        [sys.executable, "-c", _HUB_SCRIPT, str(hf_home / "hub"), *(str(tmp_path / n) for n in ("x.npy", "features.npy", "scores.npy"))],
        cwd=tmp_path,
        env=offline_env(HF_HOME=str(hf_home)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    lines = run.stdout.splitlines()
    assert "LOADED QScoreModel 64" in lines and "LOADED AutoModel 64" in lines
    assert "PROCESSOR OK" in lines
    assert "MISSING QScoreModel OSError True" in lines, run.stdout
    assert "MISSING AutoModel OSError True" in lines, run.stdout


# ---------------------------------------------------------------------------------------------------------
# Strict loading
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def saved_folder(tmp_path) -> tuple[QScoreModel, Path]:
    model = make_model(seed=7)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    return model, folder


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_wrong_backbone_in_config_is_named(saved_folder):
    _, folder = saved_folder
    _edit_config(folder, backbone="resnet18")
    with pytest.raises(WeightsMismatchError, match=r"backbone\.conv1\.weight"):
        QScoreModel.from_pretrained(folder)


def test_wider_backbone_in_config_is_a_weights_mismatch(saved_folder):
    # A resnet50 config on resnet18 weights: many tensors mismatch; the error is a ValueError subclass.
    _, folder = saved_folder
    _edit_config(folder, backbone="resnet50_cifar", hidden_size=2048)
    with pytest.raises(ValueError) as info:
        QScoreModel.from_pretrained(folder)
    assert isinstance(info.value, WeightsMismatchError)


def test_missing_tensor_is_named(saved_folder):
    _, folder = saved_folder
    weights = load_file(str(folder / "model.safetensors"))
    assert "backbone.layer1.0.bn1.weight" in weights
    del weights["backbone.layer1.0.bn1.weight"]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    record_weights_digest(folder)  # edited on purpose: the config names the new weights (else: a mixed save)
    with pytest.raises(WeightsMismatchError, match=r"backbone\.layer1\.0\.bn1\.weight"):
        QScoreModel.from_pretrained(folder)


def test_unexpected_tensor_is_named(saved_folder):
    _, folder = saved_folder
    weights = load_file(str(folder / "model.safetensors"))
    weights["backbone.extra_head.weight"] = torch.zeros(3)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    record_weights_digest(folder)  # edited on purpose: the config names the new weights (else: a mixed save)
    with pytest.raises(WeightsMismatchError, match=r"backbone\.extra_head\.weight"):
        QScoreModel.from_pretrained(folder)


def test_backbone_only_checkpoint_loads_into_probe_head(saved_folder, pixels):
    model, folder = saved_folder
    with torch.no_grad():
        expected = model(pixels[:3]).features
    loaded = QScoreModel.from_pretrained(folder, probe_head=True, num_labels=10)
    assert loaded.config.probe_head and isinstance(loaded.classifier, nn.Linear)
    with torch.no_grad():
        out = loaded(pixels[:3])
    assert torch.equal(out.features, expected)
    assert out.logits.shape == (3, 10)

    _edit_config(folder, probe_head=True, id2label={str(i): str(i) for i in range(10)})
    assert QScoreModel.from_pretrained(folder).classifier.out_features == 10


def test_probe_head_checkpoint_into_backbone_only_config_is_named(tmp_path):
    make_model(probe_head=True, num_labels=10).save_pretrained(tmp_path / "probe")
    _edit_config(tmp_path / "probe", probe_head=False)
    with pytest.raises(WeightsMismatchError, match=r"classifier\.weight"):
        QScoreModel.from_pretrained(tmp_path / "probe")


# ---------------------------------------------------------------------------------------------------------
# Atomic save
# ---------------------------------------------------------------------------------------------------------


def test_save_into_existing_folder_keeps_other_files(saved_folder):
    _, folder = saved_folder
    (folder / "notes.txt").write_text("training log")
    other = make_model(seed=8)
    other.save_pretrained(folder)
    assert (folder / "notes.txt").read_text() == "training log"
    weights = load_file(str(folder / "model.safetensors"))
    assert torch.equal(weights["backbone.conv1.weight"], other.backbone.conv1.weight.detach())
    assert sorted(p.name for p in folder.parent.iterdir()) == ["model"]  # no temporary or backup folder left


def test_failed_save_leaves_folder_unchanged(saved_folder, monkeypatch):
    _, folder = saved_folder
    (folder / "notes.txt").write_text("keep me")
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    parent_before = sorted(p.name for p in folder.parent.iterdir())

    def fail(self, *args, **kwargs):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(QScoreImageProcessor, "save_pretrained", fail)
    other = make_model(seed=9)
    with pytest.raises(RuntimeError, match="simulated"):
        other.save_pretrained(folder)
    after = {path.name: path.read_bytes() for path in folder.iterdir()}
    assert after == before
    assert sorted(p.name for p in folder.parent.iterdir()) == parent_before


def test_failed_first_save_creates_nothing(tmp_path, monkeypatch):
    def fail(self, *args, **kwargs):
        raise RuntimeError("simulated")

    monkeypatch.setattr(QScoreImageProcessor, "save_pretrained", fail)
    with pytest.raises(RuntimeError):
        make_model().save_pretrained(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# Image processor
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def gray_processor() -> QScoreImageProcessor:
    config = QScoreConfig(image_size=32, crop_pct=1.0, image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25))
    return QScoreImageProcessor.from_model_config(config)


def test_processor_gray_constant(gray_processor):
    expected = (128 / 255 - 0.5) / 0.25
    image = np.full((40, 50), 128, dtype=np.uint8)
    variants = (image, Image.fromarray(image, mode="L"), image[:, :, None], [image, image[:, :, None]], torch.from_numpy(image))
    for variant in variants:
        out = gray_processor(variant, return_tensors="pt")["pixel_values"]
        assert out.shape[1:] == (3, 32, 32)
        assert out.dtype == torch.float32
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


def test_processor_rgb_per_channel_normalization():
    processor = QScoreImageProcessor.from_model_config(
        QScoreConfig(image_size=32, crop_pct=1.0, image_mean=(0.1, 0.2, 0.3), image_std=(0.5, 0.25, 0.125))
    )
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 0, 51, 255
    out = processor(Image.fromarray(image), return_tensors="pt")["pixel_values"][0]
    expected = [(0 - 0.1) / 0.5, (0.2 - 0.2) / 0.25, (1.0 - 0.3) / 0.125]
    for channel, value in enumerate(expected):
        np.testing.assert_allclose(out[channel].numpy(), value, atol=1e-5)


def test_processor_non_square_resizes_shortest_edge_then_crops(gray_processor):
    tiny = np.array([[0, 100, 200], [50, 150, 250]], dtype=np.uint8)  # 2 x 3
    assert gray_processor(tiny, return_tensors="pt")["pixel_values"].shape == (1, 3, 32, 32)
    assert gray_processor(tiny, do_center_crop=False, return_tensors="pt")["pixel_values"].shape == (1, 3, 32, 48)
    tall = np.arange(10, dtype=np.uint8).reshape(5, 2) * 20  # 5 x 2: shortest edge 2 -> 32, long edge 5 -> 80
    assert gray_processor(tall, do_center_crop=False, return_tensors="pt")["pixel_values"].shape == (1, 3, 80, 32)
    assert gray_processor(tall, return_tensors="pt")["pixel_values"].shape == (1, 3, 32, 32)

    # The crop is centred: a 20 x 60 image whose middle third is white is resized to 32 x 96 (white band at
    # columns 32..64 of 96, exactly the centre crop), so the crop's inner columns are all white.
    band = np.zeros((20, 60), dtype=np.uint8)
    band[:, 20:40] = 255
    out = gray_processor(band, return_tensors="pt")["pixel_values"][0]
    white = (1.0 - 0.5) / 0.25
    np.testing.assert_allclose(out[:, :, 4:28].numpy(), white, atol=1e-5)
    black = (0.0 - 0.5) / 0.25
    out_left = gray_processor(band[:, :20].copy(), return_tensors="pt")["pixel_values"][0]
    np.testing.assert_allclose(out_left.numpy(), black, atol=1e-5)


@pytest.mark.parametrize("shape, expected", [((3, 2), (48, 32)), ((3, 48), (32, 512)), ((1, 40), (32, 1280))])
def test_processor_gray_array_of_height_1_or_3(gray_processor, shape, expected):
    image = np.full(shape, 128, dtype=np.uint8)
    image[:, : shape[1] // 2] = 0  # left half black, right half gray
    out = gray_processor(image, do_center_crop=False, return_tensors="pt")["pixel_values"][0]
    assert out.shape == (3, *expected)
    # a gray image stays gray: the three channels are equal
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_processor_default_config_resizes_to_256_and_crops_224():
    processor = QScoreImageProcessor.from_model_config(QScoreConfig())
    image = np.full((300, 400, 3), 10, dtype=np.uint8)
    resized = processor(image, do_center_crop=False, return_tensors="pt")["pixel_values"]
    assert resized.shape == (1, 3, 256, round(400 * 256 / 300))
    assert processor(image, return_tensors="pt")["pixel_values"].shape == (1, 3, 224, 224)


def test_model_image_processor_matches_config(scored):
    model, _ = scored
    processor = model.image_processor()
    assert isinstance(processor, QScoreImageProcessor)
    image = np.full((8, 8), 0, dtype=np.uint8)
    out = processor(image, return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 32, 32)
    expected = -np.array([0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out[0, :, 5, 5].numpy(), expected, rtol=1e-5)


def test_hub_id_without_network_reads_the_cache_or_fails_at_once(saved_folder, tmp_path, monkeypatch, hub_cache):
    # A machine without network: the Hub's host name does not resolve, and offline mode is not set. huggingface_hub
    # would retry each file five times with back-off (minutes); the cache must answer instead, without a request.
    import socket

    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers

    model, folder = saved_folder
    cache = tmp_path / "hub"
    hub_cache(cache, "org/cached", folder, hashlib.sha1(b"no network").hexdigest())
    resolved = []

    def no_dns(host, *args, **kwargs):
        resolved.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    build_hf_headers()  # huggingface_hub asks the Hub once per process for its user-agent registry: done here
    resolved.clear()
    loaded = QScoreModel.from_pretrained("org/cached", cache_dir=cache)
    assert resolved == ["huggingface.co"]  # our one check; any request would have resolved the name again
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name

    with pytest.raises(OSError, match=r"org/absent: no local folder, not in the Hugging Face cache.*does not resolve"):
        QScoreModel.from_pretrained("org/absent", cache_dir=cache)
    assert resolved == ["huggingface.co"] * 2
