"""Saved QScoreModel folders load with ``trust_remote_code=True`` in a process where qscore_hf cannot be imported.

qscore_hf is installed (editable) for every interpreter here, so the subprocess actively blocks it with a
``sys.meta_path`` finder; the expectations are the features and scores of the in-process model.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import ViTConfig, ViTImageProcessor, ViTModel

from qscore_hf import QScoreConfig, QScoreModel
from qscore_hf.remote_code import AUTO_MAP, PROCESSOR_AUTO_MAP

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::qscore_hf.NegativeFeaturesWarning"),
]

_SCRIPT = r"""
import sys

class BlockQScoreHF:
    def find_spec(self, name, path=None, target=None):
        if name == "qscore_hf" or name.startswith("qscore_hf."):
            raise ImportError(f"{name} is blocked in this test")

sys.meta_path.insert(0, BlockQScoreHF())
try:
    import qscore_hf
except ImportError:
    print("QSCORE_HF BLOCKED")
import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, pipeline

x_path, *folders = sys.argv[1:]
image = Image.fromarray(np.arange(40 * 40 * 3, dtype=np.uint8).reshape(40, 40, 3))
for folder in folders:
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__name__ == "QScoreModel", type(model)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    assert type(processor).__name__ == "QScoreImageProcessor", type(processor)
    with torch.no_grad():
        out = model(torch.from_numpy(np.load(x_path)))
        direct = model(**processor(image, return_tensors="pt")).features[0].numpy()
    extractor = pipeline("image-feature-extraction", model=folder, trust_remote_code=True)
    piped = np.asarray(extractor(image)).reshape(-1)
    np.savez(f"{folder}.npz", features=out.features.numpy(), q_scores=out.q_scores.numpy(), piped=piped, direct=direct)
    print("REMOTE OK", folder, int(model.activation_stats.num_samples))
"""


def _vit_model(tmp_path) -> QScoreModel:
    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=32, patch_size=8))  # fmt: skip
    vit.save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    return QScoreModel.from_pretrained(tmp_path / "vit", qscore_eps=1.0)


def _timm_vit_model(tmp_path) -> QScoreModel:
    torch.manual_seed(0)
    args = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
    config = QScoreConfig(backbone="vit_tiny_patch16_224", backbone_config=args, image_size=32, qscore_eps=1.0)
    return QScoreModel(config)


def _cifar_resnet(tmp_path) -> QScoreModel:
    torch.manual_seed(0)
    return QScoreModel(QScoreConfig(backbone="resnet18_cifar", image_size=32, crop_pct=1.0, qscore_eps=2.0))


def test_remote_code_without_qscore_hf(tmp_path, offline_env):
    """A transformers ViT, a timm ViT and a CIFAR-stem ResNet, each saved with statistics, load in one subprocess."""
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    np.save(tmp_path / "x.npy", x.numpy())
    reference = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected, folders = {}, []
    for make in (_vit_model, _timm_vit_model, _cifar_resnet):
        model = make(tmp_path).eval()
        model.compute_activation_stats([reference], progress=False)
        folder = tmp_path / make.__name__.strip("_")
        model.save_pretrained(folder)
        assert json.loads((folder / "config.json").read_text())["auto_map"] == AUTO_MAP
        assert json.loads((folder / "preprocessor_config.json").read_text())["auto_map"] == PROCESSOR_AUTO_MAP
        with torch.no_grad():
            expected[folder] = model(x)
        folders.append(folder)

    env = offline_env(HF_HOME=str(tmp_path / "hf"), HF_MODULES_CACHE=str(tmp_path / "modules"))
    env.pop("PYTHONPATH", None)
    run = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path / "x.npy"), *map(str, folders)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    assert "QSCORE_HF BLOCKED" in run.stdout, run.stdout
    for folder in folders:
        assert f"REMOTE OK {folder} 16" in run.stdout, run.stdout
        got = np.load(f"{folder}.npz")
        np.testing.assert_array_equal(got["features"], expected[folder].features.numpy())
        np.testing.assert_array_equal(got["q_scores"], expected[folder].q_scores.numpy())
        np.testing.assert_allclose(got["piped"], got["direct"], atol=1e-6)
