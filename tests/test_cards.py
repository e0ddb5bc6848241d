"""Model cards: the rendered card parses as a Hub card, its metadata is right, eval results round-trip, the body
holds provenance, preprocessing, limitations and citations, and its usage code runs against a saved folder."""

from __future__ import annotations

import re
import subprocess
import sys

from huggingface_hub import EvalResult, ModelCard

from qscore_hf import QScoreConfig, QScoreModel
from qscore_hf.cards import render_model_card
from qscore_hf.convert import ConversionReport

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
