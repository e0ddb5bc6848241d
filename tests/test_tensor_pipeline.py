"""Pre-training with --data-pipeline tensor: images decoded once, views drawn per batch by kornia; a resumed run
equals an uninterrupted one, and later runs reuse the decoded images."""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log; no tracker (log_with "none"): a TensorBoard event file per run costs time and nobody reads it here; no
# loader workers (num_workers 0): a worker process costs seconds to start on 2 cores.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from qscore_hf import decoded
from qscore_hf.pretraining import PretrainConfig, pretrain

pytestmark = [pytest.mark.runs_long, pytest.mark.usefixtures("one_thread")]


def tiny(output_dir, **overrides) -> PretrainConfig:
    settings = dict(method="byol", output_dir=str(output_dir), dataset="digits", backbone="resnet10t", image_size=16,
                    batch_size=16, max_samples=64, epochs=3, max_steps=6, checkpoint_every=3, num_workers=0,
                    log_with="none", progress=False, log_every=1, eval_split=None, qscore_reg=True,
                    qscore_warmup_samples=32, data_pipeline="tensor", seed=5)  # fmt: skip
    return PretrainConfig(**{**settings, **overrides})


def logged_steps(output_dir) -> list[int]:
    lines = (output_dir / "train_log.jsonl").read_text().splitlines()
    return [entry["step"] for entry in map(json.loads, lines) if "loss" in entry]


def test_a_resumed_tensor_pipeline_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    monkeypatch.setenv("QSCORE_HF_DECODED_CACHE", str(tmp_path / "decoded"))
    straight = pretrain(tiny(tmp_path / "straight"))
    (folder,) = [entry for entry in (tmp_path / "decoded").iterdir() if not entry.name.startswith(".")]
    assert (folder / "images.npy").exists()

    # later runs read the decoded images: nothing is decoded again
    monkeypatch.setattr(decoded, "_build", lambda *args: pytest.fail("decoded the images a second time"))
    assert pretrain(tiny(tmp_path / "resumed", stop_after_steps=4)) is None
    resumed = pretrain(tiny(tmp_path / "resumed", resume="auto"))
    assert logged_steps(tmp_path / "straight") == logged_steps(tmp_path / "resumed") == [1, 2, 3, 4, 5, 6]
    expected, weights = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == weights.keys()
    for key in expected:
        assert torch.equal(expected[key], weights[key]), key

    # the seed decides the views: another seed trains other weights
    other = load_file(pretrain(tiny(tmp_path / "other", seed=6)) / "model.safetensors")
    assert any(not torch.equal(expected[key], other[key]) for key in expected)


def test_the_command_line_switch_and_a_wrong_name(training_script, tmp_path):
    script = training_script("pretrain")
    common = ["--method", "simclr", "--output-dir", str(tmp_path)]
    assert script.parse_args(common).data_pipeline == "auto"
    assert script.parse_args([*common, "--data-pipeline", "tensor"]).data_pipeline == "tensor"
    with pytest.raises(ValueError, match="unknown data pipeline 'gpu'; choose one of auto, pil, tensor"):
        pretrain(tiny(tmp_path / "wrong", data_pipeline="gpu"))
