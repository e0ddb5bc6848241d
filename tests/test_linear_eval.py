"""End-to-end tests of ``training/linear_eval.py`` and ``qscore_hf.linear_eval`` on a tiny random encoder.

The encoder is a randomly initialised CIFAR-stem ResNet-18 at 16 px (the digits are 8x8 images): random conv features
are good enough for a linear probe on digits, and small enough to keep the test fast. Expectations are independent of
the code under test: scikit-learn's metrics on the per-sample parquet's own columns, a literal NumPy reading of
SPEC §2-4 for the Q-Scores, the digits' labels from the data set, PIL for the PNGs and ``huggingface_hub.ModelCard``
for the model card.
"""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from huggingface_hub import EvalResult, ModelCard
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from qscore_hf import QScoreConfig, QScoreModel
from qscore_hf.data import load_image_dataset
from qscore_hf.linear_eval import run_linear_eval

SCRIPT = Path(__file__).resolve().parents[1] / "training" / "linear_eval.py"
EPS = 2.0  # random weights leave almost nothing above mu + 4 sigma; 2 gives a proper subset D
EPOCHS = 30
CARD = """---
license: apache-2.0
tags:
- q-score
---

# Tiny random encoder

Random weights, for tests.
"""


# Tiny CPU workloads run faster (and steadier on a shared machine) without intra-op threads.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("linear_eval")


@pytest.fixture(scope="module")
def model_dir(workdir) -> Path:
    torch.manual_seed(0)
    model = QScoreModel(QScoreConfig(backbone="resnet18_cifar", image_size=16, crop_pct=1.0, qscore_eps=EPS))
    folder = workdir / "tiny-encoder"
    model.save_pretrained(folder)
    (folder / "README.md").write_text(CARD)
    return folder


def offline_environment(**extra: str) -> dict[str, str]:
    """The current environment without Hugging Face variables, offline, plus ``extra`` (as conftest's offline_env,
    which is function-scoped)."""
    prefixes = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}
    return {**env, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", **extra}


@pytest.fixture(scope="module")
def cli_run(workdir, model_dir):
    """``python training/linear_eval.py`` on digits, as a user runs it."""
    out = workdir / "out"
    command = [sys.executable, str(SCRIPT), "--model", str(model_dir), "--dataset", "digits", "--epochs", str(EPOCHS),
               "--cache-dir", str(workdir / "cache"), "--out", str(out), "--no-progress"]  # fmt: skip
    env = offline_environment(HF_HOME=str(workdir / "hf"), OMP_NUM_THREADS="1")
    run = subprocess.run(command, env=env, capture_output=True, text=True, cwd=workdir)
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    table = pq.read_table(out / "per_sample.parquet").to_pydict()
    return out, report, {name: np.asarray(values) for name, values in table.items()}, run.stdout


def reference_qscores(train: np.ndarray, evaluation: np.ndarray, eps: float, p_lo: float = 50.0, p_hi: float = 95.0):
    """SPEC §2-4 in float64 NumPy: D from the training features' activation frequencies, Q of the evaluation rows."""

    def highly_activating(h: np.ndarray) -> np.ndarray:
        not_constant = h.max(axis=1, keepdims=True) > h.min(axis=1, keepdims=True)
        return (h > h.mean(axis=1, keepdims=True) + eps * h.std(axis=1, keepdims=True)) & not_constant

    frequency = highly_activating(train).mean(axis=0)
    low, high = np.percentile(frequency, [p_lo, p_hi])
    discriminative = (frequency >= low) & (frequency <= high) & (frequency > 0)
    selected = highly_activating(evaluation) & discriminative
    sizes = selected.sum(axis=1)
    deviation = evaluation - evaluation.mean(axis=1, keepdims=True)
    q = np.where(sizes > 0, (deviation * selected).sum(axis=1) / np.maximum(sizes, 1), 0.0)
    return q, sizes, int(discriminative.sum())


# ------------------------------------------------------------------------------------------------- the CLI run
def test_all_files_exist_and_plots_are_pngs(cli_run):
    out, report, _, _ = cli_run
    expected = {"report.json", "per_sample.parquet", "qscore_hist_correct_vs_misclassified.png", "pr_curve.png"}
    assert expected <= {p.name for p in out.iterdir()}
    assert set(report["files"].values()) == expected
    for name in ("qscore_hist_correct_vs_misclassified.png", "pr_curve.png"):
        with Image.open(out / name) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out.tmp")], "no temporary folder left"


def test_report_metrics_equal_scikit_learn_on_the_per_sample_outputs(cli_run):
    _, report, table, _ = cli_run
    correct, q = table["correct"].astype(int), table["q_score"]
    assert report["auprc_correct"] == pytest.approx(average_precision_score(correct, q), abs=1e-12)
    assert report["auprc_misclassified"] == pytest.approx(average_precision_score(1 - correct, -q), abs=1e-12)
    assert report["auroc"] == pytest.approx(roc_auc_score(correct, q), abs=1e-12)
    assert report["top1"] == pytest.approx(correct.mean(), abs=1e-12)
    assert report["base_rate_correct"] == pytest.approx(correct.mean(), abs=1e-12)
    assert report["base_rate_misclassified"] == pytest.approx(1 - correct.mean(), abs=1e-12)


def test_accuracy_beats_chance_by_a_wide_margin_on_digits(cli_run):
    _, report, table, _ = cli_run
    test_labels = np.asarray(list(load_image_dataset("digits", "test").dataset["label"]))
    np.testing.assert_array_equal(table["label"], test_labels)
    np.testing.assert_array_equal(table["row_id"], np.arange(len(test_labels)))
    np.testing.assert_array_equal(table["correct"], table["prediction"] == table["label"])
    assert (report["num_train"], report["num_eval"], report["num_classes"]) == (1437, 360, 10)
    assert report["top1"] > 0.5  # chance is 0.1
    assert report["probe"]["epochs"] == EPOCHS and report["probe"]["optimizer"] == "sgd"


def test_qscores_follow_the_spec_with_d_from_the_training_features(cli_run):
    _, report, table, _ = cli_run
    train = np.load(Path(report["feature_cache"]["train"]) / "features.npy").astype(np.float64)
    evaluation = np.load(Path(report["feature_cache"]["eval"]) / "features.npy").astype(np.float64)
    q, sizes, num_discriminative = reference_qscores(train, evaluation, EPS)
    assert report["qscore"]["activation_stats_source"] == "train_features"
    assert report["qscore"]["activation_stats_samples"] == 1437
    assert report["qscore"]["num_discriminative"] == num_discriminative
    assert 0 < num_discriminative < 512
    np.testing.assert_array_equal(table["num_selected"], sizes)
    np.testing.assert_allclose(table["q_score"], q, rtol=1e-5, atol=1e-7)
    assert report["qscore"]["eps"] == EPS and report["qscore"]["normalize"] == "none"


def test_model_card_gets_model_index_entries(cli_run, model_dir):
    _, report, _, _ = cli_run
    card = ModelCard.load(model_dir / "README.md")
    results = {r.metric_type: r for r in card.data.eval_results}
    assert set(results) == {"accuracy", "auprc", "roc_auc"}
    assert results["accuracy"].metric_value == pytest.approx(report["top1"])
    assert results["auprc"].metric_value == pytest.approx(report["auprc_correct"])
    assert f"chance: the accuracy, {report['top1']:.4f}" in results["auprc"].metric_name  # the AUPRC's base rate
    assert results["roc_auc"].metric_value == pytest.approx(report["auroc"])
    assert "95 % interval {:.4f}-{:.4f}".format(*report["auroc_ci"]) in results["roc_auc"].metric_name
    for result in results.values():
        assert result.task_type == "image-classification"
        assert (result.dataset_type, result.dataset_split) == ("digits", "test")
    assert card.data.license == "apache-2.0" and card.data.tags == ["q-score"]
    assert "Random weights, for tests." in card.text
    assert report["model_card_results"] == "README.md"


def test_the_script_names_the_card_it_updated_in_full(cli_run, model_dir):
    stdout = cli_run[3]
    assert f"model-index results: {Path(model_dir) / 'README.md'}\n" in stdout


def test_summary_table_is_printed(cli_run):
    _, report, _, stdout = cli_run
    header, row = stdout.strip().splitlines()[:2]
    assert header.split(" | ")[0].strip() == "model" and "auprc_correct" in header
    assert f"{report['top1']:.4f}" in row and f"{report['auprc_correct']:.4f}" in row
    low, high = report["auroc_ci"]
    assert "auroc [95 % CI]" in header and f"{report['auroc']:.4f} [{low:.4f}, {high:.4f}]" in row
    assert low < report["auroc"] < high


def test_command_line_is_recorded(cli_run):
    _, report, _, _ = cli_run
    assert "linear_eval.py" in report["command"] and "--dataset digits" in report["command"]


# ------------------------------------------------------------------------------------------------- in-process runs
def test_rerun_uses_the_cache_and_replaces_model_index_entries(cli_run, workdir, model_dir, tmp_path, monkeypatch):
    _, first, _, _ = cli_run
    folder = shutil.copytree(model_dir, tmp_path / "copy")  # same weights, same card
    forward_calls = []
    original_forward = QScoreModel.forward

    def counting_forward(self, *args, **kwargs):
        forward_calls.append(1)
        return original_forward(self, *args, **kwargs)

    monkeypatch.setattr(QScoreModel, "forward", counting_forward)
    report = run_linear_eval(folder, "digits", tmp_path / "out", epochs=50, optimizer="lbfgs",
                             cache_dir=workdir / "cache", progress=False)  # fmt: skip
    assert forward_calls == [], "features of both splits must come from the cache"
    assert report["feature_cache"] == first["feature_cache"]
    assert report["probe"]["optimizer"] == "lbfgs" and report["top1"] > 0.5
    results = ModelCard.load(folder / "README.md").data.eval_results
    assert len(results) == 3, "a second evaluation replaces, not duplicates, its model-index entries"
    assert {r.metric_type: r.metric_value for r in results} == pytest.approx(
        {"accuracy": report["top1"], "auprc": report["auprc_correct"], "roc_auc": report["auroc"]}
    )


def test_without_model_card_results_go_to_a_json_file(workdir, model_dir, tmp_path):
    folder = shutil.copytree(model_dir, tmp_path / "no-card", ignore=shutil.ignore_patterns("README.md"))
    out = tmp_path / "out"
    report = run_linear_eval(folder, "digits", out, epochs=20, optimizer="lbfgs", cache_dir=workdir / "cache",
                             progress=False)  # fmt: skip
    assert report["model_card_results"] == "model_card_results.json"
    assert not (folder / "README.md").exists()
    saved = json.loads((out / "model_card_results.json").read_text())
    results = [EvalResult(**result) for result in saved["eval_results"]]
    values = {r.metric_type: r.metric_value for r in results}
    assert values == {"accuracy": report["top1"], "auprc": report["auprc_correct"], "roc_auc": report["auroc"]}


def test_saved_activation_statistics_define_d(workdir, model_dir, tmp_path):
    model = QScoreModel.from_pretrained(model_dir)
    reference = torch.rand(64, 512, generator=torch.Generator().manual_seed(0)) ** 4  # non-negative, heavy-tailed
    model.activation_stats.update(reference)
    model.save_pretrained(tmp_path / "with-stats")
    out = tmp_path / "out"
    report = run_linear_eval(tmp_path / "with-stats", "digits", out, epochs=5, optimizer="lbfgs",
                             cache_dir=workdir / "cache", progress=False)  # fmt: skip
    assert report["qscore"]["activation_stats_source"] == "model"
    assert report["qscore"]["activation_stats_samples"] == 64
    evaluation = np.load(Path(report["feature_cache"]["eval"]) / "features.npy").astype(np.float64)
    q, sizes, num_discriminative = reference_qscores(reference.numpy().astype(np.float64), evaluation, EPS)
    assert report["qscore"]["num_discriminative"] == num_discriminative
    table = pq.read_table(out / "per_sample.parquet").to_pydict()
    np.testing.assert_array_equal(table["num_selected"], sizes)
    np.testing.assert_allclose(table["q_score"], q, rtol=1e-5, atol=1e-7)


def test_data_set_without_labels_is_named(model_dir, tmp_path):
    import datasets

    images = [Image.new("L", (8, 8), color=value) for value in (0, 128, 255)]
    datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()})).save_to_disk(
        tmp_path / "unlabelled"
    )
    with pytest.raises(ValueError, match="no label column"):
        run_linear_eval(model_dir, str(tmp_path / "unlabelled"), tmp_path / "out", cache_dir=tmp_path, progress=False)
    assert not (tmp_path / "out").exists()


def test_help_runs_as_a_script(offline_env):
    run = subprocess.run([sys.executable, str(SCRIPT), "--help"], env=offline_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    options = ("--model", "--dataset", "--epochs", "--optimizer", "--bf16", "--cache-dir", "--out", "--max-samples")
    for option in options:
        assert option in run.stdout
    assert os.path.basename(SCRIPT) in run.stdout
