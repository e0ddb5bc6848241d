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
