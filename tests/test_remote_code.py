"""Saved QScoreModel folders load with ``trust_remote_code=True`` in a process where qscore_hf cannot be imported.

qscore_hf is installed (editable) for every interpreter here, so the subprocess actively blocks it with a
``sys.meta_path`` finder; the expectations are the features and scores of the in-process model.
"""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

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


_FUSED_SCRIPT = r"""
import sys, warnings

class Block:
    def __init__(self, names):
        self.names = names
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ImportError(f"{name} is blocked in this test")

blocked = sys.argv[3].split(",")
sys.meta_path.insert(0, Block(blocked))
import numpy as np
import torch
from transformers import AutoModel

model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
score = sys.modules[type(model).__module__.rpartition(".")[0] + ".score"]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    q = score.qscore(torch.from_numpy(np.load(sys.argv[2])), eps=2.0)
np.save(sys.argv[2] + ".q.npy", q.numpy())
kernel = score._fused_module
print("PATH", "fused" if kernel and kernel.__name__.endswith(".fused") else "eager")
print("WARNED", any("kernel is unavailable" in str(w.message) for w in caught))
"""


@pytest.mark.parametrize("blocked", [("qscore_hf",), ("qscore_hf", "numba")])
def test_saved_folder_scores_on_the_fused_path_without_qscore_hf(tmp_path, offline_env, blocked):
    """save_pretrained ships fused.py: with numba the remote code scores on the kernel, without it on the eager path
    (and says so); the scores are those of a float64 reference either way."""
    folder = tmp_path / "model"
    _cifar_resnet(tmp_path).save_pretrained(folder)
    assert (folder / "fused.py").is_file()
    features = np.random.default_rng(0).exponential(size=(600, 2048)).astype(np.float32)  # 2**20 elements and more
    np.save(tmp_path / "x.npy", features)
    env = offline_env(HF_HOME=str(tmp_path / "hf"), HF_MODULES_CACHE=str(tmp_path / "modules"))
    env.pop("PYTHONPATH", None)
    run = subprocess.run([sys.executable, "-c", _FUSED_SCRIPT, str(folder), str(tmp_path / "x.npy"), ",".join(blocked)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    with_numba = "numba" not in blocked
    assert f"PATH {'fused' if with_numba else 'eager'}" in run.stdout, run.stdout + run.stderr[-2000:]
    assert f"WARNED {not with_numba}" in run.stdout, run.stdout
    values = features.astype(np.float64)
    mu, sigma = values.mean(axis=1, keepdims=True), values.std(axis=1, keepdims=True)
    selected = values > mu + 2.0 * sigma
    expected = np.where(selected, values - mu, 0).sum(axis=1) / np.maximum(selected.sum(axis=1), 1)
    np.testing.assert_allclose(np.load(tmp_path / "x.npy.q.npy"), expected, rtol=1e-6)


@pytest.mark.parametrize("statement", ["from . import helper", "    from .zoo.loading import resolve"])
def test_imports_transformers_does_not_follow_are_refused(tmp_path, monkeypatch, statement):
    """Python resolves both forms, transformers' remote-code loader does not: saving must fail, not the loading."""
    import qscore_hf.remote_code as remote_code

    for module in {value.split(".")[0] for value in (*AUTO_MAP.values(), *PROCESSOR_AUTO_MAP.values())}:
        (tmp_path / f"{module}.py").write_text("x = 1\n")
    (tmp_path / "modeling_qscore.py").write_text(f"def load():\n{statement}\n" if statement[0] == " " else statement)
    monkeypatch.setattr(remote_code, "_PACKAGE", tmp_path)
    with pytest.raises(ValueError, match=r"modeling_qscore\.py has `from \..*`, which transformers' remote-code loader"):
        remote_code.write_remote_code(tmp_path / "out")
