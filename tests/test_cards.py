"""Model cards: the rendered card parses as a Hub card, its metadata is right, eval results round-trip, the body
holds provenance, preprocessing, limitations and citations, and its usage code runs against a saved folder;
``qscore-hf card`` renders the card of a pre-trained, linearly evaluated model from its report.json."""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log; no tracker (log_with "none"): a TensorBoard event file per run costs time and nobody reads it here; no
# loader workers (num_workers 0): a worker process costs seconds to start on 2 cores.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import EvalResult, ModelCard

from qscore_hf import QScoreConfig, QScoreModel
from qscore_hf.cards import DEFAULT_LICENSE, TEMPLATE_PATH, check_card, render_model_card
from qscore_hf.comparison import ScoreComparison
from qscore_hf.cli import main
from qscore_hf.convert import ConversionReport
from qscore_hf.linear_eval import run_linear_eval
from qscore_hf.pretraining import PretrainConfig, pretrain

ROOT = Path(__file__).resolve().parents[1]

SHA = "ab" * 32


def converted_config() -> QScoreConfig:
    report = ConversionReport(
        source_file="moco_v2_800ep_pretrain.pth.tar",
        sha256=SHA,
        format="moco",
        detection="auto-detected: MoCo v1/v2",
        release="MoCo v1/v2 (github.com/facebookresearch/moco, main_moco.py)",
        method="mocov2",
        method_source="from the heads in the checkpoint",
        arch="resnet50",
        stem_padding=1,
        consumed=320,
        dropped={"encoder copies": 324, "projector": 4, "queue": 2},
        filled={},
        other_entries=["epoch", "arch", "optimizer"],
        pretraining_data="imagenet-1k",
        preprocessing="ImageNet normalization, resize 256 / centre-crop 224",
        license={"id": "cc-by-nc-4.0", "source": "CC-BY-NC 4.0 (README)", "confirmed": False, "note": ""},
        notes=["A caveat of this release."],
    )
    return QScoreConfig(backbone="resnet50", hidden_size=2048, ssl_method="moco", pretraining_data="imagenet-1k",
                        conversion=report.to_dict())  # fmt: skip


def test_converted_card_metadata_and_body():
    card = ModelCard(str(render_model_card(converted_config(), repo_id="org/moco-v2-r50")))
    data = card.data
    assert data.license == "cc-by-nc-4.0"
    assert data.library_name == "qscore-hf"
    assert data.pipeline_tag == "image-feature-extraction"
    assert data.tags == ["self-supervised", "q-score", "mocov2", "moco", "resnet50"]
    assert data.datasets == ["imagenet-1k"]
    assert data.eval_results is None
    body = card.text
    assert f"`{SHA}`" in body and "`moco_v2_800ep_pretrain.pth.tar`" in body
    assert "dropped: encoder copies 324, projector 4, queue 2" in body
    assert "non-commercial use only" in body and "unconfirmed" in body and "A caveat of this release." in body
    assert 'QScoreModel.from_pretrained("org/moco-v2-r50")' in body
    assert "No activation statistics are stored yet: Q-Scores use all 2048 features" in body
    citations = re.findall(r"```bibtex\n@\w+\{(\w+),", body)
    assert citations == ["kalibhat2024measuring", "he2020momentum", "chen2020improved"]


def test_eval_results_round_trip():
    results = [
        EvalResult(task_type="image-classification", task_name="linear probe", dataset_type="cifar10",
                   dataset_name="CIFAR-10", dataset_split="test", metric_type="accuracy", metric_value=0.9074,
                   source_name="solo-learn", source_url="https://github.com/vturrisi/solo-learn"),  # fmt: skip
        EvalResult(task_type="image-classification", dataset_type="cifar10", dataset_name="CIFAR-10",
                   metric_type="auprc", metric_name="Q-Score AUPRC", metric_value=0.41),  # fmt: skip
    ]
    card = ModelCard(str(render_model_card(converted_config(), results=results, repo_id="org/m")))
    assert card.data.model_name == "m"
    assert card.data.eval_results == results
    assert "| linear probe | CIFAR-10 | test | accuracy | 0.9074 | solo-learn |" in card.text
    assert "| image-classification | CIFAR-10 |  | Q-Score AUPRC | 0.41 |  |" in card.text


def test_trained_model_card_uses_provenance():
    config = QScoreConfig(backbone="resnet18_cifar", ssl_method="simclr", pretraining_data="cifar10", image_size=32, crop_pct=1.0)
    card = ModelCard(str(render_model_card(config, provenance={"recipe": "solo-learn CIFAR recipe, 1000 epochs",
                                                               "license": "apache-2.0"}, stats_samples=5000)))  # fmt: skip
    assert card.data.license == "apache-2.0"
    assert card.data.tags == ["self-supervised", "q-score", "simclr", "resnet18_cifar"]
    assert "## Training" in card.text and "- **recipe**: solo-learn CIFAR recipe, 1000 epochs" in card.text
    assert "## Provenance" not in card.text
    assert "from 5000 reference images" in card.text
    assert "@inproceedings{chen2020simple," in card.text


def test_usage_code_runs(tmp_path, offline_env):
    folder = tmp_path / "model"
    QScoreModel(QScoreConfig(backbone="resnet18_cifar", image_size=32, crop_pct=1.0)).save_pretrained(folder)
    (usage,) = re.findall(r"```python\n(.*?)```", render_model_card(QScoreModel.config_class.from_pretrained(folder),
                                                                     repo_id=str(folder)).text, flags=re.S)  # fmt: skip
    run = subprocess.run([sys.executable, "-c", usage], env=offline_env(HF_HOME=str(tmp_path / "hf")),
                         capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "torch.Size([1, 512])" in run.stdout


# ------------------------------------------------------------------------------------------------- qscore-hf card
@pytest.fixture(scope="module")
def evaluated_model(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny SimCLR pre-training on 32 digits and its linear evaluation: (model folder, report.json)."""
    work = tmp_path_factory.mktemp("card")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model_dir = pretrain(PretrainConfig(
            method="simclr", output_dir=str(work / "run"), dataset="digits", backbone="resnet10t", image_size=16,
            batch_size=16, max_samples=32, epochs=1, num_workers=0, log_with="none", progress=False, eval_split=None,
            scoring_eps=2.0, checkpoint_every=0,
        ))  # fmt: skip
        run_linear_eval(model_dir, "digits", work / "eval", max_samples=64, epochs=10, optimizer="lbfgs",
                        cache_dir=work / "cache", update_model_card=False, progress=False)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return model_dir, work / "eval" / "report.json"


def test_card_from_a_linear_eval_report(evaluated_model, tmp_path, capsys):
    model_dir, report_path = evaluated_model
    out = tmp_path / "cards" / "README.md"
    assert main(["card", "--results", str(report_path), "--out", str(out), "--license", "apache-2.0"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    card = check_card(out.read_text())
    data = card.data
    assert {r.metric_type: r.metric_value for r in data.eval_results} == {
        "accuracy": report["top1"], "auprc": report["auprc_correct"], "roc_auc": report["auroc"]}
    names = {r.metric_type: r.metric_name for r in data.eval_results}
    assert names["auprc"].endswith(f"(chance: the accuracy, {report['top1']:.4f})")  # the AUPRC's base rate
    assert names["roc_auc"] == "Q-Score AUROC (chance 0.5; 95 % interval {:.4f}-{:.4f})".format(*report["auroc_ci"])
    assert {(r.dataset_type, r.dataset_split, r.task_type) for r in data.eval_results} == {
        ("digits", "test", "image-classification")}
    # the pre-training folder is called `model`: the card gets a descriptive name instead
    assert data.model_name == "qscore-simclr-resnet10t-digits" and "\n# qscore-simclr-resnet10t-digits\n" in str(card)
    assert data.tags == ["self-supervised", "q-score", "simclr", "resnet10t"]
    # digits has no Hub copy: no `datasets` metadata (a Hub id or nothing)
    assert (data.license, data.library_name, data.datasets) == ("apache-2.0", "qscore-hf", None)
    body = card.text
    assert "- **method**: simclr" in body and "- **data**: digits (train), first 32 images" in body
    assert "- **steps**: 2" in body and "- **Q-Score regularization**: none" in body
    assert f'QScoreModel.from_pretrained("{model_dir}")' in body
    assert "from 32 reference images" in body  # the statistics the pre-training export counted
    assert f"| Linear-probe top-1 accuracy | {report['top1']} |" in body
    assert f"AUPRC {report['auprc_correct']:.4f} (base rate {report['top1']:.4f})" in body
    # the scoring setting the card's numbers were made with (the exported model's: eps 2 here, normalize l1 and
    # band 0-100 by default), and the sentence comparing Q-Score with its label-free baselines
    assert "Q-Score (eps 2, normalize l1, band 0-100," in body
    assert "label-free baseline" in report["comparison"]["verdict"]
    assert f"**Verdict.** {report['comparison']['verdict']}" in body
    # the results table with every baseline, its interval and the base rates
    table = ScoreComparison.from_dict(report["comparison"]).table(markdown=True)
    assert table in body and "| base rate (chance) | 0.5000 |" in body and "| knn_density |" in body
    # the paper's claim is the paper's; the card's own claim is the measured verdict
    assert "low scores flag likely" not in body and "In the paper, low Q-Scores flag" in body
    assert "## Limitations" in body
    assert re.findall(r"```bibtex\n@\w+\{(\w+),", body) == ["kalibhat2024measuring", "chen2020simple"]


def test_card_model_and_repo_id_options(evaluated_model, tmp_path):
    _, report_path = evaluated_model
    other = tmp_path / "other"
    config = QScoreConfig(backbone="resnet18_cifar", ssl_method="byol", image_size=32, crop_pct=1.0)
    QScoreModel(config).save_pretrained(other)
    out = tmp_path / "README.md"
    assert main(["card", "--results", str(report_path), "--out", str(out), "--model", str(other),
                 "--repo-id", "org/byol-r18"]) == 0  # fmt: skip
    card = check_card(out.read_text())
    assert "byol" in card.data.tags and card.data.license == DEFAULT_LICENSE
    assert "qscore-hf's own license, set because none was given" in card.text
    assert 'QScoreModel.from_pretrained("org/byol-r18")' in card.text and "## Training" not in card.text


def test_card_errors_name_the_problem(tmp_path, capsys):
    out = tmp_path / "README.md"
    assert main(["card", "--results", str(tmp_path / "missing.json"), "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert "missing.json not found" in error and "linear_eval.py" in error
    no_metrics = tmp_path / "report.json"
    no_metrics.write_text(json.dumps({"model": "m", "dataset": "digits", "eval_split": "test"}))
    assert main(["card", "--results", str(no_metrics), "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert "not a linear-evaluation report" in error and "top1" in error and "auprc_correct" in error
    no_metrics.write_text("{not json")
    assert main(["card", "--results", str(no_metrics), "--out", str(out)]) == 1
    assert "is not JSON" in capsys.readouterr().err
    assert not out.exists()


def test_model_cards_folder_links_the_packaged_template():
    link = ROOT / "model_cards" / "template.md"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.resolve() == TEMPLATE_PATH.resolve()


# ------------------------------------------------------------------------------------ every card writer, validated
def test_every_card_writer_passes_huggingface_hubs_checks(evaluated_model, tmp_path):
    """The cards of conversion, of pre-training's export, of a linear evaluation's update of it and of `qscore-hf card`
    parse as Hub cards with a license, a real title, Hub data set ids and a model-index that round-trips."""
    from qscore_hf.linear_eval import _update_model_card
    from qscore_hf.cards import report_eval_results

    model_dir, report_path = evaluated_model
    converted = check_card(str(render_model_card(converted_config(), repo_id="org/moco-v2-r50")))
    assert (converted.data.license, converted.data.datasets) == ("cc-by-nc-4.0", ["imagenet-1k"])
    exported = check_card((model_dir / "README.md").read_text())  # written by pretrain: no results yet
    assert "# qscore-simclr-resnet10t-digits" in exported.text and "has not been measured" in exported.text
    updated = tmp_path / "README.md"
    updated.write_text((model_dir / "README.md").read_text())
    _update_model_card(updated, report_eval_results(json.loads(report_path.read_text())))
    assert check_card(updated.read_text()).data.model_name == "qscore-simclr-resnet10t-digits"
    for data_set, hub_id in (("fashion_mnist", "zalando-datasets/fashion_mnist"), ("cifar10", "uoft-cs/cifar10")):
        config = QScoreConfig(backbone="resnet18_cifar", ssl_method="simclr", pretraining_data=data_set)
        assert check_card(str(render_model_card(config, repo_id="org/m"))).data.datasets == [hub_id]


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda text: text.replace("license: apache-2.0\n", ""), "no license"),
        (lambda text: text.replace("# qscore-simclr-resnet10t-digits", "# model"), "give the model a real name"),
        (lambda text: text.replace("tags:", "datasets:\n- digits\ntags:"), "not all Hub ids"),
        (lambda text: text.replace("- name: qscore-simclr-resnet10t-digits", "- name: other"), "model-index names"),
    ],
)
def test_check_card_names_the_problem(evaluated_model, change, problem):
    from qscore_hf.cards import card_from_report, load_report

    _, report_path = evaluated_model
    text = str(card_from_report(load_report(report_path)))
    check_card(text)
    with pytest.raises(ValueError, match=problem):
        check_card(change(text))
