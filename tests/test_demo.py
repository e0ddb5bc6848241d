"""``qscore-hf demo``: the quick run goes through the command line to the end, and the numbers it prints and reports
agree with scikit-learn and a literal reading of SPEC §2-3 on its own per-sample outputs and cached features."""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from qscore_hf import data
from qscore_hf.cli import main
from qscore_hf.cards import check_card
from qscore_hf.demo import demo_setting, estimate_time, resolve_dataset

QUICK_EPS = 2.0  # the --quick setting's eps (a barely trained encoder)
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz")  # fmt: skip


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """``qscore-hf demo --quick`` on digits, as a user runs it (one intra-op thread: steadier on a shared CPU)."""
    out = tmp_path_factory.mktemp("demo") / "qscore-demo"
    stdout, threads = io.StringIO(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(stdout):
            code = main(["demo", "--quick", "--dataset", "digits", "--out", str(out), "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    report = json.loads((out / "report" / "report.json").read_text())
    columns = pq.read_table(out / "report" / "per_sample.parquet").to_pydict()
    table = {name: np.asarray(values) for name, values in columns.items()}
    return out, report, table, stdout.getvalue()


def table_value(stdout: str, metric: str) -> list[str]:
    """The cells after the metric's name in the printed table."""
    (line,) = [line for line in stdout.splitlines() if line.startswith(metric)]
    return [cell.strip() for cell in line.split(" | ")[1:]]


def test_reported_metrics_equal_scikit_learn_on_the_per_sample_outputs(quick_demo):
    _, report, table, _ = quick_demo
    correct, q = table["correct"].astype(int), table["q_score"]
    assert 0 < correct.sum() < len(correct), "both classes are needed for meaningful AUPRC/AUROC"
    assert len(np.unique(q)) > 2, "the quick setting must give informative (non-constant) scores"
    assert report["auprc_correct"] == pytest.approx(average_precision_score(correct, q), abs=1e-12)
    assert report["auprc_misclassified"] == pytest.approx(average_precision_score(1 - correct, -q), abs=1e-12)
    assert report["auroc"] == pytest.approx(roc_auc_score(correct, q), abs=1e-12)
    assert report["top1"] == pytest.approx(correct.mean(), abs=1e-12)
    np.testing.assert_array_equal(table["correct"], table["prediction"] == table["label"])
    assert report["num_classes"] == 10 and report["top1"] > 0.2  # chance is 0.1


def test_table_prints_the_same_numbers(quick_demo):
    _, _, table, stdout = quick_demo
    correct, q = table["correct"].astype(int), table["q_score"]
    accuracy = correct.mean()
    assert table_value(stdout, "linear-probe top-1 accuracy") == [f"{accuracy:.4f}", "0.1000 (chance)"]
    assert table_value(stdout, "AUPRC, correct as positive") == [
        f"{average_precision_score(correct, q):.4f}", f"{accuracy:.4f} (base rate: accuracy)"]
    assert table_value(stdout, "AUPRC, misclassified as positive") == [
        f"{average_precision_score(1 - correct, -q):.4f}", f"{1 - accuracy:.4f} (base rate: error rate)"]
    assert table_value(stdout, "AUROC") == [f"{roc_auc_score(correct, q):.4f}", "0.5000 (chance)"]


def test_discriminative_features_follow_the_spec(quick_demo):
    """|D| from the activation frequencies of the pre-training images (the probe's 128 training images: the same
    first rows of the same split, through the same preprocessing), per SPEC §2-3 in NumPy."""
    _, report, _, stdout = quick_demo
    features = np.load(Path(report["feature_cache"]["train"]) / "features.npy").astype(np.float64)
    assert features.shape == (128, 512)
    sigma = features.std(axis=1, keepdims=True)
    active = (features > features.mean(axis=1, keepdims=True) + QUICK_EPS * sigma) & (sigma > 0)
    frequency = active.mean(axis=0)
    low, high = np.percentile(frequency, [0, 100])  # the band chosen on validation for trained encoders
    expected = int(((frequency >= low) & (frequency <= high) & (frequency > 0)).sum())
    assert expected > 0
    assert report["qscore"]["activation_stats_source"] == "model" and report["qscore"]["eps"] == QUICK_EPS
    assert table_value(stdout, "|D| discriminative features") == [str(expected), "of 512"]


def test_output_folder_and_closing_line(quick_demo):
    out, _, _, stdout = quick_demo
    assert {"model", "report", "train_log.jsonl"} <= {p.name for p in out.iterdir()}
    assert not (out / "checkpoints").exists()
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in (out / "model").iterdir()}
    for name in ("report.json", "per_sample.parquet", "qscore_hist_correct_vs_misclassified.png", "pr_curve.png"):
        assert (out / "report" / name).is_file()
    assert stdout.rstrip().splitlines()[-1].startswith(f"report and plots: {out / 'report'}/")


def test_auto_picks_fashion_mnist_only_when_its_files_exist(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)
    for name in FASHION_FILES[:-1]:
        (tmp_path / name).touch()
    assert resolve_dataset("auto") == "digits"
    (tmp_path / FASHION_FILES[-1]).touch()
    assert resolve_dataset("auto") == "fashion_mnist"
    assert resolve_dataset("digits") == "digits"


def test_a_folder_that_is_not_a_demo_is_left_alone(tmp_path, capsys):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("keep me")
    assert main(["demo", "--quick", "--dataset", "digits", "--out", str(out), "--no-progress"]) == 1
    error = capsys.readouterr().err
    assert "chapter1.tex" in error and "another --out" in error
    assert (out / "chapter1.tex").read_text() == "keep me" and [p.name for p in out.iterdir()] == ["chapter1.tex"]


def test_it_says_first_which_data_set_it_uses(quick_demo):
    _, _, _, stdout = quick_demo
    assert stdout.splitlines()[0].startswith("Data set: scikit-learn's digits (1,797 bundled 8x8 images), as asked")
    assert "sudo apt-get install dataset-fashion-mnist" in stdout.splitlines()[0]


def test_its_model_card_is_publishable_and_holds_its_own_numbers(quick_demo):
    out, report, _, _ = quick_demo
    card = check_card((out / "model" / "README.md").read_text())
    assert card.data.model_name == "qscore-simclr-resnet10t-digits" and card.data.license == "apache-2.0"
    assert card.data.datasets is None  # digits has no Hub copy
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        "accuracy": report["top1"], "auprc": report["auprc_correct"], "roc_auc": report["auroc"]}
    assert f"**Verdict.** {report['comparison']['verdict']}" in card.text


def test_time_estimate_counts_the_steps_the_run_took(quick_demo):
    """The estimate's step count against the pre-training log of the same setting; its per-step time is positive."""
    out, _, _, _ = quick_demo
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    estimate = estimate_time("digits", demo_setting("digits", quick=True), probe_steps=1)
    assert estimate.pretraining_steps == max(entry["step"] for entry in logged) == 4  # 128 images // 32, 1 epoch
    assert estimate.evaluation_images == 2 * 128 + 128 and estimate.seconds_per_step > 0
    assert "Estimated time: about" in estimate.text() and "4 steps of pre-training" in estimate.text()
