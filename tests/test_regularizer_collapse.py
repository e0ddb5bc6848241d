"""Regression test of issue 10: the default Q-Score regularizer keeps the features a baseline keeps, where SPEC §6's
literal form at the preprint's lambdas kills them (short BYOL pre-training on scikit-learn's digits, CPU).

Measured with the dead-feature fraction of the exported encoder on the digits test split (features whose maximum
over the split is 0: ReLU units that never fire), an independent count from the features themselves.
"""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log; no tracker (log_with "none"): a TensorBoard event file per run costs time and nobody reads it here; no
# loader workers (num_workers 0): a worker process costs seconds to start on 2 cores.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import numpy as np
import pytest
import torch

from qscore_hf import QScoreModel
from qscore_hf.data import load_image_dataset
from qscore_hf.pretraining import PretrainConfig, pretrain

pytestmark = pytest.mark.runs_long  # minutes of training: started first under pytest-xdist

# BYOL's CIFAR recipe (training/configs/byol.yaml) on a small timm ResNet at 16 px: 4 epochs of 22 steps.
RUN = dict(method="byol", dataset="digits", backbone="resnet10t", image_size=16, batch_size=64, epochs=4, lr=1.0,
           weight_decay=1e-5, warmup_epochs=1, num_workers=0, log_with="none", progress=False, eval_split=None,
           checkpoint_every=0, keep_checkpoints=1, qscore_warmup_samples=256, seed=0)  # fmt: skip


def dead_fraction(model_dir) -> float:
    model = QScoreModel.from_pretrained(model_dir).eval()
    test = load_image_dataset("digits", "test")
    pixels = model.image_processor()([image.convert("RGB") for image in test.dataset["image"]], return_tensors="pt")
    with torch.no_grad():
        features = model(pixels["pixel_values"], return_qscore=False).features.numpy()
    return float(np.mean(features.max(axis=0) <= 0))


@pytest.fixture(scope="module")
def dead(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("collapse")
    literal = dict(qscore_reg=True, qscore_l1_form="sum", lambda1=1e-4, lambda2=1e-4, qscore_eps=4.0)  # SPEC §6
    runs = {"baseline": {}, "literal": literal, "default": dict(qscore_reg=True)}
    dead = {name: dead_fraction(pretrain(PretrainConfig(output_dir=str(root / name), **RUN, **extra)))
            for name, extra in runs.items()}  # fmt: skip
    print(f"dead-feature fractions on the digits test split: {dead}")  # shown with pytest -s
    return dead


def test_literal_form_kills_features(dead):
    assert dead["literal"] >= dead["baseline"] + 0.5, dead


def test_default_form_keeps_the_baselines_live_features(dead):
    assert dead["default"] <= dead["baseline"] + 0.02, dead


def test_a_silenced_q_term_is_told_apart_from_a_young_encoders():
    from qscore_hf.pretraining import inert_q_term_message

    young = inert_q_term_message(3, 4.0, auto_eps=False, was_active=False)
    assert "epoch 3: the Q term pushed no sample" in young and "mu + 4 sigma" in young and "--qscore-eps auto" in young
    # eps="auto" that rose after the term had pushed samples: the term's own spiky features, not a young encoder
    silenced = inert_q_term_message(5, 8.98, auto_eps=True, was_active=True)
    assert "after it did in earlier epochs" in silenced and "risen to 8.98" in silenced and "--lambda1" in silenced
    assert "young encoder" not in silenced
    # auto eps that never let the term act, or a fixed eps: the young-encoder advice
    assert inert_q_term_message(1, 6.0, auto_eps=True, was_active=False).count("young encoder") == 1
    assert "young encoder" in inert_q_term_message(1, 4.0, auto_eps=False, was_active=True)
