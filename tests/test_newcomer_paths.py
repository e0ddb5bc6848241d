"""What a first-time user meets on a fresh clone: error messages that name the fix, notes that say what a number
rests on, model cards whose code runs, and progress output that reads cleanly."""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qscore_hf import QScoreConfig, QScoreModel


def test_cifar10_without_a_local_copy_names_the_variable(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "QSCORE_CIFAR10_DIR"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-m", "qscore_hf.cli", "score", "--model", "resnet10t", "--backbone-only",
                          "--dataset", "cifar10", "--out", str(tmp_path / "out")],
                         env=env, capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 1
    assert "set QSCORE_CIFAR10_DIR to its folder" in run.stderr.splitlines()[-1]


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """A tiny encoder whose statistics were counted on digits, saved as `convert --compute-stats digits` saves it."""
    from qscore_hf.convert import compute_stats

    torch.manual_seed(0)
    model = QScoreModel(QScoreConfig(backbone="resnet10t", image_size=16, crop_pct=1.0, qscore_eps=1.0)).eval()
    compute_stats(model, "digits", max_samples=64, progress=False)
    folder = tmp_path_factory.mktemp("model") / "digits-model"
    model.save_pretrained(folder)
    return folder


def test_scoring_other_data_with_saved_statistics_says_so(digits_model, tmp_path):
    from qscore_hf.cli import main
    from qscore_hf.data import load_image_dataset

    images = load_image_dataset("digits", split="test", max_samples=32)
    images.dataset.save_to_disk(tmp_path / "other")
    out = io.StringIO()
    sys_stdout, sys.stdout = sys.stdout, out
    try:
        assert main(["score", "--model", str(digits_model), "--dataset", str(tmp_path / "other"), "--split", "train",
                     "--out", str(tmp_path / "scores"), "--stats", "saved", "--no-progress"]) == 0  # fmt: skip
        assert main(["score", "--model", str(digits_model), "--dataset", "digits", "--split", "test",
                     "--out", str(tmp_path / "same"), "--stats", "saved", "--no-progress"]) == 0  # fmt: skip
    finally:
        sys.stdout = sys_stdout
    first, second = out.getvalue().split("wrote ", 1)
    assert f"counted on 'digits', not on the scored data set '{tmp_path / 'other'}'" in first
    assert "--stats data" in first
    assert "note:" not in second  # scoring the data the statistics were counted on: nothing to say


def test_the_pretraining_card_usage_code_loads_the_folder(tmp_path):
    """Pre-training writes OUTPUT_DIR/model; the card's code must load that folder from where training ran."""
    from qscore_hf.publish import save_model_folder

    torch.manual_seed(0)
    model = QScoreModel(QScoreConfig(backbone="resnet10t", image_size=16, crop_pct=1.0, ssl_method="simclr",
                                     pretraining_data="digits"))  # fmt: skip
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        folder = save_model_folder(model, Path("runs") / "smoke" / "model")
    finally:
        os.chdir(cwd)
    (usage,) = re.findall(r"```python\n(.*?)```", (tmp_path / folder / "README.md").read_text(), flags=re.S)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    run = subprocess.run([sys.executable, "-c", usage], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "torch.Size([1, 512])" in run.stdout


def estimate():
    from qscore_hf.demo import TimeEstimate

    # 10 s of pre-training, 1 s of evaluation (as in test_newcomer_report.py)
    return TimeEstimate(seconds_per_step=1.0, probe_steps=2, pretraining_steps=10, evaluation_images=600, views=2,
                        batch_size=100)  # fmt: skip


def test_a_log_line_does_not_continue_the_demo_bar():
    from qscore_hf.demo import WholeRunBar

    now, screen = [100.0], io.StringIO()
    bar = WholeRunBar(estimate(), clock=lambda: now[0], tick=None, file=screen)
    now[0] = 104.0
    bar.update()
    bar.write("Pre-trained in 7.1 min")
    bar.close()
    assert "leftPre-trained" not in screen.getvalue()
    assert re.search(r"[\r\n]Pre-trained in 7.1 min\n", screen.getvalue())


def test_the_demo_bar_shows_no_growing_estimate_while_it_waits():
    from qscore_hf.demo import WholeRunBar

    now, screen = [100.0], io.StringIO()
    bar = WholeRunBar(estimate(), clock=lambda: now[0], tick=None, file=screen)
    lines = []
    for t in (104.0, 115.0, 160.0, 220.0):  # the stage's estimate is 10 s: from 110 s on, the bar waits at 99 %
        now[0] = t
        bar.update()
        lines.append(bar.bar.format_meter(**bar.bar.format_dict))
    bar.close()
    assert "left" in lines[0]
    assert all("left" not in line and "longer than estimated" in line for line in lines[1:])


def test_the_demo_hides_the_libraries_bars_only_while_its_own_bar_runs():
    import transformers.utils.logging as transformers_logging

    from qscore_hf.demo import _library_bars_off

    assert transformers_logging.is_progress_bar_enabled()
    with _library_bars_off(True):
        assert not transformers_logging.is_progress_bar_enabled()
    assert transformers_logging.is_progress_bar_enabled()
