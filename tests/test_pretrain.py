"""Pre-training with the six SSL methods on real images (scikit-learn digits), CPU, tiny settings."""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log; no tracker (log_with "none"): a TensorBoard event file per run costs time and nobody reads it here; no
# loader workers (num_workers 0): a worker process costs seconds to start on 2 cores.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qscore_hf import QScoreModel, QScoreRegularizer
from qscore_hf.pretraining import PretrainConfig, pretrain, training_step
from qscore_hf.ssl import METHODS, TransformSettings, build_method
from qscore_hf.backbones import create_backbone

from local_ports import free_port

pytestmark = pytest.mark.runs_long  # minutes of training: started first under pytest-xdist

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "training" / "pretrain.py"
# A small timm ResNet at 16 px keeps a step well under a second on 2 cores.
TINY = ["--dataset", "digits", "--backbone", "resnet10t", "--image-size", "16", "--batch-size", "16",
        "--num-workers", "0", "--log-with", "none", "--no-progress", "--log-every", "1"]


def run_script(args: list[str], tmp_path: Path, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    command = (launcher or [sys.executable]) + [str(SCRIPT), *TINY, *args]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return run


def read_log(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_and_exports_a_loadable_model(method, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    uploaded: dict[str, object] = {}

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded.update(repo_id=repo_id, files=sorted(p.name for p in Path(folder_path).iterdir()), **kwargs)
        return "https://huggingface.co/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kwargs: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    local_views = 2 if method in ("swav", "dino") else 0
    cfg = PretrainConfig(
        method=method, output_dir=str(tmp_path / method), dataset="digits", backbone="resnet10t", image_size=16,
        batch_size=16, max_samples=48, epochs=1, num_workers=0, log_with="none", progress=False, local_views=local_views,
        qscore_reg=True, qscore_warmup_samples=16, eval_split="test", knn_max_train=40, knn_max_eval=24, log_every=1,
        push_to_hub=f"org/{method}-digits",
    )
    model_dir = pretrain(cfg)
    assert uploaded["repo_id"] == f"org/{method}-digits" and uploaded["commit_message"] == f"{method} pre-training"
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= set(uploaded["files"])
    card = huggingface_hub.ModelCard.load(model_dir / "README.md")
    assert method in card.data.tags and "q-score" in card.data.tags
    assert f"- **method**: {method}" in card.text and "normalized L1 form, lambda1=0.01, lambda2=0.01, eps=auto" in card.text
    assert "- **steps**: 3" in card.text
    model = QScoreModel.from_pretrained(model_dir)
    assert model.config.ssl_method == method and model.config.qscore_regularized
    assert model.config.pretraining_data == "digits"
    # The exported scoring settings default to the ones chosen on validation (README "Results"), not the paper's.
    config = model.config
    assert (config.qscore_eps, config.qscore_normalize, config.qscore_p_lo, config.qscore_p_hi) == (1.0, "l1", 0, 100)
    assert int(model.activation_stats.num_samples) == 48  # the final pass saw every training image once
    log = read_log(tmp_path / method)
    assert [entry["step"] for entry in log if "loss" in entry] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in log if "loss" in entry)
    (knn,) = [entry for entry in log if "knn_top1_k20" in entry]
    assert 0.0 <= knn["knn_top1_k20"] <= 1.0
    # the monitor stays within its own caps: 24 of digits' test images against 40 of the 48 training images
    assert (knn["knn_eval_images"], knn["knn_train_images"]) == (24, 40)
    # Every step is logged: the epoch-end notice that the Q term pushed nothing appears exactly when no step did.
    active = [value for entry in log for key, value in entry.items() if key.endswith("q_term_active_fraction")]
    assert len(active) == 3 * (2 + local_views) and all(0.0 <= value <= 1.0 for value in active)
    assert ("the Q term pushed no sample" in capsys.readouterr().out) == (max(active) == 0.0)
    pixel_values = model.image_processor()([torch.zeros(8, 8, dtype=torch.uint8)] * 2, return_tensors="pt")["pixel_values"]
    assert model(pixel_values).q_scores.shape == (2,)


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_ssl_loss_falls_over_30_steps(method, tmp_path):
    out = tmp_path / method
    # --data-pipeline pil: over 30 steps the loss's trend is within its noise (SimCLR with pil at seed 1 rises too,
    # 3.48 -> 3.55; the per-epoch means of pil and tensor track each other over 4 epochs: 3.64/3.80/3.61/3.41 and
    # 3.62/3.76/3.65/3.32), so the test holds to the views it was written with, pil's at seed 0.
    run_script(["--method", method, "--output-dir", str(out), "--max-samples", "480", "--epochs", "1",
                "--eval-split", "none", "--warmup-epochs", "0.1", "--lr", "0.3", "--data-pipeline", "pil"], tmp_path)
    losses = [entry["ssl_loss"] for entry in read_log(out) if "ssl_loss" in entry]
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first, losses


def test_qscore_reg_adds_exactly_the_regularizer_value(digits_views):
    torch.manual_seed(0)
    method = build_method("simclr", create_backbone("resnet10t"), 512)
    regularizer = QScoreRegularizer(512, lambda1=0.1, lambda2=0.1, eps=1.0)
    plain = training_step(method, None, digits_views, 0, 10, 0)
    regularized = training_step(method, regularizer, digits_views, 0, 10, 0)
    expected = sum(float(regularizer(features).loss) for features in plain.features)
    assert float(regularized.ssl_loss) == pytest.approx(float(plain.ssl_loss), abs=1e-6)
    assert float(regularized.loss) - float(plain.loss) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert expected != 0.0


@pytest.fixture
def digits_views():
    from qscore_hf.data import load_image_dataset

    data = load_image_dataset("digits", max_samples=16)
    transform = METHODS["simclr"].build_transform(TransformSettings(16, (0.3,) * 3, (0.37,) * 3))
    torch.manual_seed(1)
    views = [transform(row["image"].convert("RGB")) for row in data.dataset]
    return [torch.stack(view) for view in zip(*views)]


def test_resume_after_restart_equals_an_uninterrupted_run(tmp_path):
    common = ["--method", "byol", "--max-samples", "64", "--epochs", "3", "--max-steps", "6", "--checkpoint-every", "3",
              "--qscore-reg", "--qscore-warmup-samples", "32", "--eval-split", "none"]
    run_script([*common, "--output-dir", str(tmp_path / "straight")], tmp_path)
    run_script([*common, "--output-dir", str(tmp_path / "resumed"), "--stop-after-steps", "3"], tmp_path)
    assert not (tmp_path / "resumed" / "model").exists()
    run = run_script([*common, "--output-dir", str(tmp_path / "resumed"), "--resume", "auto"], tmp_path)
    assert "resumed from" in run.stdout + run.stderr

    # A run killed with SIGKILL right after its first checkpoint, then resumed, loses nothing either.
    killed = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(SCRIPT), *TINY, *common, "--output-dir", str(killed)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list((killed / "checkpoints").glob("step_*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "model").exists(), "the run ended before it could be killed"
    run = run_script([*common, "--output-dir", str(killed), "--resume", "auto"], tmp_path)
    assert "resumed from" in run.stdout + run.stderr

    # Each log holds every step once: what a run logged after the checkpoint it is resumed from is dropped.
    for run_dir in ("straight", "resumed", "killed"):
        assert [entry["step"] for entry in read_log(tmp_path / run_dir) if "loss" in entry] == [1, 2, 3, 4, 5, 6]

    straight = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    for other in ("resumed", "killed"):
        weights = load_file(tmp_path / other / "model" / "model.safetensors")
        assert straight.keys() == weights.keys()
        for key in straight:
            assert torch.equal(straight[key], weights[key]), (other, key)


def test_two_process_run_uses_global_statistics(tmp_path):
    out = tmp_path / "ddp"
    # accelerate's torchrun launcher; on a machine without a GPU the script's processes form a gloo group.
    # (`--cpu` would pick the MPI launcher, which needs mpirun.)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port())]  # not torch's default: another test's group may hold it
    run = run_script(["--method", "simclr", "--output-dir", str(out), "--max-samples", "64", "--epochs", "1",
                      "--qscore-reg", "--qscore-warmup-samples", "1000", "--eval-split", "none",
                      "--checkpoint-every", "0", "--qscore-eps", "4", "--scoring-eps", "2", "--scoring-normalize",
                      "zscore", "--scoring-p-lo", "25", "--scoring-p-hi", "90"], tmp_path, launcher=launcher)  # fmt: skip
    # (A fixed eps: with the default eps="auto" the statistics restart at each epoch's recalibration.)
    assert run.stdout.count("saved the pre-trained QScoreModel") == 1  # the main process says it
    model = QScoreModel.from_pretrained(out / "model")
    assert model.config.training["num_processes"] == 2
    config = model.config
    assert (config.qscore_eps, config.qscore_normalize, config.qscore_p_lo, config.qscore_p_hi) == (2, "zscore", 25, 90)
    # The final statistics pass: 64 images split over 2 processes, summed back to all 64.
    assert int(model.activation_stats.num_samples) == 64
    # The regularizer's running statistics: 2 steps x 2 views x the global batch of 2 x 16 images.
    (checkpoint,) = (out / "checkpoints").glob("step_*")
    regularizer_state = torch.load(checkpoint / "custom_checkpoint_1.pkl", weights_only=True)
    assert int(regularizer_state["stats.num_samples"]) == 2 * 2 * 32


def test_unwritable_output_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = PretrainConfig(method="simclr", output_dir=str(blocker / "run"), dataset="digits", backbone="resnet10t",
                         image_size=16, batch_size=16, max_samples=32, epochs=1, num_workers=0, log_with="none")
    with pytest.raises(ValueError, match="not writable"):
        pretrain(cfg)


def test_vit_backbone_is_built_for_the_training_image_size(tmp_path):
    """A ViT's position embedding has one entry per patch: pre-training at 32 px builds timm's ViT for 32 px (as
    ``qscore-hf score`` does), and the exported model rebuilds it offline from its config."""
    cfg = PretrainConfig(method="dino", output_dir=str(tmp_path / "vit"), dataset="digits",
                         backbone="vit_tiny_patch16_224", image_size=32, batch_size=16, max_samples=32, epochs=1,
                         num_workers=0, log_with="none", progress=False, eval_split=None, checkpoint_every=0)  # fmt: skip
    with pytest.warns(UserWarning, match="negative values"):  # ViT features are signed (SPEC §1)
        model_dir = pretrain(cfg)
    model = QScoreModel.from_pretrained(model_dir)
    assert model.config.backbone_config == {"img_size": 32} and model.config.hidden_size == 192
    assert model.backbone.patch_embed.grid_size == (2, 2)  # 32 px in 16 px patches
    assert model(torch.zeros(2, 3, 32, 32)).features.shape == (2, 192)


def test_qscore_normalize_reaches_the_regularizer_and_the_saved_recipe(tmp_path, monkeypatch, training_script):
    import qscore_hf.pretraining as pretraining

    script = training_script("pretrain")
    cfg = script.parse_args([*TINY, "--method", "simclr", "--output-dir", str(tmp_path / "run"), "--max-samples", "48",
                             "--epochs", "1", "--eval-split", "none", "--qscore-reg", "--qscore-normalize", "zscore",
                             "--qscore-warmup-samples", "16"])  # fmt: skip
    assert cfg.qscore_normalize == "zscore"
    plain = script.parse_args([*TINY, "--method", "simclr", "--output-dir", str(tmp_path / "other")])
    assert plain.qscore_normalize == "none"  # SPEC §4's Q by default

    built = []

    class Recording(QScoreRegularizer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self.normalize)

    monkeypatch.setattr(pretraining, "QScoreRegularizer", Recording)
    model_dir = pretrain(cfg)
    assert built == ["zscore"]
    assert QScoreModel.from_pretrained(model_dir).config.qscore_regularization["normalize"] == "zscore"
    # zscore: Q_i is the mean z-score of the selected features, each above eps, so a non-zero Q_i exceeds eps
    logged = [row for row in read_log(tmp_path / "run") if "qscore/view0/alpha_mean_q" in row]
    assert logged and all(row["qscore/view0/alpha_mean_q"] >= 0 for row in logged)


def test_method_kwargs_override_single_keys_of_the_config(tmp_path, training_script):
    config = tmp_path / "byol.yaml"
    config.write_text("method: byol\nmethod_kwargs:\n  proj_hidden_dim: 64\n  pred_hidden_dim: 32\n")
    cfg = training_script("pretrain").parse_args([
        "--method", "byol", "--config", str(config), "--output-dir", str(tmp_path / "run"),
        "--method-kwargs", '{"momentum_start": 0.9, "pred_hidden_dim": 16}'])  # fmt: skip
    assert cfg.method_kwargs == {"proj_hidden_dim": 64, "pred_hidden_dim": 16, "momentum_start": 0.9}


def test_unknown_method_kwarg_is_named_before_training(tmp_path, capsys, training_script):
    with pytest.raises(SystemExit) as exit:
        training_script("pretrain").parse_args(["--method", "simclr", "--output-dir", str(tmp_path / "run"),
                                                "--method-kwargs", '{"momentum_start": 0.9}'])  # fmt: skip
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert "simclr has no hyper-parameter(s) ['momentum_start']" in error
    assert "it takes ['proj_hidden_dim', 'proj_output_dim', 'temperature']" in error
    assert not (tmp_path / "run").exists()
