"""Hardening (issue 21) of what reads a model repo: crafted repos in a Hub cache laid out as huggingface_hub lays it
out (``models--org--name/{blobs, refs/main, snapshots/<commit>}``) and in local folders.

Expectations are independent of the code under test: a marker file that code shipped in a repo would write and that
must not appear, the weights of the repo's own file (not those another file holds), and error lines that name the
file and field.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models import save_for_hf
from transformers import ViTConfig, ViTImageProcessor, ViTModel

import huggingface_hub.constants as hub_constants
from qscore_hf import QScoreModel

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::qscore_hf.NegativeFeaturesWarning"),
]

COMMIT = hashlib.sha1(b"qscore-hf hardening").hexdigest()
TIMM_ARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
# Code a malicious repo ships: importing it writes the marker named by $MARKER.
_EVIL_CODE = """import os, pathlib
pathlib.Path(os.environ.get("MARKER", "marker")).write_text("remote code ran")
from transformers import PretrainedConfig, PreTrainedModel
class EvilConfig(PretrainedConfig):
    model_type = "evilnet"
class EvilModel(PreTrainedModel):
    config_class = EvilConfig
"""
_AUTO_MAP = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel",
             "AutoImageProcessor": "evil.EvilProcessor"}  # fmt: skip


def _vit_folder(folder: Path, **config: object) -> Path:
    torch.manual_seed(0)
    settings = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, image_size=16,
                    patch_size=8)  # fmt: skip
    ViTModel(ViTConfig(**{**settings, **config})).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


def _evil_folder(folder: Path, model_type: str) -> Path:
    """A repo whose config.json names its own code in auto_map (``model_type`` unknown to transformers, or not)."""
    _vit_folder(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type=model_type, auto_map=_AUTO_MAP)
    (folder / "config.json").write_text(json.dumps(config))
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    processor["auto_map"] = {"AutoImageProcessor": "evil.EvilProcessor"}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    (folder / "evil.py").write_text(_EVIL_CODE)
    return folder


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty Hub cache for this test, offline (huggingface_hub reads its constants at import: patch them too)."""
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub))
    return hub


# ------------------------------------------------------------------------------------ 1: no remote code, no prompt
_LOAD = """
import sys
from qscore_hf import QScoreModel
from qscore_hf.cli import main
for name in sys.argv[1:]:
    try:
        QScoreModel.from_pretrained(name)
    except ValueError as error:
        print("REFUSED:", error)
    print("info exit", main(["info", name]))
"""


@pytest.mark.parametrize("model_type", ["evilnet", "vit"])
def test_repo_code_never_runs_and_nothing_prompts(tmp_path, offline_env, hub_cache, model_type):
    """By Hub id and by local folder, through the API and `qscore-hf info`, with stdin answering "y" to any prompt:
    no marker, no prompt; an unknown model type is refused in one line, a known one loads with transformers' class."""
    folder = _evil_folder(tmp_path / "evil", model_type)
    hub = tmp_path / "hub"
    hub_cache(hub, "org/evil", folder, COMMIT)
    marker = tmp_path / "marker"
    env = offline_env(HF_HUB_CACHE=str(hub), HF_HOME=str(tmp_path / "hf"), MARKER=str(marker))
    run = subprocess.run([sys.executable, "-c", _LOAD, "org/evil", str(folder)], input="y\n" * 8, env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-2000:]
    assert not marker.exists(), f"code from the repo ran:\n{output[-2000:]}"
    assert "[y/N]" not in output and "custom code" not in output, output[-2000:]
    if model_type == "evilnet":  # API and CLI, by id and by folder: each refused in one line
        refusals = [line for line in output.splitlines() if "'evilnet' is not supported" in line]
        assert len(refusals) == 4, output[-2000:]
        assert all("config.json" in line and "never run" in line for line in refusals), refusals
        assert output.count("info exit 1") == 2, output[-2000:]
    else:
        assert "REFUSED" not in output and output.count("info exit 0") == 2, output[-2000:]


# ------------------------------------------------------------------------------------ 2: timm loads its own weights
def _timm_repo(folder: Path, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0, **TIMM_ARGS)
    save_for_hf(model, folder, model_args=TIMM_ARGS, safe_serialization=True)
    return model.state_dict()


@pytest.mark.parametrize("key", ["pretrained_cfg_overlay", "checkpoint_path", "pretrained_cfg"])
def test_timm_model_args_cannot_redirect_the_weights(tmp_path, offline_cache, hub_cache, key):
    own = _timm_repo(tmp_path / "repo", seed=0)
    other = _timm_repo(tmp_path / "other", seed=1)
    other_file = str(tmp_path / "other" / "model.safetensors")
    config = json.loads((tmp_path / "repo" / "config.json").read_text())
    config["model_args"][key] = other_file if key == "checkpoint_path" else {"file": other_file}
    (tmp_path / "repo" / "config.json").write_text(json.dumps(config))
    hub_cache(offline_cache, "org/timm-overlay", tmp_path / "repo", COMMIT)
    with pytest.raises(ValueError, match=rf"config\.json: model_args\.{key} is not an argument of the architecture"):
        QScoreModel.from_pretrained("org/timm-overlay")

    del config["model_args"][key]  # the same repo without the redirection loads its own weights
    config["pretrained_cfg"]["file"] = other_file  # ... even when its pretrained_cfg names another file
    (tmp_path / "repo" / "config.json").write_text(json.dumps(config))
    loaded = QScoreModel.from_pretrained(tmp_path / "repo").backbone.state_dict()
    name = "patch_embed.proj.weight"
    assert not torch.equal(own[name], other[name])
    assert torch.equal(loaded[name], own[name])


# ------------------------------------------------------------------------------- 3: strict transformers imports
def _edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_config_with_fewer_layers_than_the_weights_is_refused(tmp_path, offline_cache, hub_cache):
    folder = _vit_folder(tmp_path / "vit")
    _edit_config(folder, num_hidden_layers=0)
    hub_cache(offline_cache, "org/fewer-layers", folder, COMMIT)
    for name in ("org/fewer-layers", folder):
        with pytest.raises(ValueError, match=r"^[^\n]*config.json's ViTModel \(unexpected tensors: layers\.0\.[^\n]*$"):
            QScoreModel.from_pretrained(name)


def test_a_stray_tensor_is_refused(tmp_path):
    folder = _vit_folder(tmp_path / "vit")
    weights = load_file(folder / "model.safetensors")
    save_file({**weights, "stray.weight": torch.ones(3)}, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"unexpected tensors: stray\.weight\)"):
        QScoreModel.from_pretrained(folder)


def test_shape_disagreement_is_named_in_one_line(tmp_path):
    folder = _vit_folder(tmp_path / "vit")
    _edit_config(folder, intermediate_size=32)
    with pytest.raises(ValueError) as caught:
        QScoreModel.from_pretrained(folder)
    message = str(caught.value)
    assert "\n" not in message and "look at the above report" not in message
    assert "tensors of another shape: " in message and "saved (16, 16), config needs (32, 16)" in message


def test_a_classification_checkpoint_drops_its_head_only(tmp_path):
    """classifier.* is dropped by rule; the features are the checkpoint's own ViT's CLS token."""
    from transformers import ViTForImageClassification

    torch.manual_seed(0)
    source = ViTForImageClassification(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                 intermediate_size=16, image_size=16, patch_size=8, num_labels=3))  # fmt: skip
    source.save_pretrained(tmp_path / "cls")
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(tmp_path / "cls")
    model = QScoreModel.from_pretrained(tmp_path / "cls").eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = source.eval().vit(pixel_values=x).last_hidden_state[:, 0]
        torch.testing.assert_close(model(x).features, expected)


# ------------------------------------------------------------------ 10: crafted repos end in one line naming the file
class _RunsCode:
    """Unpickling this calls os.system (a weights file that would run code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _crafted(case: str, folder: Path, marker: Path) -> str:
    """Write the repo of ``case`` into ``folder``; returns what its one-line error must say."""
    if case.startswith("timm"):
        _timm_repo(folder, seed=0)
    elif case.startswith("own"):
        from qscore_hf import QScoreConfig

        QScoreModel(QScoreConfig(backbone="resnet18_cifar", image_size=16, crop_pct=1.0)).save_pretrained(folder)
    else:
        _vit_folder(folder)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    weights = folder / "model.safetensors"
    if case == "config-list":
        config_file.write_text("[1, 2]")
        return "config.json holds a JSON list, not an object"
    if case == "config-not-json":
        config_file.write_text("{'architecture': ")
        return "config.json is not valid JSON"
    if case == "timm-architecture-list":
        config["architecture"] = ["vit_tiny_patch16_224"]
        config_file.write_text(json.dumps(config))
        return "config.json: architecture must be a timm model name"
    if case == "timm-unknown-model-arg":
        config["model_args"]["wings"] = 2
        config_file.write_text(json.dumps(config))
        return "config.json: model_args do not build timm's vit_tiny_patch16_224"
    if case == "timm-model-args-list":
        config["model_args"] = [32, 8]
        config_file.write_text(json.dumps(config))
        return "config.json: model_args must be an object"
    if case == "timm-other-architecture":
        config["model_args"]["embed_dim"] = 64
        config_file.write_text(json.dumps(config))
        return "model.safetensors: the weights do not fit timm's vit_tiny_patch16_224"
    if case == "timm-mean-abc":
        config["pretrained_cfg"]["mean"] = "abc"
        config_file.write_text(json.dumps(config))
        return "config.json: pretrained_cfg.mean must be a number or a list of numbers"
    if case in ("transformers-truncated", "timm-truncated", "own-truncated"):
        weights.write_bytes(weights.read_bytes()[:200])
        return "model.safetensors is not a readable safetensors file"
    if case == "transformers-pickle":
        weights.unlink()
        torch.save({"weight": _RunsCode(marker)}, folder / "pytorch_model.bin")
        return "pytorch_model.bin was refused as unsafe"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["config-list", "config-not-json", "timm-architecture-list", "timm-unknown-model-arg",
                                  "timm-model-args-list", "timm-other-architecture", "timm-mean-abc",
                                  "transformers-truncated", "timm-truncated", "own-truncated",
                                  "transformers-pickle"])  # fmt: skip
def test_crafted_hub_repos_end_in_one_line_naming_the_file(tmp_path, offline_cache, hub_cache, case):
    marker = tmp_path / "marker"
    expected = _crafted(case, tmp_path / "repo", marker)
    hub_cache(offline_cache, f"org/{case}", tmp_path / "repo", COMMIT)
    with pytest.raises(ValueError) as error:
        QScoreModel.from_pretrained(f"org/{case}")
    message = str(error.value)
    assert "\n" not in message and expected in message, message
    assert str(offline_cache) in message  # the file is named by its place in the cache
    assert not marker.exists()
