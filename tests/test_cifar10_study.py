"""CIFAR-10 as a named data set and the converged-encoder study (issue 18): resolution of ``cifar10``, its
normalization, pre-training snapshots, the study's resume (a run killed in training and in an evaluation gives the
same results as an uninterrupted one), the fair fine-tuning pair, the report's statistics and the figures."""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log; no tracker (log_with "none"): a TensorBoard event file per run costs time and nobody reads it here; no
# loader workers (num_workers 0): a worker process costs seconds to start on 2 cores.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import json
import shutil
import socket
from dataclasses import asdict, replace
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from qscore_hf import QScoreModel
from qscore_hf import data as data_module
from qscore_hf.data import CIFAR10_ENV, CIFAR10_HUB_ID, dataset_normalization, load_image_dataset
from qscore_hf.normalization import CIFAR10_MEAN, CIFAR10_STD
from qscore_hf.pretraining import PretrainConfig, log_spaced_epochs, pretrain, snapshot_folder

pytestmark = pytest.mark.usefixtures("one_thread")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
needs_cifar10 = pytest.mark.skipif(not (SHARED / "train-00000-of-00001.parquet").exists(),
                                   reason=f"the offline CIFAR-10 copy is not at {SHARED}")  # fmt: skip
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_cifar_like(folder: Path, rows: int = 40) -> Path:
    """A data set folder in the Hub's CIFAR-10 layout (parquet per split, ``img`` and ``label``), random pixels."""
    rng = np.random.default_rng(0)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(rows)]
        table = datasets.Dataset.from_dict({"img": images, "label": [k % 10 for k in range(rows)]}, features=features)
        table.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    return folder


@needs_cifar10
def test_cifar10_reads_the_local_copy_named_by_the_environment(monkeypatch):
    monkeypatch.setenv(CIFAR10_ENV, str(SHARED))
    train = load_image_dataset("cifar10", "train[0:5]")
    # CIFAR-10's data_batch_1 starts with a frog, two trucks, a deer and an automobile.
    assert train.dataset["label"] == [6, 9, 9, 4, 1]
    assert train.image_column == "img" and train.class_names == CLASSES
    assert train.dataset[0]["img"].size == (32, 32)
    assert len(load_image_dataset("cifar10", "test").dataset) == 10_000


def test_cifar10_asks_the_hub_when_no_local_copy_is_set(monkeypatch):
    monkeypatch.delenv(CIFAR10_ENV, raising=False)
    asked = []

    def load_dataset(path, *args, split=None, **kwargs):
        asked.append((path, split))
        raise ConnectionError("offline")

    monkeypatch.setattr(data_module.datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args: [])  # as if online
    with pytest.raises(ValueError, match="reachable on the Hugging Face Hub"):
        load_image_dataset("cifar10", "train[:100]")
    assert asked == [(CIFAR10_HUB_ID, "train[:100]")]


def test_a_cifar10_setting_that_is_no_folder_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(CIFAR10_ENV, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=f"{CIFAR10_ENV}=.*missing is not a folder"):
        load_image_dataset("cifar10")


def test_cifar10_by_name_or_by_path_gets_cifar_normalization(monkeypatch, tmp_path):
    folder = make_cifar_like(tmp_path / "my-cifar")
    monkeypatch.setenv(CIFAR10_ENV, str(folder))
    assert dataset_normalization(load_image_dataset("cifar10", "test")) == (CIFAR10_MEAN, CIFAR10_STD)
    by_path = load_image_dataset(str(folder), "train")
    assert by_path.known_as == "cifar10"
    assert dataset_normalization(by_path) == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))  # solo-learn's
    assert dataset_normalization(load_image_dataset("digits", "test")) == ((0.3070,) * 3, (0.3760,) * 3)


def test_pretraining_on_a_cifar10_path_normalizes_with_cifar_statistics_and_keeps_snapshots(monkeypatch, tmp_path):
    folder = make_cifar_like(tmp_path / "data", rows=32)
    cfg = PretrainConfig(method="simclr", output_dir=str(tmp_path / "run"), dataset=str(folder), backbone="resnet10t",
                         image_size=16, batch_size=16, epochs=2, warmup_epochs=0, num_workers=0, log_with="none",
                         progress=False, eval_split=None, snapshot_epochs=(1, 2), checkpoint_every=0)  # fmt: skip
    model_dir = pretrain(cfg)
    exported = QScoreModel.from_pretrained(model_dir)
    assert tuple(exported.config.image_mean) == pytest.approx(CIFAR10_MEAN)
    assert tuple(exported.config.image_std) == pytest.approx(CIFAR10_STD)
    # The epoch-2 snapshot is the exported backbone (the run ends there); epoch 1's differs from it.
    first, last = (QScoreModel.from_pretrained(snapshot_folder(cfg.output_dir, e)) for e in (1, 2))
    for name, weight in exported.backbone.state_dict().items():
        assert np.array_equal(last.backbone.state_dict()[name].numpy(), weight.numpy()), name
    assert not np.array_equal(first.backbone.conv1[0].weight.detach().numpy(), last.backbone.conv1[0].weight.detach().numpy())


def test_log_spaced_epochs():
    # 50 ** (k / 7) for k = 0..7 is 1, 1.75, 3.06, 5.34, 9.34, 16.3, 28.6, 50.
    assert log_spaced_epochs(50) == (1, 2, 3, 5, 9, 16, 29, 50)
    assert log_spaced_epochs(3) == (1, 2, 3)
    assert log_spaced_epochs(30, 4) == (1, 3, 10, 30)  # 30 ** (k / 3): 1, 3.1, 9.7, 30


# ---- the report's statistics ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trajectory(import_study):
    return import_study("trajectory")


def test_auroc_matches_scikit_learn_with_ties(trajectory):
    rng = np.random.default_rng(1)
    scores, labels = rng.integers(0, 5, 300).astype(float), rng.integers(0, 2, 300)
    assert trajectory.auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))


def test_paired_bootstrap_calls_a_difference_only_when_there_is_one(trajectory):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 400)
    noise = rng.normal(size=400)
    same = trajectory.paired_bootstrap_difference(noise, noise.copy(), labels, samples=200)
    assert same["difference"] == 0 and same["low"] == 0 and same["high"] == 0 and not same["significant"]
    # A perfect score against noise: AUROC 1 against about 0.5, a difference of about 0.5 that no resample hides.
    perfect = trajectory.paired_bootstrap_difference(labels + 0.0, noise, labels, samples=200)
    assert perfect["difference"] == pytest.approx(1 - roc_auc_score(labels, noise))
    assert perfect["significant"] and 0.35 < perfect["low"] < perfect["difference"] < perfect["high"] < 0.65
    # Two independent noise scores: no difference is called (their intervals straddle 0).
    other = trajectory.paired_bootstrap_difference(noise, rng.normal(size=400), labels, samples=200)
    assert other["low"] < 0 < other["high"] and not other["significant"]


def test_paired_accuracy_difference_by_hand(trajectory):
    # d = (1, 0, 0, 0): mean 0.25, sd 0.5, se 0.25; z(0.975) = 1.959964: 0.25 -/+ 0.48999
    small = trajectory.paired_accuracy_difference(np.array([1, 1, 1, 0]), np.array([0, 1, 1, 0]))
    assert small == pytest.approx({"difference": 0.25, "low": 0.25 - 0.48999, "high": 0.25 + 0.48999,
                                   "significant": False, "confidence": 0.95}, abs=1e-5)  # fmt: skip
    # 1,000 images, b wrong on 100 that a gets right: sd = sqrt(0.1 * 0.9 * 1000 / 999) = 0.300150, se 0.0094916
    b = np.ones(1000, dtype=bool)
    b[::10] = False
    large = trajectory.paired_accuracy_difference(np.ones(1000, dtype=bool), b)
    assert (large["difference"], large["low"], large["high"]) == pytest.approx((0.1, 0.081397, 0.118603), abs=1e-6)
    assert large["significant"]
    assert trajectory.paired_accuracy_difference(b, b)["significant"] is False  # the same probe: 0 [0, 0]
    with pytest.raises(ValueError, match="same >= 2 images"):
        trajectory.paired_accuracy_difference(b, b[:-1])


def test_correctness_packs_and_unpacks(trajectory):
    correct = np.random.default_rng(0).random(13) < 0.5  # not a multiple of 8
    packed = json.loads(json.dumps(trajectory.pack_correct(correct)))
    assert packed["n"] == 13
    np.testing.assert_array_equal(trajectory.unpack_correct(packed), correct)


# ---- the study driver on real CIFAR-10 ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(import_study):
    module = import_study("cifar10_study")
    module.use_shared_cifar10()
    return module


def tiny(study):
    return replace(study.SETTINGS["smoke"], train_split="train[0:128]", validation_split="train[45000:45096]",
                   test_split="test[0:96]", epochs=2, batch_size=32, snapshots=2, probe_epochs=3,
                   knn_monitor_train=64, knn_monitor_eval=32)  # fmt: skip


def results(out: Path) -> dict[str, dict]:
    run = out / "simclr-baseline-seed0"
    return {p.name: json.loads(p.read_text()) for p in sorted(run.glob("epoch_*.json"))}


def numbers(report: dict) -> list[float]:
    test = report["test"]
    return [test["top1"], report["knn_top1_test"], test["effective_rank"],
            *(row["auroc"] for row in test["scores"].values()), report["q_minus_rival"]["difference"]]  # fmt: skip


@needs_cifar10
def test_a_killed_study_run_resumes_and_reproduces_the_uninterrupted_one(study, import_study, tmp_path, monkeypatch):
    import qscore_hf.pretraining as pretraining

    setting = tiny(study)
    study.run(setting, "simclr", "baseline", 0, tmp_path / "work-a", tmp_path / "out-a")
    uninterrupted = results(tmp_path / "out-a")
    assert list(uninterrupted) == ["epoch_0001.json", "epoch_0002.json"]

    # Killed in the middle of epoch 2 (after epoch 1 was evaluated and written) ...
    real_step, calls = pretraining.training_step, {"n": 0}

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # 4 steps an epoch: step 6 is in epoch 2
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(pretraining, "training_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        study.run(setting, "simclr", "baseline", 0, tmp_path / "work-b", tmp_path / "out-b")
    assert list(results(tmp_path / "out-b")) == ["epoch_0001.json"]
    monkeypatch.setattr(pretraining, "training_step", real_step)
    # ... then killed during the evaluation of epoch 2 (its snapshot exists, its result does not) ...
    real_report = study.trajectory.snapshot_report
    monkeypatch.setattr(study.trajectory, "snapshot_report", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        study.run(setting, "simclr", "baseline", 0, tmp_path / "work-b", tmp_path / "out-b")
    assert snapshot_folder(tmp_path / "work-b" / "simclr-baseline-seed0", 2).is_dir()
    assert list(results(tmp_path / "out-b")) == ["epoch_0001.json"]
    monkeypatch.setattr(study.trajectory, "snapshot_report", real_report)
    # ... and run again: the same evaluations as the uninterrupted run.
    study.run(setting, "simclr", "baseline", 0, tmp_path / "work-b", tmp_path / "out-b")
    resumed = results(tmp_path / "out-b")
    assert list(resumed) == list(uninterrupted)
    for name in uninterrupted:
        assert numbers(resumed[name]) == pytest.approx(numbers(uninterrupted[name]), abs=1e-6), name
    knn = json.loads((tmp_path / "out-b" / "simclr-baseline-seed0" / "knn_monitor.json").read_text())
    assert [row["epoch"] for row in knn] == [1, 2]
    for report in resumed.values():  # the per-image correctness behind each top-1
        for split in ("validation", "test"):
            assert study.trajectory.unpack_correct(report["correct"][split]).mean() == report[split]["top1"]

    # Reports from before per-image correctness: --paired trains the probe again for both ends of a Q-reg comparison
    # (here a copy of the run posing as its Q-regularized twin) and gets the very same correctness back.
    for root in ("work-b", "out-b"):
        shutil.copytree(tmp_path / root / "simclr-baseline-seed0", tmp_path / root / "simclr-qreg-seed0")
    kept = {}
    for name in ("simclr-baseline-seed0", "simclr-qreg-seed0"):
        path = tmp_path / "out-b" / name / "epoch_0002.json"
        report = json.loads(path.read_text())
        kept[name] = report.pop("correct")
        path.write_text(json.dumps(report))
    study.add_probe_correctness(setting, tmp_path / "work-b", tmp_path / "out-b")
    for name in kept:
        assert json.loads((tmp_path / "out-b" / name / "epoch_0002.json").read_text())["correct"] == kept[name]
    comparison = import_study("study_summary").write_summary(tmp_path / "out-b", command="t", machine={})
    (row,) = comparison["regularizer_comparisons"]
    assert row["test"]["paired"]["difference"] == 0 and not row["test"]["paired"]["significant"]

    # The fine-tuning pair starts from this baseline and differs only in the Q-Score regularization.
    plain, regularized = (study.pretrain_config(setting, "simclr", v, 0, tmp_path / "work-a")
                          for v in ("finetune-plain", "finetune-qreg"))  # fmt: skip
    a, b = asdict(plain), asdict(regularized)
    assert {key for key in a if a[key] != b[key]} == {"output_dir", "qscore_reg"}
    assert a["init_from"] == str(tmp_path / "work-a" / "simclr-baseline-seed0" / "model")
    assert a["lr"] == setting.finetune_lr and a["epochs"] == setting.finetune_epochs and a["seed"] == 0

    # The summary: tables, the plateau verdict and the figures.
    summary = import_study("study_summary").write_summary(tmp_path / "out-a", command="test", machine={})
    run = summary["runs"]["simclr-baseline-seed0"]
    assert run["plateau"]["epochs"] == [2, 2]
    for png in ("auroc_vs_epoch_simclr-baseline-seed0.png", "knn_plateau.png"):
        with Image.open(tmp_path / "out-a" / png) as image:
            assert image.size[0] > 400
    assert "| 2 |" in (tmp_path / "out-a" / "summary.md").read_text()


def test_qreg_variants_differ_from_the_baseline_only_in_the_regularizer(import_study, tmp_path):
    study = import_study("cifar10_study")
    setting = study.SETTINGS["cpu"]
    baseline, qreg, zscore, weak = (asdict(study.pretrain_config(setting, "simclr", variant, 1, tmp_path))
                                    for variant in ("baseline", "qreg", "qreg-zscore", "qreg-lambda1e-4"))  # fmt: skip
    assert {key for key in qreg if qreg[key] != baseline[key]} == {"output_dir", "qscore_reg"}
    assert {key for key in zscore if zscore[key] != qreg[key]} == {"output_dir", "qscore_normalize"}
    assert (qreg["qscore_normalize"], zscore["qscore_normalize"]) == ("none", "zscore")
    assert {key for key in weak if weak[key] != qreg[key]} == {"output_dir", "lambda1"}
    assert (qreg["lambda1"], weak["lambda1"], weak["lambda2"]) == (1e-2, 1e-4, 1e-2)
    assert zscore["output_dir"] == str(tmp_path / "simclr-qreg-zscore-seed1") and zscore["seed"] == 1


def test_byol_sgd_variant_changes_only_the_optimizer(import_study, tmp_path):
    study = import_study("cifar10_study")
    setting = study.SETTINGS["cpu"]
    baseline, sgd = (asdict(study.pretrain_config(setting, "byol", variant, 0, tmp_path))
                     for variant in ("baseline", "baseline-sgd"))  # fmt: skip
    assert (baseline["optimizer"], baseline["lr"], baseline["weight_decay"]) == ("lars", 1.0, 1e-5)  # byol.yaml
    assert baseline["lars_clip"] is False  # as the CPU runs trained before clipping existed
    assert {key for key in sgd if sgd[key] != baseline[key]} == {"output_dir", "optimizer", "lr", "weight_decay"}
    assert (sgd["optimizer"], sgd["lr"], sgd["weight_decay"]) == ("sgd", 0.12, 5e-4)
    assert sgd["output_dir"] == str(tmp_path / "byol-baseline-sgd-seed0")


def test_a_recipe_suffix_carries_into_the_qreg_comparisons(import_study, tmp_path):
    study = import_study("cifar10_study")
    setting = study.SETTINGS["cpu"]
    variants = import_study("study_variants")
    assert variants.split_recipe("finetune-qreg-sgd") == ("finetune-qreg", "sgd")
    assert variants.split_recipe("qreg-zscore") == ("qreg-zscore", None)
    with pytest.raises(FileNotFoundError, match="byol-baseline-sgd-seed1"):  # its baseline has not run yet
        study.pretrain_config(setting, "byol", "finetune-plain-sgd", 1, tmp_path)
    (tmp_path / "byol-baseline-sgd-seed1" / "model").mkdir(parents=True)
    sgd, qreg, plain, tuned = (asdict(study.pretrain_config(setting, "byol", variant, 1, tmp_path))
                               for variant in ("baseline-sgd", "qreg-sgd", "finetune-plain-sgd", "finetune-qreg-sgd"))
    assert {key for key in qreg if qreg[key] != sgd[key]} == {"output_dir", "qscore_reg"}
    assert qreg["qscore_reg"] and qreg["optimizer"] == "sgd"
    # the fine-tunes start from the SGD baseline at the published learning rate, and differ only in Q-reg
    assert plain["init_from"] == str(tmp_path / "byol-baseline-sgd-seed1" / "model")
    assert (plain["optimizer"], plain["lr"], plain["weight_decay"]) == ("sgd", 1e-5, 5e-4)
    assert {key for key in tuned if tuned[key] != plain[key]} == {"output_dir", "qscore_reg"}
    summary = import_study("study_summary")
    assert summary.control_of("byol-qreg-sgd-seed1") == "byol-baseline-sgd-seed1"
    assert summary.control_of("byol-finetune-qreg-sgd-seed0") == "byol-finetune-plain-sgd-seed0"
    assert summary.control_of("byol-baseline-sgd-seed0") is None


def test_plateau_criterion_by_hand(import_study):
    summary = import_study("study_summary")
    knn = [{"epoch": e, "knn_top1": v} for e, v in enumerate([0.2, 0.4, 0.5, 0.55, 0.60, 0.605, 0.61, 0.612], 1)]
    # 8 epochs: the last quarter is epochs 7-8 (0.61, 0.612): 0.2 points apart.
    assert summary.plateau(knn, 8) == {"epochs": [7, 8], "spread_points": pytest.approx(0.2), "converged": True,
                                       "trend": None}  # two epochs: no interval
    assert summary.plateau(knn[:6], 8) is None  # not finished
    rising = [dict(row, knn_top1=row["knn_top1"] + 0.02 * row["epoch"]) for row in knn]
    assert summary.plateau(rising, 8)["converged"] is False  # 0.61 + 0.14 vs 0.612 + 0.16: 2.2 points


def test_plateau_trend_by_hand(import_study):
    summary = import_study("study_summary")
    assert summary.trend([1, 2, 3, 4, 5], [10, 11, 12, 13, 14]) == pytest.approx({"slope": 1, "low": 1, "high": 1})
    # points 0, 2, 1 at epochs 1-3: slope 0.5; residuals -0.5, 1, -0.5 give s^2 = 1.5 / 1, standard error
    # sqrt(1.5 / 2) = 0.866, and t(0.975, 1 df) = 12.706: the interval is 0.5 -/+ 11.004.
    fit = summary.trend([1, 2, 3], [0, 2, 1])
    assert fit == pytest.approx({"slope": 0.5, "low": 0.5 - 11.004, "high": 0.5 + 11.004}, abs=2e-3)
    # 12 epochs: the last quarter is epochs 10-12, rising by one point an epoch
    knn = [{"epoch": e, "knn_top1": 0.4 + 0.01 * e} for e in range(1, 13)]
    assert summary.plateau(knn, 12)["trend"] == pytest.approx({"slope": 1, "low": 1, "high": 1})


def test_qreg_activity_by_hand(import_study):
    study = import_study("cifar10_study")

    def step(epoch: int, active: tuple[float, float], size: float, q: float) -> dict:
        row = {"step": 1, "epoch": epoch, "loss": 1.0}
        for view, fraction in enumerate(active):
            row.update({f"qscore/view{view}/q_term_active_fraction": fraction, f"qscore/view{view}/num_discriminative":
                        size, f"qscore/view{view}/q_term": q, f"qscore/view{view}/l1_term": 0.04})  # fmt: skip
        return row

    rows = [step(0, (0.5, 0.3), 512, -2.0), step(0, (0.5, 0.5), 200, -4.0), {"step": 2, "epoch": 0, "knn_top1_k20": 0.3},
            step(1, (0.0, 0.0), 0, 0.0)]  # fmt: skip
    activity = study.qreg_activity(rows)
    # epoch 1: the mean of 0.5, 0.3, 0.5, 0.5 = 0.45; |D| (512 + 512 + 200 + 200) / 4 = 356; Q term -3
    assert activity == [
        {"epoch": 1, "q_term_active_fraction": pytest.approx(0.45), "num_discriminative": 356.0, "q_term": -3.0,
         "l1_term": pytest.approx(0.04)},
        {"epoch": 2, "q_term_active_fraction": 0.0, "num_discriminative": 0.0, "q_term": 0.0, "l1_term": pytest.approx(0.04)},
    ]  # fmt: skip
    assert study.qreg_activity([{"step": 1, "epoch": 0, "loss": 1.0, "ssl_loss": 1.0}]) == []  # no regularizer


# ---- the label-free extensions (item 6) -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def extensions(import_study):
    return import_study("extensions")


@pytest.fixture(scope="module")
def relu_features():
    rng = np.random.default_rng(3)
    return np.maximum(rng.normal(size=(300, 64)), 0) ** 2, np.maximum(rng.normal(size=(120, 64)), 0) ** 2


def test_q_unit_is_the_package_q_over_the_l2_norm(extensions, import_study, relu_features):
    selection = import_study("selection")
    reference, features = relu_features
    setting = extensions.ExtensionSetting(2.0, 50.0, 95.0)
    package_q, _, _ = selection.qscores(selection.ScoringSetting(2.0, "none", 50.0, 95.0), reference, features)
    expected = package_q / np.linalg.norm(features, axis=1)
    np.testing.assert_allclose(extensions.q_unit(reference, features, setting), expected, rtol=1e-5, atol=1e-12)


def test_knn_consensus_with_identical_neighbours_is_the_package_q(extensions, import_study, relu_features):
    # Each sample's 10 nearest reference rows are its own 10 copies: the neighbourhood fires exactly where the
    # sample does, so the consensus restricts nothing and the score is plain Q (zscore: the mean z of S_i).
    selection = import_study("selection")
    _, features = relu_features
    reference = np.repeat(features, 10, axis=0)
    neighbours = extensions.nearest_reference(reference, features)
    assert all(set(reference_rows // 10) == {row} for row, reference_rows in enumerate(neighbours))
    setting = extensions.ExtensionSetting(1.0, 0.0, 100.0, "zscore")
    package_q, _, _ = selection.qscores(selection.ScoringSetting(1.0, "zscore", 0.0, 100.0), reference, features)
    np.testing.assert_allclose(extensions.q_knn_consensus(reference, features, setting, neighbours), package_q, rtol=1e-5)


def test_feature_rank_by_hand(extensions):
    # Feature 0 of the reference holds 0..9, feature 1 holds 0, 10, ..., 90, feature 2 is 1 everywhere. At eps 1
    # feature 1 fires in 9 reference rows and feature 2 in one (the row that is 0 elsewhere): D (band 0-100) = {1, 2}.
    # The query row (7, 35, 0, 0, 0, 0) has mu 7 and sigma 12.8: only 35 stands above 19.8, so S = {1}.
    reference = np.zeros((10, 6))
    reference[:, 0], reference[:, 1], reference[:, 2] = np.arange(10), 10 * np.arange(10), 1.0
    query = np.array([[7.0, 35.0, 0, 0, 0, 0]])
    setting = extensions.ExtensionSetting(1.0, 0.0, 100.0)
    assert extensions.highly_activating(query, 1.0).tolist() == [[False, True, False, False, False, False]]
    # 35 is above 4 of feature 1's 10 reference values (0, 10, 20, 30): percentile 0.4.
    assert extensions.q_feature_rank(reference, query, setting) == pytest.approx([0.4])


@needs_cifar10
def test_the_supervised_control_resumes_exactly(study, import_study, tmp_path):
    supervised = import_study("supervised")
    make = lambda name: supervised.SupervisedConfig(  # noqa: E731
        output_dir=str(tmp_path / name), dataset="cifar10", split="train[0:64]", backbone="resnet10t", image_size=16,
        epochs=2, batch_size=32, snapshot_epochs=(1, 2))
    supervised.train_supervised(make("whole"))
    supervised.train_supervised(make("cut"), stop_after_epoch=1)
    assert snapshot_folder(tmp_path / "cut", 1).is_dir() and not snapshot_folder(tmp_path / "cut", 2).exists()
    supervised.train_supervised(make("cut"))
    whole, cut = (QScoreModel.from_pretrained(snapshot_folder(tmp_path / name, 2)) for name in ("whole", "cut"))
    for key, weight in whole.backbone.state_dict().items():
        assert np.allclose(cut.backbone.state_dict()[key].numpy(), weight.numpy(), atol=1e-6), key
    first = QScoreModel.from_pretrained(snapshot_folder(tmp_path / "whole", 1))
    assert whole.config.training["epochs_completed"] == 2 and first.config.training["epochs_completed"] == 1
    assert tuple(whole.config.image_mean) == pytest.approx(CIFAR10_MEAN)  # CIFAR-10's statistics, as for SSL runs


# ---- the GPU path, on the CPU (--smoke) --------------------------------------------------------------------------


def test_budget_epochs_by_hand(import_study):
    gpu = import_study("cifar10_gpu")
    assert gpu.budget_epochs(images_per_s=5000, seconds=70, num_images=18_000) == 19  # 350,000 images: 19.4 epochs
    assert gpu.budget_epochs(images_per_s=100, seconds=10, num_images=18_000) == 2  # never fewer than 2


@needs_cifar10
def test_gpu_smoke_runs_the_same_path_on_the_cpu(study, import_study, tmp_path, monkeypatch):
    gpu = import_study("cifar10_gpu")
    monkeypatch.setenv(CIFAR10_ENV, str(SHARED))
    out = tmp_path / "out"
    assert gpu.main(["--smoke", "--out", str(out), "--budget-s", "4", "--calibration-steps", "6"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["auroc.png", "summary.json", "summary.md", "timings.json"]
    timings = json.loads((out / "timings.json").read_text())["runs"]
    assert list(timings) == ["simclr-baseline-seed0", "simclr-qreg-seed0", "byol-baseline-seed0", "byol-qreg-seed0"]
    assert all(run["epochs"] >= 2 and run["calibrated_images_per_s"] > 0 for run in timings.values())
    summary = json.loads((out / "summary.json").read_text())["runs"]
    for name, run in timings.items():  # each run evaluated at epoch 1 and at its budgeted last epoch
        assert [s["epoch"] for s in summary[name]["snapshots"]] == [1, run["epochs"]]
    # The packed data: the first training images, then the held-out ones, and a refusal over the size limit.
    packed = load_image_dataset(str(tmp_path / "out-work" / "data"), "train").dataset
    original = load_image_dataset(str(SHARED), "train[45000:45001]").dataset
    assert len(packed) == 128 + 64 and packed[128]["label"] == original[0]["label"]
    monkeypatch.setenv(CIFAR10_ENV, str(SHARED))  # main() pointed it at the packed folder
    monkeypatch.setattr(gpu, "PACK_LIMIT_BYTES", 1000)
    with pytest.raises(SystemExit, match="over 0 MiB: pack fewer images"):
        gpu.pack(tmp_path / "too-big", train=32, validation=8, test=8)
    assert not (tmp_path / "too-big").exists() and not (tmp_path / ".too-big.tmp").exists()


def test_each_qreg_run_is_compared_with_its_control_by_hand(import_study):
    summary = import_study("study_summary")
    assert summary.control_of("byol-qreg-lambda1e-4-seed1") == "byol-baseline-seed1"
    assert summary.control_of("simclr-finetune-qreg-seed0") == "simclr-finetune-plain-seed0"
    assert summary.control_of("simclr-finetune-plain-seed0") is None and summary.control_of("supervised-seed0") is None

    def run(epochs: int, *snapshots: tuple[int, float, float, float]) -> dict:
        return {"config": {"pretrain": {"epochs": epochs}}, "snapshots": [
            {"epoch": e, "validation": {"top1": v}, "test": {"top1": t, "effective_rank": rank}}
            for e, v, t, rank in snapshots]}  # fmt: skip

    runs = {"simclr-baseline-seed0": run(30, (18, 0.50, 0.40, 200.0), (30, 0.60, 0.50, 220.0)),
            "simclr-qreg-seed0": run(30, (18, 0.45, 0.44, 50.0), (30, 0.54, 0.55, 58.0)),
            "simclr-qreg-zscore-seed0": run(30, (11, 0.4, 0.4, 9.0), (18, 0.40, 0.30, 180.0)),  # cut at epoch 18
            "byol-qreg-seed1": run(30, (18, 0.3, 0.3, 7.0))}  # no control yet: left out  # fmt: skip
    rows = {row["run"]: row for row in summary.regularizer_comparisons(runs)}
    assert set(rows) == {"simclr-qreg-seed0", "simclr-qreg-zscore-seed0"}
    final = rows["simclr-qreg-seed0"]
    assert (final["epoch"], final["final"], final["control"]) == (30, True, "simclr-baseline-seed0")
    assert final["validation"]["relative_change"] == pytest.approx(0.54 / 0.60 - 1)  # -10 %
    assert final["test"]["relative_change"] == pytest.approx(0.10)  # 0.55 / 0.50 - 1
    assert (final["effective_rank"], final["control_effective_rank"]) == (58.0, 220.0)
    cut = rows["simclr-qreg-zscore-seed0"]
    assert (cut["epoch"], cut["final"]) == (18, False) and cut["test"]["relative_change"] == pytest.approx(-0.25)
    table = "\n".join(summary._comparison_lines(list(rows.values())))
    assert "| simclr-qreg-seed0 | simclr-baseline-seed0 | 30 | 54.00 / 60.00 % (-10.0 %) | 55.00 / 50.00 % (+10.0 %) |" in table
    assert "| 18 (run not finished) |" in table
