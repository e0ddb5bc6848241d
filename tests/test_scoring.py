"""Tests of ``qscore-hf score`` (``qscore_hf.cli`` and ``qscore_hf.scoring``) on a tiny random encoder.

The images are scikit-learn's digits written as PNG files into an ``imagefolder`` (``train``/``test`` splits, one
folder per class); the encoder a random CIFAR-stem ResNet-18 at 16 px. Expectations are independent of the code under
test: ``QScoreModel``'s own forward pass (``q_scores``, ``highly_activating``) on the images read with ``datasets`` and
prepared with the model's image processor, NumPy for the top features, scikit-learn for AUPRC/AUROC, PIL for the PNGs.
"""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import save as safetensors_bytes
from sklearn.metrics import average_precision_score, roc_auc_score

from qscore_hf import QScoreConfig, QScoreModel
from qscore_hf.cli import main
from qscore_hf.data import load_image_dataset
from qscore_hf.scoring import load_model, model_identity

EPS = 2.0  # random weights leave almost nothing above mu + 4 sigma; 2 gives a proper subset D
BATCH = 8
TRAIN_PER_CLASS, TEST_PER_CLASS = 6, 4
# and the list of the files written, so that a rerun replaces them and nothing else (issue 33)
BASE_FILES = {"per_sample.parquet", "summary.json", "report.md", "qscore_hist.png", ".qscore-hf-output.json"}


# Tiny CPU workloads run faster (and steadier on a shared machine) without intra-op threads.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scoring")


@pytest.fixture(scope="module", autouse=True)
def datasets_cache(workdir):
    """Keep the Arrow files that ``load_dataset("imagefolder")`` writes out of the user's cache."""
    previous = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = workdir / "datasets-cache"
    yield
    datasets.config.HF_DATASETS_CACHE = previous


@pytest.fixture(scope="module")
def folder(workdir, digits) -> Path:
    """``train/<digit>/*.png`` and ``test/<digit>/*.png``: 60 and 40 images."""
    images, _, target = digits
    root = workdir / "digits-folder"
    counts: dict[tuple[str, int], int] = {}
    for index, (image, label) in enumerate(zip(images, target)):
        for split, wanted in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
            if counts.get((split, label), 0) < wanted:
                counts[(split, label)] = counts.get((split, label), 0) + 1
                (root / split / str(label)).mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(root / split / str(label) / f"{index:04d}.png")
                break
    return root


def make_model() -> QScoreModel:
    torch.manual_seed(0)
    return QScoreModel(QScoreConfig(backbone="resnet18_cifar", image_size=16, crop_pct=1.0, qscore_eps=EPS)).eval()


def load_split(folder: Path, split: str) -> datasets.Dataset:
    return datasets.load_dataset("imagefolder", data_dir=str(folder), split=split)


def pixel_batches(model: QScoreModel, dataset: datasets.Dataset) -> list[torch.Tensor]:
    processor = model.image_processor()
    images = list(dataset["image"])
    return [processor(images[i : i + BATCH], return_tensors="pt")["pixel_values"] for i in range(0, len(images), BATCH)]


def reference(model: QScoreModel, dataset: datasets.Dataset) -> dict[str, np.ndarray]:
    """The model's own forward pass: Q-Scores, |S_i| and the top-5 features of S_i by value (NumPy sort)."""
    with torch.no_grad():
        outputs = [model(pixels, return_highly_activating=True) for pixels in pixel_batches(model, dataset)]
    features = torch.cat([out.features for out in outputs]).numpy()
    selected = torch.cat([out.highly_activating for out in outputs]).numpy()
    discriminative = np.zeros(features.shape[1], dtype=bool)
    discriminative[model.discriminative_features().numpy()] = True
    selected &= discriminative
    top = [list(np.argsort(-np.where(row, values, -np.inf), kind="stable")[: min(5, row.sum())])
           for values, row in zip(features, selected)]  # fmt: skip
    return {
        "q_score": torch.cat([out.q_scores for out in outputs]).numpy(),
        "num_selected": selected.sum(axis=1),
        "top_features": top,
        "num_discriminative": int(discriminative.sum()),
    }


@pytest.fixture(scope="module")
def plain_model_dir(workdir) -> Path:
    """A saved model without activation statistics."""
    folder = workdir / "plain-model"
    make_model().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def stats_model_dir(workdir, folder) -> Path:
    """A saved model whose activation statistics were counted on the training split."""
    model = make_model()
    model.compute_activation_stats(pixel_batches(model, load_split(folder, "train")), progress=False)
    target = workdir / "stats-model"
    model.save_pretrained(target)
    return target


def score(workdir: Path, out_name: str, model: Path | str, dataset: Path | str, *options: str) -> Path:
    out = workdir / out_name
    argv = ["score", "--model", str(model), "--dataset", str(dataset), "--out", str(out), "--batch-size", str(BATCH),
            "--cache-dir", str(workdir / "feature-cache"), "--no-progress", *options]  # fmt: skip
    assert main(argv) == 0
    return out


def read_outputs(out: Path) -> tuple[dict, dict[str, np.ndarray]]:
    summary = json.loads((out / "summary.json").read_text())
    table = pq.read_table(out / "per_sample.parquet").to_pydict()
    return summary, {name: np.asarray(values, dtype=object if name == "top_features" else None)
                     for name, values in table.items()}  # fmt: skip


@pytest.fixture(scope="module")
def saved_run(workdir, folder, stats_model_dir):
    out = score(workdir, "saved-run", stats_model_dir, folder, "--split", "test", "--flag-lowest", "6")
    return out, *read_outputs(out)


@pytest.fixture(scope="module")
def data_run(workdir, folder, plain_model_dir):
    out = score(workdir, "data-run", plain_model_dir, folder, "--split", "test")
    return out, *read_outputs(out)


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG" and min(image.size) > 100


# ------------------------------------------------------------------------------------------------- outputs
def test_every_output_file_is_written(saved_run, workdir):
    out, summary, _ = saved_run
    assert {p.name for p in out.iterdir()} == BASE_FILES | {"lowest_qscore.png"}
    for name in ("qscore_hist.png", "lowest_qscore.png"):
        assert_png(out / name)
    report = (out / "report.md").read_text()
    embedded = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert sorted(embedded) == ["lowest_qscore.png", "qscore_hist.png"]
    assert f"{summary['mean_q']:.4f}" in report and f"{summary['median_q']:.4f}" in report
    assert not [p for p in workdir.iterdir() if p.name.startswith(".saved-run.tmp")], "no temporary folder left"


def test_saved_statistics_give_the_models_own_qscores(saved_run, folder, stats_model_dir):
    _, summary, table = saved_run
    model = QScoreModel.from_pretrained(stats_model_dir).eval()
    test = load_split(folder, "test")
    expected = reference(model, test)
    np.testing.assert_array_equal(table["row_id"], np.arange(len(test)))
    np.testing.assert_array_equal(table["label"], np.asarray(test["label"]))
    np.testing.assert_allclose(table["q_score"], expected["q_score"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(table["num_selected"], expected["num_selected"])
    assert [list(row) for row in table["top_features"]] == [list(row) for row in expected["top_features"]]
    assert summary["activation_stats"] == {"source": "saved", "num_samples": 10 * TRAIN_PER_CLASS}
    assert summary["num_discriminative"] == expected["num_discriminative"]
    assert 0 < expected["num_discriminative"] < 512


def test_summary_numbers_and_identities(saved_run, folder, stats_model_dir):
    _, summary, table = saved_run
    q = table["q_score"]
    assert summary["num_samples"] == len(q) == 10 * TEST_PER_CLASS
    assert summary["mean_q"] == pytest.approx(float(np.mean(q)), abs=1e-12)
    assert summary["median_q"] == pytest.approx(float(np.median(q)), abs=1e-12)
    assert summary["empty_fraction"] == pytest.approx(float(np.mean(table["num_selected"] == 0)), abs=1e-12)
    assert summary["qscore"] == {"eps": EPS, "eps_calibration": None, "normalize": "none", "p_lo": 50.0, "p_hi": 95.0}
    assert summary["model"]["name"] == str(stats_model_dir) and summary["model"]["commit"] is None
    assert summary["model"]["config"]["backbone"] == "resnet18_cifar"
    dataset = summary["dataset"]
    assert (dataset["name"], dataset["split"], dataset["num_rows"]) == (str(folder), "test", 10 * TEST_PER_CLASS)
    # the fingerprint of the rows scored: the data set as loaded, its files identified by content (not path and mtime)
    loaded = load_image_dataset(str(folder), "test").dataset
    assert dataset["fingerprint"] == loaded._fingerprint != load_split(folder, "test")._fingerprint
    assert summary["skipped_images"]["count"] == 0


def test_lowest_grid_shows_the_lowest_scoring_images(workdir, folder, stats_model_dir, monkeypatch):
    from qscore_hf import scoring

    drawn = {}
    original = scoring.plot_image_grid

    def spy(images, titles, path, **kwargs):
        drawn.update(images=images, titles=titles)
        original(images, titles, path, **kwargs)

    monkeypatch.setattr(scoring, "plot_image_grid", spy)
    out = score(workdir, "lowest-run", stats_model_dir, folder, "--split", "test", "--max-samples", "16",
                "--flag-lowest", "3")  # fmt: skip
    _, table = read_outputs(out)
    assert_png(out / "lowest_qscore.png")
    lowest = np.argsort(table["q_score"])[:3]
    test = load_split(folder, "test")
    for image, title, index in zip(drawn["images"], drawn["titles"], lowest):
        row = int(table["row_id"][index])
        assert f"Q {table['q_score'][index]:.3g}" in title and f"row {row}" in title
        assert f"label {test.features['label'].int2str(int(test[row]['label']))}" in title
        np.testing.assert_array_equal(np.asarray(image), np.asarray(test[row]["image"]))
    assert len(drawn["titles"]) == 3


def test_statistics_from_the_data_match_the_model_after_counting_them(data_run, folder, plain_model_dir):
    _, summary, table = data_run
    model = QScoreModel.from_pretrained(plain_model_dir).eval()
    test = load_split(folder, "test")
    model.compute_activation_stats(pixel_batches(model, test), progress=False)
    expected = reference(model, test)
    assert summary["activation_stats"] == {"source": "data", "num_samples": len(test)}
    assert summary["num_discriminative"] == expected["num_discriminative"]
    np.testing.assert_allclose(table["q_score"], expected["q_score"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(table["num_selected"], expected["num_selected"])


@pytest.mark.parametrize("stats", ["saved", "data"])
def test_streaming_gives_the_same_result_as_a_loaded_data_set(stats, saved_run, data_run, workdir, folder,
                                                               stats_model_dir, plain_model_dir):  # fmt: skip
    loaded_out, loaded, loaded_table = saved_run if stats == "saved" else data_run
    model = stats_model_dir if stats == "saved" else plain_model_dir
    out = score(workdir, f"streaming-{stats}", model, folder, "--split", "test", "--streaming", "--stats", stats)
    summary, table = read_outputs(out)
    assert summary["dataset"]["streaming"] is True and summary["num_samples"] == loaded["num_samples"]
    for name in ("row_id", "label", "num_selected"):
        np.testing.assert_array_equal(table[name], loaded_table[name])
    np.testing.assert_allclose(table["q_score"], loaded_table["q_score"], rtol=1e-6, atol=1e-7)
    assert summary["num_discriminative"] == loaded["num_discriminative"]
    assert summary["activation_stats"] == loaded["activation_stats"]


def test_probe_metrics_equal_scikit_learn_on_the_per_sample_columns(workdir, folder, plain_model_dir):
    out = score(workdir, "probe-run", plain_model_dir, folder, "--split", "test", "--probe", "--probe-split", "train",
                "--probe-optimizer", "lbfgs", "--probe-epochs", "30")  # fmt: skip
    summary, table = read_outputs(out)
    assert BASE_FILES | {"pr_curve.png", "qscore_hist_correct_vs_misclassified.png"} == {p.name for p in out.iterdir()}
    for name in ("pr_curve.png", "qscore_hist_correct_vs_misclassified.png"):
        assert_png(out / name)
    correct, q = table["correct"].astype(int), table["q_score"]
    np.testing.assert_array_equal(table["correct"], table["prediction"] == table["label"])
    assert 0 < correct.mean() < 1, "the test needs both correct and misclassified samples"
    assert summary["auprc_correct"] == pytest.approx(average_precision_score(correct, q), abs=1e-12)
    assert summary["auprc_misclassified"] == pytest.approx(average_precision_score(1 - correct, -q), abs=1e-12)
    assert summary["auroc"] == pytest.approx(roc_auc_score(correct, q), abs=1e-12)
    assert summary["accuracy"] == pytest.approx(correct.mean(), abs=1e-12)
    assert summary["probe"]["split"] == "train" and summary["probe"]["num_train"] == 10 * TRAIN_PER_CLASS
    assert summary["probe"]["settings"]["optimizer"] == "lbfgs"


# ------------------------------------------------------------------------------------------------- bad input
def run_failing(capsys, workdir: Path, model: Path | str, dataset: Path | str, *options: str) -> str:
    out = workdir / "must-not-exist"
    argv = ["score", "--model", str(model), "--dataset", str(dataset), "--out", str(out), "--no-progress", *options]
    assert main(argv) == 1
    assert not out.exists()
    return capsys.readouterr().err


def test_unknown_dataset_is_named(capsys, workdir, plain_model_dir):
    missing = workdir / "no-such-dataset"
    assert str(missing) in run_failing(capsys, workdir, plain_model_dir, missing)


@pytest.mark.parametrize("option", ["--image-column", "--label-column"])
def test_unknown_column_is_named(capsys, workdir, folder, plain_model_dir, option):
    error = run_failing(capsys, workdir, plain_model_dir, folder, option, "no_such_column")
    assert "'no_such_column'" in error and "['image', 'label']" in error


def test_model_folder_without_weights_is_named(capsys, workdir, folder, plain_model_dir, tmp_path):
    broken = shutil.copytree(plain_model_dir, tmp_path / "no-weights")
    (broken / "model.safetensors").unlink()
    error = run_failing(capsys, workdir, broken, folder)
    assert str(broken) in error and "no weights" in error and "save_pretrained" in error
    with pytest.raises(ValueError, match="no weights"):
        load_model(broken)


def test_saved_statistics_requested_from_a_model_without_them(capsys, workdir, folder, plain_model_dir):
    assert "--stats data" in run_failing(capsys, workdir, plain_model_dir, folder, "--stats", "saved")


@pytest.fixture(scope="module")
def corrupt_folder(workdir, folder) -> tuple[Path, int]:
    """The test split plus one corrupt PNG; returns the folder and the corrupt file's row in data set order."""
    copy = shutil.copytree(folder / "test", workdir / "corrupt-folder" / "test")
    (copy / "3" / "0000-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n but not an image")
    raw = load_split(copy.parent, "test").cast_column("image", datasets.Image(decode=False))
    rows = [i for i, value in enumerate(raw["image"]) if value["path"].endswith("0000-corrupt.png")]
    assert len(rows) == 1
    return copy.parent, rows[0]


@pytest.mark.parametrize("stats", ["saved", "data"])
def test_corrupt_image_is_skipped_and_counted(stats, workdir, corrupt_folder, saved_run, stats_model_dir):
    root, bad_row = corrupt_folder
    out = score(workdir, f"corrupt-{stats}", stats_model_dir, root, "--split", "test", "--stats", stats)
    summary, table = read_outputs(out)
    skipped = summary["skipped_images"]
    assert skipped["count"] == 1 and skipped["row_ids"] == [bad_row]
    assert skipped["images"][0]["path"].endswith("0000-corrupt.png")
    assert summary["dataset"]["num_rows"] == 10 * TEST_PER_CLASS + 1
    assert summary["num_samples"] == 10 * TEST_PER_CLASS
    expected_rows = [row for row in range(10 * TEST_PER_CLASS + 1) if row != bad_row]
    np.testing.assert_array_equal(table["row_id"], expected_rows)
    if stats == "saved":  # D does not depend on the scored images: every other image keeps its score
        _, _, clean = saved_run
        np.testing.assert_allclose(table["q_score"], clean["q_score"], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(table["label"], clean["label"])


@pytest.mark.parametrize("stats", ["saved", "data"])
def test_corrupt_image_with_strict_images_fails_naming_the_file(stats, capsys, workdir, corrupt_folder,
                                                                stats_model_dir):  # fmt: skip
    root, bad_row = corrupt_folder
    options = ("--split", "test", "--strict-images", "--stats", stats, "--cache-dir", str(workdir / "feature-cache"))
    error = run_failing(capsys, workdir, stats_model_dir, root, *options)
    assert f"row {bad_row}" in error and "0000-corrupt.png" in error and "--strict-images" in error


# ------------------------------------------------------------------------------------------------- model identity
def hub_cache(hub: Path, repo_id: str, files: dict[str, bytes], commit: str) -> None:
    """huggingface_hub's cache layout: ``models--org--name/{refs/main, snapshots/<commit>/<file>}``."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, data in files.items():
        (repo / "snapshots" / commit / name).write_bytes(data)


def test_model_identity_names_the_hub_commit(tmp_path, monkeypatch, plain_model_dir):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    commit = "0123456789abcdef" * 2 + "01234567"
    hub_cache(tmp_path / "hub", "org/name", {"config.json": (plain_model_dir / "config.json").read_bytes()}, commit)
    model = QScoreModel.from_pretrained(plain_model_dir)
    assert model_identity(model, "org/name")["commit"] == commit
    assert model_identity(model, "org/name", revision="main")["commit"] == commit
    assert model_identity(model, str(plain_model_dir))["commit"] is None


# ------------------------------------------------------------------------------------------------- --backbone-only
@pytest.mark.filterwarnings("ignore:no discriminative features", "ignore:timm's pretrained weights")
@pytest.mark.parametrize("cached", [False, True], ids=["random", "cached-timm-weights"])
def test_backbone_only_uses_cached_timm_weights_else_random(cached, workdir, folder, tmp_path, monkeypatch):
    import timm
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    torch.manual_seed(1)
    weights = timm.create_model("resnet10t", num_classes=10).state_dict()  # with its classifier, as released
    if cached:
        files = {"model.safetensors": safetensors_bytes(weights)}
        hub_cache(tmp_path / "hub", "timm/resnet10t.c3_in1k", files, "0" * 40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, identity = load_model("resnet10t", backbone_only=True, image_size=16)
    assert any("randomly initialised" in str(warning.message) for warning in caught) is not cached
    conv = model.backbone.state_dict()["conv1.0.weight"]
    assert torch.equal(conv, weights["conv1.0.weight"]) is cached
    assert identity["weights"].startswith("timm pretrained" if cached else "random")
    assert model.config.image_size == 16 and int(model.activation_stats.num_samples) == 0

    out = score(tmp_path, "out", "resnet10t", folder, "--backbone-only", "--image-size", "16", "--split", "test",
                "--max-samples", "16")  # fmt: skip
    summary, table = read_outputs(out)
    assert summary["model"]["name"] == "resnet10t" and summary["model"]["weights"] == identity["weights"]
    assert summary["activation_stats"]["source"] == "data" and len(table["q_score"]) == 16


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` 8-bit grey pixels (48 bytes: PIL judges its size before any pixel)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_decompression_bomb_is_skipped_and_listed(workdir, folder, stats_model_dir):
    """A 20000 x 20000 PNG (over PIL's pixel limit) is listed with the unreadable images, not a crash."""
    copy = shutil.copytree(folder / "test", workdir / "bomb-folder" / "test")
    (copy / "5" / "0000-bomb.png").write_bytes(_png_header(20000, 20000))
    out = score(workdir, "bomb", stats_model_dir, copy.parent, "--split", "test", "--stats", "saved")
    summary, table = read_outputs(out)
    skipped = summary["skipped_images"]
    assert skipped["count"] == 1 and skipped["images"][0]["path"].endswith("0000-bomb.png")
    assert "DecompressionBombError" in skipped["images"][0]["error"]
    assert summary["num_samples"] == 10 * TEST_PER_CLASS == len(table["row_id"])
