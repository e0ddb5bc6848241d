"""Reports a newcomer reads: the correct-vs-misclassified histogram draws counts, not densities, when either group is
too small for a density to mean anything (fewer than ``FEW_SAMPLES``)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.axes import Axes

from qscore_hf.metrics import FEW_SAMPLES
from qscore_hf.plots import plot_qscore_histograms


@pytest.mark.parametrize("mistakes, density", [(7, False), (FEW_SAMPLES - 1, False), (FEW_SAMPLES, True)])
def test_histogram_draws_counts_when_a_group_is_small(tmp_path, monkeypatch, mistakes, density):
    drawn = []
    original = Axes.hist

    def record(self, values, *args, **kwargs):
        drawn.append((len(values), kwargs["density"]))
        return original(self, values, *args, **kwargs)

    labels = []
    original_set = Axes.set

    def record_labels(self, **kwargs):
        labels.append(kwargs.get("ylabel"))
        return original_set(self, **kwargs)

    monkeypatch.setattr(Axes, "hist", record)
    monkeypatch.setattr(Axes, "set", record_labels)
    correct = np.ones(360, dtype=bool)
    correct[:mistakes] = False
    plot_qscore_histograms(np.random.default_rng(0).normal(size=360), correct, tmp_path / "hist.png")
    assert drawn == [(360 - mistakes, density), (mistakes, density)]
    assert labels == ["density" if density else "samples"]
    assert (tmp_path / "hist.png").stat().st_size > 0


def test_lowest_grid_marks_each_prediction_and_mistake(tmp_path, monkeypatch):
    from qscore_hf import scoring
    from qscore_hf.data import load_image_dataset

    digits = load_image_dataset("digits", "test", max_samples=5)
    drawn = {}
    monkeypatch.setattr(scoring, "plot_image_grid", lambda images, titles, path, **kwargs: drawn.update(titles=titles))
    columns = {"q_score": np.array([0.5, 0.1, 0.3, 0.9, 0.2]), "row_id": np.arange(5),
               "label": np.array([0, 1, 2, 3, 4]), "prediction": np.array([0, 7, 2, 3, 4])}  # fmt: skip
    columns["correct"] = columns["prediction"] == columns["label"]
    scoring._plot_lowest(digits, columns, 2, tmp_path / "lowest.png")
    # the two lowest: row 1 (Q 0.1, label 1, predicted 7) and row 4 (Q 0.2, label 4, predicted 4)
    assert [title.splitlines()[-1] for title in drawn["titles"]] == ["predicted 7: MISTAKE", "predicted 4: right"]
    assert "row 1 · label 1" in drawn["titles"][0]


def test_a_run_folder_given_as_model_points_to_its_model_subfolder(tmp_path):
    from qscore_hf.scoring import load_model

    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=f"its model is {tmp_path / 'run' / 'model'}: pass that as --model"):
        load_model(tmp_path / "run")


def test_whole_run_bar_counts_down_the_estimate_and_corrects_it_after_pretraining():
    from qscore_hf.demo import TimeEstimate, WholeRunBar

    # 10 steps of 1 s of pre-training; evaluation of 600 images at a third of a step per view-image: 600 / (3*2*100)
    # = 1 step's time, 1 s. Estimated total 11 s.
    estimate = TimeEstimate(seconds_per_step=1.0, probe_steps=2, pretraining_steps=10, evaluation_images=600, views=2,
                            batch_size=100)  # fmt: skip
    now = [100.0]
    bar = WholeRunBar(estimate, enabled=False, clock=lambda: now[0], tick=None)
    assert bar.bar.total == 11.0
    now[0] = 104.0
    bar.update()
    assert bar.bar.n == 4.0  # 4 s spent: 7 s left on the estimate
    now[0] = 125.0  # pre-training runs late: the bar waits just short of its stage's end
    bar.update()
    assert bar.bar.n == 9.9
    bar.pretraining_done()  # 25 s instead of 10: the evaluation's 1 s becomes 2.5 s
    assert (bar.bar.n, bar.bar.total) == (25.0, 27.5)
    now[0] = 126.0
    bar.update()
    assert bar.bar.n == 26.0
    now[0] = 130.0
    bar.close()
    assert bar.bar.n == bar.bar.total == 30.0
