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
