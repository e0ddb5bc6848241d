"""Hardening (issue 33, item 7): a load while another process re-saves or overwrites the folder reads one consistent
snapshot (config, weights and statistics of one save) or fails in one line; never a mix, never a SIGBUS."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from qscore_hf import QScoreConfig, QScoreModel
from qscore_hf.model_snapshot import FolderChangedError

TINY = dict(backbone="test_resnet", image_size=32, crop_pct=1.0)


def _model(eps: float, fill: float) -> QScoreModel:
    """A tiny model whose config (eps) and weights (every tensor = fill) both say which save it is."""
    model = QScoreModel(QScoreConfig(**TINY, qscore_eps=eps))
    with torch.no_grad():
        for tensor in model.backbone.state_dict().values():
            if tensor.is_floating_point():
                tensor.fill_(fill)
    return model


def _which(model: QScoreModel) -> tuple[float, float]:
    return model.config.qscore_eps, float(next(iter(model.backbone.parameters())).detach().flatten()[0])


def test_a_config_of_one_save_with_the_weights_of_another_is_refused(tmp_path):
    _model(2.0, 0.25).save_pretrained(tmp_path / "a")
    _model(3.0, 0.5).save_pretrained(tmp_path / "b")
    shutil.copyfile(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(FolderChangedError, match=r"a: no consistent save.*not the ones config.json's weights_digest names"):
        QScoreModel.from_pretrained(tmp_path / "a")
    assert _which(QScoreModel.from_pretrained(tmp_path / "b")) == (3.0, 0.5)  # a whole save loads


_SAVER = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_hardening_model_files import _model
models = [_model(2.0, 0.25), _model(3.0, 0.5)]
print("ready", flush=True)
for step in range(10**6):
    models[step % 2].save_pretrained({folder!r})
"""


def test_loads_during_saves_never_mix_two_saves(tmp_path):
    folder = tmp_path / "model"
    _model(2.0, 0.25).save_pretrained(folder)
    code = _SAVER.format(tests=str(Path(__file__).parent), folder=str(folder))
    saver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert saver.stdout.readline().strip() == "ready"
        seen, deadline = [], time.monotonic() + 4
        while time.monotonic() < deadline:
            try:
                seen.append(_which(QScoreModel.from_pretrained(folder)))
            except FolderChangedError:
                seen.append("refused")
    finally:
        saver.kill()
        saver.wait()
    loaded = [pair for pair in seen if pair != "refused"]
    assert loaded and set(loaded) <= {(2.0, 0.25), (3.0, 0.5)}, sorted(set(seen), key=str)


_OVERWRITER = """
import shutil, sys
print("ready", flush=True)
while True:
    for source in sys.argv[2:]:
        shutil.copyfile(source, sys.argv[1])  # `cp` over the file: truncate, then write in place
"""

_LOADER = """
import sys, time
from qscore_hf import QScoreModel
from qscore_hf.model_snapshot import FolderChangedError
deadline, loads = time.monotonic() + 3, 0
while time.monotonic() < deadline:
    try:
        QScoreModel.from_pretrained(sys.argv[1])
    except FolderChangedError as error:
        assert "\\n" not in str(error)
    loads += 1
print(loads)
"""


def test_a_file_overwritten_in_place_under_the_reader_is_one_line_not_a_crash(tmp_path):
    _model(2.0, 0.25).save_pretrained(tmp_path / "a")
    _model(2.0, 0.5).save_pretrained(tmp_path / "b")
    weights = [str(tmp_path / name / "model.safetensors") for name in ("a", "b")]
    target = tmp_path / "a" / "model.safetensors"
    overwriter = subprocess.Popen([sys.executable, "-c", _OVERWRITER, str(target), *reversed(weights)],
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert overwriter.stdout.readline().strip() == "ready"
        loader = subprocess.run([sys.executable, "-c", _LOADER, str(tmp_path / "a")], capture_output=True, text=True,
                                timeout=120)  # fmt: skip
    finally:
        overwriter.kill()
        overwriter.wait()
    assert loader.returncode == 0, (loader.returncode, loader.stderr[-2000:])
    assert int(loader.stdout) > 0


def test_the_content_id_is_recorded_and_a_resave_updates_it(tmp_path):
    model = _model(2.0, 0.25)
    model.save_pretrained(tmp_path / "m")
    first = json.loads((tmp_path / "m" / "config.json").read_text())["weights_digest"]
    with torch.no_grad():
        next(iter(model.backbone.parameters())).add_(1.0)
    model.save_pretrained(tmp_path / "m")
    second = json.loads((tmp_path / "m" / "config.json").read_text())["weights_digest"]
    assert first.startswith("blake2b_128:") and second != first
    assert _which(QScoreModel.from_pretrained(tmp_path / "m")) == (2.0, 1.25)


# ------------------------------------------------------------------------------ item 8: dtype kinds, strictly
def test_a_float_tensor_stored_as_integers_is_refused_on_load(tmp_path):
    from safetensors.torch import load_file, save_file

    from qscore_hf import WeightsMismatchError
    from qscore_hf.model_snapshot import record_weights_digest

    _model(2.0, 0.25).save_pretrained(tmp_path / "m")
    weights = load_file(str(tmp_path / "m" / "model.safetensors"))
    key = next(key for key, value in weights.items() if value.is_floating_point() and value.dim() == 4)
    weights[key] = weights[key].view(torch.int32)  # the same bytes, a header that says I32: values of order 1e9
    save_file(weights, str(tmp_path / "m" / "model.safetensors"), metadata={"format": "pt"})
    record_weights_digest(tmp_path / "m")
    with pytest.raises(WeightsMismatchError, match=rf"stores {key} as I32 but the model's tensor is torch.float32"):
        QScoreModel.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("dtype", [torch.int32, torch.complex64])
def test_a_conv_weight_of_another_dtype_kind_is_not_converted(tmp_path, dtype):
    import timm
    from safetensors.torch import save_file

    from qscore_hf.convert import ConversionError, convert_checkpoint

    weights = timm.create_model("resnet18", num_classes=0).state_dict()
    weights["conv1.weight"] = weights["conv1.weight"].to(dtype)
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConversionError, match=rf"conv1.weight \(checkpoint dtype {dtype}, resnet18 expects torch.float32\)"):
        convert_checkpoint(tmp_path / "model.safetensors", arch="resnet18")
