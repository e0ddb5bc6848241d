"""``qscore-hf score`` on two gloo processes (``accelerate launch``) against one process, on real CIFAR-10 images:
bit-identical ``A_j`` and per-sample Q, AUROCs equal to 1e-12, outputs read back as one data set in row order, and a
run killed mid-extraction resumed with another number of processes reusing its finished feature shards; the same for
a streaming data set."""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import psutil
import pytest
import torch
from safetensors.torch import load_file

import qscore_hf.features
import qscore_hf.sharded_scoring
from qscore_hf import QScoreConfig, QScoreModel
from qscore_hf.data import load_image_dataset
from qscore_hf.features import count_activation_stats, extract_features, feature_cache_key
from qscore_hf.io_utils import sweep_stale_temporaries
from qscore_hf.linear_eval import run_linear_eval
from qscore_hf.scoring import score_dataset

from local_ports import free_port

ROOT = Path(__file__).resolve().parents[1]
CIFAR10 = next((path for path in (ROOT.parents[0] / "shared/data/cifar10", ROOT.parents[1] / "shared/data/cifar10")
                if (path / "test-00000-of-00001.parquet").exists()), None)  # fmt: skip
pytestmark = pytest.mark.skipif(CIFAR10 is None, reason="the offline CIFAR-10 copy (shared/data/cifar10) is missing")

ROWS, BATCH, EPS = 256, 32, 1.0  # eps 1 leaves this random encoder a non-degenerate Q (|D| about 180 of 512)
LOWEST = 4  # the plot of the lowest-Q images: drawn by the main process from the rows of every process
SCORE_ARGS = ["--split", "test", "--max-samples", str(ROWS), "--batch-size", str(BATCH), "--eps", str(EPS),
              "--flag-lowest", str(LOWEST), "--no-progress"]  # fmt: skip
PROBE_ARGS = ["--probe", "--probe-split", "train", "--probe-epochs", "3"]


def _launch(processes: int, args: list[str], cache: Path, program: tuple[str, ...] = ("-m", "qscore_hf.cli", "score"),
            **popen: object) -> subprocess.Popen:  # fmt: skip
    """``accelerate launch --num_processes N -m qscore_hf.cli score ...`` on the CPU, one thread a process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "QSCORE_HF_CACHE": str(cache),
           "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}  # fmt: skip
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), *program, *args]  # fmt: skip
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)  # fmt: skip


def _save_model(folder: Path, image_size: int) -> Path:
    torch.manual_seed(0)  # every process must load the same weights: a saved folder, not a fresh random model
    QScoreModel(QScoreConfig(backbone="resnet10t", image_size=image_size, crop_pct=1.0)).save_pretrained(folder)
    return folder


def _one_process(model_dir: Path, work: Path, probe: bool) -> dict:
    """The one-process run (the plain, unsharded path) and the A_j counted here from its features."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process
    try:
        model = QScoreModel.from_pretrained(model_dir)
        scored = load_image_dataset(str(CIFAR10), "test", max_samples=ROWS)
        probe_split = load_image_dataset(str(CIFAR10), "train", max_samples=ROWS) if probe else None
        summary = score_dataset(model, scored, work / "out", probe_dataset=probe_split, probe_epochs=3,
                                batch_size=BATCH, device="cpu", cache_dir=work / "cache", progress=False, eps=EPS,
                                flag_lowest=LOWEST)  # fmt: skip
        features = extract_features(model, scored, BATCH, "cpu", cache_dir=work / "cache", progress=False).features
        counts = count_activation_stats(features, EPS).counts.numpy()
    finally:
        torch.set_num_threads(threads)
    table = datasets.load_dataset("parquet", data_files=str(work / "out" / "per_sample.parquet"), split="train")
    return {"summary": summary, "per_sample": table, "counts": counts, "out": work / "out"}


def _kill_tree(run: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process under it (torchrun puts its workers in their own sessions)."""
    launcher = psutil.Process(run.pid)
    processes = [launcher, *launcher.children(recursive=True)]
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=30)
    run.communicate()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("model") / "resnet10t", 32)


@pytest.fixture(scope="module")
def one_process(model_dir, tmp_path_factory) -> dict:
    return _one_process(model_dir, tmp_path_factory.mktemp("one"), probe=True)


def test_two_gloo_processes_equal_one_process(model_dir, one_process, tmp_path):
    out = tmp_path / "two"
    run = _launch(2, ["--model", str(model_dir), "--dataset", str(CIFAR10), *SCORE_ARGS, *PROBE_ARGS,
                      "--shard-rows", str(2 * BATCH), "--out", str(out)], tmp_path / "cache")  # fmt: skip
    log = run.communicate(timeout=300)[0]
    assert run.returncode == 0, log
    assert log.count("wrote ") == 1, "only the main process reports"
    summary = json.loads((out / "summary.json").read_text())
    expected = one_process["summary"]
    assert summary["distributed"]["num_processes"] == 2 and summary["distributed"]["backend"] == "gloo"
    assert summary["distributed"]["num_shards"] == ROWS // (2 * BATCH)

    stats = load_file(out / "activation_stats.safetensors")
    assert int(stats["num_samples"]) == ROWS
    np.testing.assert_array_equal(stats["counts"].numpy(), one_process["counts"])  # A_j: bit-identical

    shards = sorted(str(path) for path in out.glob("per_sample-*-of-00002.parquet"))
    assert len(shards) == 2
    table = datasets.load_dataset("parquet", data_files=shards, split="train")
    reference = one_process["per_sample"]
    assert table["row_id"] == list(range(ROWS))  # global row ids, in data set order
    assert table["q_score"] == reference["q_score"]  # bit-identical floats
    assert table["top_features"] == reference["top_features"]
    assert table["prediction"] == reference["prediction"] and table["label"] == reference["label"]
    assert summary["num_discriminative"] == expected["num_discriminative"] > 0
    assert summary["accuracy"] == expected["accuracy"]
    assert summary["auroc"] == pytest.approx(expected["auroc"], abs=1e-12)
    aurocs = {row["score"]: row["auroc"] for row in summary["comparison"]["scores"]}
    for row in expected["comparison"]["scores"]:
        assert aurocs[row["score"]] == pytest.approx(row["auroc"], abs=1e-12), row["score"]
    np.testing.assert_allclose(table["knn_density"], reference["knn_density"], rtol=0, atol=1e-6)
    _assert_same_report_and_plots(out, one_process["out"])


def _assert_same_report_and_plots(out: Path, expected: Path) -> None:
    """report.md and the plots as one process writes them (written once, by the main process)."""
    sharded = {"activation_stats.safetensors", *(path.name for path in out.glob("per_sample-*-of-*.parquet"))}
    assert {path.name for path in out.iterdir()} - sharded == {path.name for path in expected.iterdir()} - {
        "per_sample.parquet"}
    assert (out / "report.md").read_text() == (expected / "report.md").read_text()
    for plot in json.loads((expected / "summary.json").read_text())["plots"].values():
        assert (out / plot).read_bytes() == (expected / plot).read_bytes(), plot


def test_killed_run_resumes_with_another_process_count(tmp_path):
    """Two processes killed once some feature shards are done; one process finishes, reusing them untouched."""
    model_dir = _save_model(tmp_path / "model", 128)  # 128 px: slow enough to be killed part-way
    cache, shard_rows = tmp_path / "cache", BATCH
    args = ["--model", str(model_dir), "--dataset", str(CIFAR10), *SCORE_ARGS, "--shard-rows", str(shard_rows)]
    run = _launch(2, [*args, "--out", str(tmp_path / "killed")], cache)
    shard_root = None
    deadline = time.time() + 240
    while time.time() < deadline and run.poll() is None:
        roots = list(cache.glob("*-shards"))
        if roots and len(list(roots[0].glob("rows-*"))) >= 2:
            shard_root = roots[0]
            break
        time.sleep(0.02)
    _kill_tree(run)
    assert shard_root is not None, "the run ended before two shards were written"
    finished = {path.name: (path / "features.npy").stat().st_mtime_ns for path in shard_root.glob("rows-*")}
    assert 2 <= len(finished) < ROWS // shard_rows, "killed part-way"
    assert not (tmp_path / "killed").exists()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = QScoreModel.from_pretrained(model_dir)
        scored = load_image_dataset(str(CIFAR10), "test", max_samples=ROWS)
        summary = score_dataset(model, scored, tmp_path / "resumed", batch_size=BATCH, device="cpu", cache_dir=cache,
                                progress=False, eps=EPS, shard_rows=shard_rows)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert summary["distributed"]["num_processes"] == 1
    assert summary["distributed"]["shards_extracted_by_main_process"] == ROWS // shard_rows - len(finished)
    for name, mtime in finished.items():  # reused, not rewritten
        assert (shard_root / name / "features.npy").stat().st_mtime_ns == mtime
    assert not [path for path in shard_root.iterdir() if ".tmp-" in path.name], "the killed run's debris is swept"
    one_process = _one_process(model_dir, tmp_path / "one", probe=False)
    stats = load_file(tmp_path / "resumed" / "activation_stats.safetensors")
    np.testing.assert_array_equal(stats["counts"].numpy(), one_process["counts"])
    table = datasets.load_dataset("parquet", data_files=str(tmp_path / "resumed" / "per_sample-*.parquet"),
                                  split="train")  # fmt: skip
    assert table["row_id"] == list(range(ROWS))
    assert table["q_score"] == one_process["per_sample"]["q_score"]


def test_linear_eval_on_two_gloo_processes_equals_one_process(model_dir, tmp_path):
    """training/linear_eval.py under accelerate launch: shards extracted by both processes, one report."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = run_linear_eval(model_dir, str(CIFAR10), tmp_path / "one", max_samples=ROWS, epochs=3,
                                   batch_size=BATCH, device="cpu", cache_dir=tmp_path / "one-cache", eps=EPS,
                                   update_model_card=False, progress=False)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "two"
    args = ["--model", str(model_dir), "--dataset", str(CIFAR10), "--max-samples", str(ROWS), "--epochs", "3",
            "--batch-size", str(BATCH), "--eps", str(EPS), "--shard-rows", str(2 * BATCH), "--no-model-card",
            "--no-progress", "--out", str(out)]  # fmt: skip
    run = _launch(2, args, tmp_path / "cache", program=(str(ROOT / "training" / "linear_eval.py"),))
    log = run.communicate(timeout=300)[0]
    assert run.returncode == 0, log
    assert log.count("report: ") == 1, "only the main process reports"
    report = json.loads((out / "report.json").read_text())
    assert report["num_processes"] == 2 and expected["num_processes"] == 1
    assert report["top1"] == expected["top1"] and report["qscore"]["num_discriminative"] > 0
    assert report["qscore"]["num_discriminative"] == expected["qscore"]["num_discriminative"]
    aurocs = {row["score"]: row["auroc"] for row in report["comparison"]["scores"]}
    for row in expected["comparison"]["scores"]:
        assert aurocs[row["score"]] == pytest.approx(row["auroc"], abs=1e-12), row["score"]
    two = datasets.load_dataset("parquet", data_files=str(out / "per_sample.parquet"), split="train")
    one = datasets.load_dataset("parquet", data_files=str(tmp_path / "one" / "per_sample.parquet"), split="train")
    assert two["q_score"] == one["q_score"] and two["prediction"] == one["prediction"]


def test_streaming_on_two_gloo_processes_equals_one_process(model_dir, one_process, tmp_path):
    """--streaming: the stream's blocks dealt out by split_dataset_by_node (3 blocks, the last one short: process 0
    extracts two, process 1 one) give what the map-style one-process run gives; then one process, streaming again,
    reuses every block."""
    out, cache, shard_rows = tmp_path / "two", tmp_path / "cache", 3 * BATCH
    run = _launch(2, ["--model", str(model_dir), "--dataset", str(CIFAR10), "--streaming", *SCORE_ARGS, *PROBE_ARGS,
                      "--shard-rows", str(shard_rows), "--out", str(out)], cache)  # fmt: skip
    log = run.communicate(timeout=300)[0]
    assert run.returncode == 0, log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["distributed"]["num_processes"] == 2 and summary["distributed"]["num_shards"] == 3
    assert summary["distributed"]["shards_extracted_by_main_process"] == 2  # blocks 0 and 2 of the scored split
    stats = load_file(out / "activation_stats.safetensors")
    np.testing.assert_array_equal(stats["counts"].numpy(), one_process["counts"])
    table = datasets.load_dataset("parquet", data_files=str(out / "per_sample-*.parquet"), split="train")
    reference = one_process["per_sample"]
    assert table["row_id"] == list(range(ROWS))
    assert table["q_score"] == reference["q_score"] and table["top_features"] == reference["top_features"]
    assert table["prediction"] == reference["prediction"] and table["label"] == reference["label"]
    assert summary["auroc"] == pytest.approx(one_process["summary"]["auroc"], abs=1e-12)
    _assert_same_report_and_plots(out, one_process["out"])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        streamed = load_image_dataset(str(CIFAR10), "test", streaming=True, max_samples=ROWS)
        resumed = score_dataset(QScoreModel.from_pretrained(model_dir), streamed, tmp_path / "one", batch_size=BATCH,
                                device="cpu", cache_dir=cache, progress=False, eps=EPS, shard_rows=shard_rows)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert resumed["distributed"]["shards_extracted_by_main_process"] == 0
    again = datasets.load_dataset("parquet", data_files=str(tmp_path / "one" / "per_sample-*.parquet"), split="train")
    assert again["q_score"] == reference["q_score"]


def test_misaligned_shards_are_refused_in_one_line(model_dir, tmp_path):
    model = QScoreModel.from_pretrained(model_dir)
    scored = load_image_dataset(str(CIFAR10), "test", max_samples=8)
    with pytest.raises(ValueError, match="multiple of the batch size"):
        score_dataset(model, scored, tmp_path / "out", batch_size=4, shard_rows=6, device="cpu", cache_dir=tmp_path,
                      progress=False, eps=EPS)  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_killed_runs_temporaries_are_swept_once_before_any_shard_is_written(model_dir, tmp_path, monkeypatch):
    """On several nodes sharing a cache, a sweep during the run would take another node's live temporaries (whose
    process ids are not running here) for debris: the killed runs' temporaries go once, before extraction."""
    calls = []

    def recording(parent):
        calls.append(Path(parent))
        return sweep_stale_temporaries(parent)

    monkeypatch.setattr(qscore_hf.features, "sweep_stale_temporaries", recording)
    monkeypatch.setattr(qscore_hf.sharded_scoring, "sweep_stale_temporaries", recording)
    model = QScoreModel.from_pretrained(model_dir)
    scored = load_image_dataset(str(CIFAR10), "test", max_samples=32)
    root = tmp_path / "cache" / f"{feature_cache_key(model, scored)}-shards"
    stale = root / ".rows-000000000000-000000000008.tmp-999999999-killed"  # no process has that id
    stale.mkdir(parents=True)
    summary = score_dataset(model, scored, tmp_path / "out", batch_size=8, shard_rows=8, device="cpu",
                            cache_dir=tmp_path / "cache", progress=False, eps=EPS)  # fmt: skip
    assert summary["distributed"]["shards_extracted_by_main_process"] == 4
    assert calls == [root] and not stale.exists()
