"""The numbers studies/reproduce.py puts in the README: the validation split, the regularizer settings and the
statistics over seeds, checked against hand-computed values (representation health: tests/test_health.py)."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest



@pytest.fixture(scope="module")
def reproduce(import_study):
    return import_study("reproduce")


def test_validation_split_follows_the_training_images(reproduce):
    # Pre-training and the probe use train[:N]; the validation split is the next N training images.
    scale = reproduce.SCALES["cpu"]
    assert reproduce.validation_split(scale) == f"train[{scale.max_samples}:{2 * scale.max_samples}]"
    gpu = reproduce.SCALES["gpu"]
    assert reproduce.validation_split(gpu) == "train[50000:60000]"  # Fashion-MNIST has 60,000 training images


def test_regularizer_names_and_flags(reproduce, tmp_path):
    literal = reproduce.LITERAL
    assert literal.name == "qreg-sum-l0.0001-0.0001-eps4"
    cfg = reproduce._pretrain_config(reproduce.SCALES["cpu"], "byol", tmp_path, 0, reproduce.Regularizer("normalized", 1e-4, 0.1, "auto"))
    assert (cfg.qscore_reg, cfg.qscore_l1_form, cfg.lambda2, cfg.qscore_eps) == (True, "normalized", 0.1, "auto")
    assert not reproduce._pretrain_config(reproduce.SCALES["cpu"], "byol", tmp_path, 0, None).qscore_reg


def test_the_data_pipeline_is_the_scales_and_one_out_holds_one_pipeline(reproduce, tmp_path, monkeypatch, capsys):
    cpu = reproduce.SCALES["cpu"]
    assert reproduce._pretrain_config(cpu, "byol", tmp_path, 0, None).data_pipeline == "pil"  # as its recorded runs
    tensor = dataclasses.replace(cpu, data_pipeline="tensor")
    assert reproduce._pretrain_config(tensor, "byol", tmp_path, 0, None).data_pipeline == "tensor"
    # A finished run from before the switch (no key: it drew its views with pil) and one drawn with tensor.
    for folder, result in (("simclr-baseline-seed0", {}), ("byol-baseline-seed0", {"data_pipeline": "tensor"})):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "result.json").write_text(json.dumps({"method": folder.split("-")[0], **result}))
    assert reproduce.runs_with_another_pipeline(tmp_path, "pil") == ["byol-baseline-seed0 (tensor)"]
    assert reproduce.runs_with_another_pipeline(tmp_path, "tensor") == ["simclr-baseline-seed0 (pil)"]
    monkeypatch.setattr(sys, "argv", ["reproduce.py", "--scale", "cpu", "--data-pipeline", "tensor", "--methods",
                                      "simclr", "--out", str(tmp_path)])  # fmt: skip
    with pytest.raises(SystemExit):
        reproduce.main()  # refused before any run starts
    error = capsys.readouterr().err
    assert "simclr-baseline-seed0 (pil)" in error and "its own --out" in error
    assert sorted(path.name for path in tmp_path.iterdir()) == ["byol-baseline-seed0", "simclr-baseline-seed0"]


def test_over_seeds_statistics(reproduce):
    def runs(top1: dict[str, float]) -> dict[str, dict]:
        return {key: {"top1": value / 100, "health": {"dead_fraction": 0.5 if "qreg" in key else 0.0}}
                for key, value in top1.items()}

    by_seed = {
        0: runs({"a-baseline": 50, "a-qreg": 55, "b-baseline": 40, "b-qreg": 44}),
        1: runs({"a-baseline": 60, "a-qreg": 54, "b-baseline": 40, "b-qreg": 42}),
    }
    table = reproduce.over_seeds(by_seed, ["a", "b"], ["baseline", "qreg"])
    a, b = table["methods"]["a"], table["methods"]["b"]
    assert a["baseline"]["mean"] == pytest.approx(55.0) and a["baseline"]["std"] == pytest.approx(np.sqrt(50.0))
    # a: +10 % then -10 % against the same seed's baseline; b: +10 % then +5 %.
    assert a["qreg"]["relative"] == pytest.approx([10.0, -10.0])
    assert a["qreg"]["relative_mean"] == pytest.approx(0.0, abs=1e-12)
    assert a["qreg"]["relative_std"] == pytest.approx(np.sqrt(200.0))
    assert b["qreg"]["relative_mean"] == pytest.approx(7.5) and b["qreg"]["relative_std"] == pytest.approx(np.sqrt(12.5))
    # Mean over methods per seed: (10 + 10) / 2 = 10 and (-10 + 5) / 2 = -2.5.
    mean = table["mean_relative_change"]["qreg"]
    assert mean["per_seed"] == pytest.approx([10.0, -2.5])
    assert mean["mean"] == pytest.approx(3.75) and mean["std"] == pytest.approx(np.sqrt(78.125))
    assert a["qreg"]["dead_fraction"] == 0.5 and a["baseline"]["dead_fraction"] == 0.0


def test_run_table_shows_auroc_intervals(reproduce):
    # One run whose best label-free baseline is kNN density; the ceiling's row was written without an interval.
    comparison = [{"score": name, "auroc": 0.55, "auroc_ci": [0.53, 0.57]} for name in reproduce.BASELINES]
    comparison = [row for row in comparison if row["score"] != "knn_density"]
    comparison += [{"score": "knn_density", "auroc": 0.6123, "auroc_ci": [0.6004, 0.6242]},
                   {"score": reproduce.CEILING, "auroc": 0.7441}]
    summary = {
        "settings": {"max_samples": 100, "dataset": "cifar10", "image_size": 32, "backbone": "resnet10t", "epochs": 3,
                     "batch_size": 64},
        "validation_split": "train[100:200]", "notes": "test", "scale": "cpu", "command": "x", "machine": "m",
        "cpu_threads": 2, "device": "cpu",
        "runs": [{"method": "simclr", "variant": "baseline", "seed": 0, "top1": 0.5567, "knn_top1": 0.5434,
                  "comparison": comparison, "health": {"dead_fraction": 0.0, "effective_rank": 200.0}}],
    }
    row = next(line for line in reproduce._markdown(summary).splitlines() if line.startswith("| simclr"))
    assert "| knn_density (0.612 [0.600, 0.624]) | 0.744 |" in row
