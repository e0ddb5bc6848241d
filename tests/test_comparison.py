"""Q-Score beside its baselines (``qscore_hf.comparison``) and the degeneracy report (``qscore_hf.degeneracy``).

Expectations: scikit-learn's ``roc_auc_score`` / ``average_precision_score`` (correct samples positive with the
score; misclassified samples positive with minus the score), AUROCs of constructed columns counted by hand
(fraction of correct/misclassified pairs ranked the right way), JSON round trips, and fractions of hand-filled
counts. One end-to-end test reads a real ``run_linear_eval`` output and recomputes its metrics from the parquet.
"""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from qscore_hf import ActivationStats, QScoreConfig, QScoreModel
from qscore_hf.comparison import ScoreComparison, compare_scores, report_text
from qscore_hf.degeneracy import degeneracy_report
from qscore_hf.metrics import auroc_interval

pytestmark = pytest.mark.usefixtures("one_thread")


def test_metrics_equal_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    correct = (rng.random(200) < 0.7).astype(int)
    scores = {"q_score": rng.normal(size=200) + correct, "l2_norm": rng.normal(size=200),
              "max_zscore": np.round(rng.normal(size=200), 1)}  # fmt: skip  (rounded: many ties)
    comparison = compare_scores(scores, correct.astype(bool))
    assert [row["score"] for row in comparison.rows] == list(scores)
    for name, values in scores.items():
        row = comparison.row(name)
        assert row["auroc"] == pytest.approx(roc_auc_score(correct, values), abs=1e-12)
        assert row["auprc_correct"] == pytest.approx(average_precision_score(correct, values), abs=1e-12)
        assert row["auprc_misclassified"] == pytest.approx(average_precision_score(1 - correct, -values), abs=1e-12)
    assert comparison.base_rate_correct == pytest.approx(correct.mean())
    assert comparison.base_rate_misclassified == pytest.approx(1 - correct.mean())
    assert comparison.num_samples == 200


# Six samples, three correct then three misclassified. AUROC = fraction of the 9 (correct, misclassified) pairs
# where the correct sample scores higher.
CORRECT = np.array([1, 1, 1, 0, 0, 0])
HOYER = np.array([6.0, 5.0, 3.0, 4.0, 2.0, 1.0])  # 6 and 5 beat all 3; 3 beats 2 and 1: 8/9 = 0.889
L2 = np.array([3.0, 1.0, 5.0, 2.0, 4.0, 6.0])  # 3 > 2; 1 beats none; 5 > 2, 4: 3/9 = 0.333
PERFECT = np.array([3.0, 2.0, 1.0, -1.0, -2.0, -3.0])  # 9/9 = 1.0


def comparison_with(q: np.ndarray, ceiling: np.ndarray | None = None) -> ScoreComparison:
    scores = {"q_score": q, "l2_norm": L2, "hoyer_sparsity": HOYER}
    if ceiling is not None:
        scores["probe_confidence"] = ceiling
    return compare_scores(scores, CORRECT)


def test_hand_counted_aurocs():
    comparison = comparison_with(PERFECT)
    assert comparison.row("hoyer_sparsity")["auroc"] == pytest.approx(8 / 9)
    assert comparison.row("l2_norm")["auroc"] == pytest.approx(3 / 9)
    assert comparison.row("q_score")["auroc"] == pytest.approx(1.0)
    assert comparison.row("nothing") is None


def test_verdict_better():
    comparison = comparison_with(PERFECT)
    assert comparison.best_label_free()["score"] == "hoyer_sparsity"
    verdict = comparison.verdict()
    assert "better than the best label-free baseline, hoyer_sparsity" in verdict
    assert "AUROC 1.000" in verdict and "AUROC 0.889" in verdict
    assert "worse" not in verdict and "chance" not in verdict


def test_verdict_worse_and_no_better_than_chance():
    verdict = comparison_with(-PERFECT).verdict()  # AUROC 0
    assert "worse than the best label-free baseline, hoyer_sparsity" in verdict
    assert "no better than chance" in verdict
    assert "AUROC 0.000" in verdict


def test_verdict_about_as_well():
    verdict = comparison_with(HOYER * 2 + 1).verdict()  # the same ranking as hoyer: 8/9 both
    assert "about as well as the best label-free baseline, hoyer_sparsity" in verdict
    assert "better than" not in verdict and "worse" not in verdict


def test_ceiling_is_reported_but_not_a_label_free_baseline():
    comparison = comparison_with(L2 + 0.5, ceiling=PERFECT)  # q ties l2 (0.333), ceiling 1.0
    assert comparison.best_label_free()["score"] == "hoyer_sparsity"
    verdict = comparison.verdict()
    assert "worse than the best label-free baseline, hoyer_sparsity" in verdict
    assert "no better than chance" in verdict  # 0.333 <= 0.5
    assert "probe_confidence, reaches 1.000" in verdict


def test_verdict_without_a_baseline():
    comparison = compare_scores({"q_score": PERFECT}, CORRECT)
    assert comparison.best_label_free() is None
    assert comparison.verdict().startswith("No comparison")


def test_table_has_a_base_rate_row():
    correct = np.array([1, 1, 1, 1, 0, 0])  # accuracy 4/6 = 0.6667, misclassified 0.3333
    comparison = compare_scores({"q_score": np.arange(6.0)[::-1].copy(), "l2_norm": np.arange(6.0)}, correct)
    for text in (comparison.table(), comparison.table(markdown=True)):
        base = [line for line in text.splitlines() if line.lstrip("| ").startswith("base rate")]
        assert len(base) == 1
        cells = [cell.strip() for cell in base[0].strip("| ").split("|")]
        assert cells[1:] == ["0.5000", "", "0.6667", "0.3333"]
        # q_score ranks every correct sample above every misclassified one: AUROC 1; l2_norm the reverse: 0.
        # DeLong: every placement value is 1 (or 0), so the variance is 0 and the interval a point.
        q_line = next(line for line in text.splitlines() if "q_score" in line)
        assert [cell.strip() for cell in q_line.strip("| ").split("|")][1:3] == ["1.0000", "[1.0000, 1.0000]"]
        l2_line = next(line for line in text.splitlines() if "l2_norm" in line)
        assert [cell.strip() for cell in l2_line.strip("| ").split("|")][1] == "0.0000"
    assert comparison.table(markdown=True).splitlines()[0].startswith("| score | AUROC | AUROC 95 % CI |")


def test_round_trip_through_json():
    comparison = comparison_with(PERFECT, ceiling=HOYER)
    comparison.notes[:] = ["a note"]
    data = json.loads(json.dumps(comparison.to_dict()))
    assert data["best_label_free"] == "hoyer_sparsity"
    assert data["verdict"] == comparison.verdict()
    again = ScoreComparison.from_dict(data)
    assert again.rows == comparison.rows
    assert (again.base_rate_correct, again.base_rate_misclassified, again.num_samples) == (0.5, 0.5, 6)
    assert again.notes == ["a note"]
    assert again.table() == comparison.table() and again.verdict() == comparison.verdict()


def test_report_text_includes_the_warning():
    rng = np.random.default_rng(0)
    correct = np.repeat([1, 0], 100)  # 100 mistakes: no few-samples note
    compared = compare_scores({"q_score": rng.normal(size=200) + correct, "l2_norm": rng.normal(size=200)}, correct)
    comparison = compared.to_dict()
    plain = report_text(comparison)
    assert compared.verdict() in plain and "base rate" in plain
    assert "WARNING" not in plain
    assert "WARNING" not in report_text(comparison, {"warning": None, "degenerate": False})
    warned = report_text(comparison, {"warning": "Q-Score is degenerate here: because.", "degenerate": True})
    assert "WARNING: Q-Score is degenerate here: because." in warned


# --------------------------------------------------------------------------- degeneracy


def test_mostly_empty_selection_is_degenerate():
    report = degeneracy_report(np.array([0, 0, 0, 2]), num_discriminative=5, stats=None, eps=4.0)
    assert report["empty_fraction"] == 0.75 and report["num_discriminative"] == 5
    assert report["degenerate"] is True
    assert "75 %" in report["warning"] and "eps='auto'" in report["warning"]
    assert report["never_active_fraction"] is None


def test_no_discriminative_feature_is_degenerate():
    stats = ActivationStats(4).add_counts(torch.tensor([0, 0, 3, 0]), 10)  # 3 of 4 never active: 75 %
    report = degeneracy_report(np.array([0, 0, 0, 0]), num_discriminative=0, stats=stats, eps=2.0)
    assert report["degenerate"] is True and report["empty_fraction"] == 1.0
    assert "|D| = 0" in report["warning"] and "75 % of features were never highly active" in report["warning"]
    assert "100 %" in report["warning"] and "eps='auto'" in report["warning"]


def test_healthy_scores_are_not_degenerate():
    # 2 of 5 empty (40 %) and exactly half empty (not more than half) are both fine.
    for sizes in ([0, 1, 2, 0, 3], [0, 1, 0, 1]):
        report = degeneracy_report(np.array(sizes), num_discriminative=7, stats=None, eps=4.0)
        assert report["degenerate"] is False and report["warning"] is None
    assert degeneracy_report(np.array([0, 1, 2, 0, 3]), 7, None, 4.0)["empty_fraction"] == pytest.approx(0.4)


def test_never_active_fraction_from_hand_filled_counts():
    stats = ActivationStats(8)
    stats.add_counts(torch.tensor([0, 3, 0, 1, 0, 0, 2, 5]), 6)
    stats.add_counts(torch.tensor([0, 0, 0, 0, 0, 1, 0, 0]), 4)  # feature 5 becomes active: zeros 0, 2, 4
    report = degeneracy_report(np.array([1, 2, 0]), num_discriminative=3, stats=stats, eps=4.0)
    assert report["never_active_fraction"] == 3 / 8
    assert degeneracy_report(np.array([1]), 3, ActivationStats(8), 4.0)["never_active_fraction"] is None  # no samples


# --------------------------------------------------------------------------- end to end


def test_linear_eval_report_matches_its_own_per_sample_columns(tmp_path):
    torch.manual_seed(0)
    QScoreModel(QScoreConfig(backbone="resnet10t", image_size=16, crop_pct=1.0)).save_pretrained(tmp_path / "m")
    from qscore_hf.linear_eval import run_linear_eval

    # eps=1: random weights leave (almost) nothing above mu + 4 sigma (or the auto eps), so |D| = 0 and a constant
    # q_score column would make the Q-Score checks below trivial.
    report = run_linear_eval(tmp_path / "m", "digits", tmp_path / "out", max_samples=200, epochs=5,
                             cache_dir=tmp_path, progress=False, eps=1.0)  # fmt: skip
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["comparison"] == json.loads(json.dumps(report["comparison"]))
    table = pq.read_table(tmp_path / "out" / "per_sample.parquet").to_pandas()
    expected_columns = {"q_score", "l2_norm", "hoyer_sparsity", "max_zscore", "knn_density", "probe_confidence"}
    assert expected_columns <= set(table.columns)
    correct = table["correct"].to_numpy().astype(int)
    assert 0 < correct.mean() < 1 and np.ptp(table["q_score"].to_numpy()) > 0
    rows = on_disk["comparison"]["scores"]
    assert {row["score"] for row in rows} == expected_columns
    for row in rows:
        values = table[row["score"]].to_numpy(dtype=np.float64)
        assert row["auroc"] == pytest.approx(roc_auc_score(correct, values), abs=1e-9), row["score"]
        assert row["auroc_ci"] == pytest.approx(list(auroc_interval(values, correct)), abs=1e-9), row["score"]
        assert row["auprc_correct"] == pytest.approx(average_precision_score(correct, values), abs=1e-9), row["score"]
        assert row["auprc_misclassified"] == pytest.approx(average_precision_score(1 - correct, -values), abs=1e-9)
    assert on_disk["comparison"]["base_rate_correct"] == pytest.approx(correct.mean())
    assert on_disk["auroc_ci"] == on_disk["comparison"]["scores"][0]["auroc_ci"]  # the headline is Q-Score's row
    empty = float(np.mean(table["num_selected"].to_numpy() == 0))
    assert on_disk["degeneracy"]["empty_fraction"] == pytest.approx(empty, abs=1e-12)
    assert on_disk["degeneracy"]["degenerate"] == (empty > 0.5 or on_disk["degeneracy"]["num_discriminative"] == 0)


# --------------------------------------------------------------------------- intervals and few mistakes


def test_rows_carry_the_delong_interval_of_their_auroc():
    rng = np.random.default_rng(1)
    correct = (rng.random(300) < 0.8).astype(int)
    scores = {"q_score": rng.normal(size=300) + correct, "l2_norm": rng.normal(size=300)}
    comparison = compare_scores(scores, correct)
    for name, values in scores.items():
        row = comparison.row(name)
        low, high = row["auroc_ci"]
        assert low < row["auroc"] < high
        assert (low, high) == pytest.approx(auroc_interval(values, correct), abs=1e-12)
        assert f"[{low:.4f}, {high:.4f}]" in next(line for line in comparison.table().splitlines() if name in line)
    assert comparison.notes == []  # 300 samples, about 60 mistakes


def test_verdict_says_when_the_difference_may_be_noise():
    # 6 samples: Q-Score 1.0 [1, 1]; hoyer 8/9 with a wide interval that reaches 1: they overlap. Hoyer's placements
    # are (1, 1, 2/3) for the correct and (2/3, 1, 1) for the misclassified samples: variance 2 * (1/27) / 3, so
    # 8/9 -+ 1.96 * 0.1571 = [0.581, 1.197], clipped to 1.
    noisy = comparison_with(PERFECT)
    assert "Q-Score (AUROC 1.000 [1.000, 1.000])" in noisy.verdict()
    assert "hoyer_sparsity (AUROC 0.889 [0.581, 1.000]); their 95 % intervals overlap, so the difference may be noise" \
        in noisy.verdict()
    # 2000 samples: Q-Score separates them, L2 is noise: intervals far apart.
    rng = np.random.default_rng(0)
    correct = np.repeat([1, 0], 1000)
    clear = compare_scores({"q_score": correct + 0.5 * rng.normal(size=2000), "l2_norm": rng.normal(size=2000)},
                           correct)  # fmt: skip
    assert clear.row("q_score")["auroc_ci"][0] > clear.row("l2_norm")["auroc_ci"][1]
    assert "better than" in clear.verdict() and "noise" not in clear.verdict()


def test_few_mistakes_get_a_note_with_the_count_and_interval():
    rng = np.random.default_rng(2)
    correct = np.ones(360, dtype=int)
    correct[:7] = 0  # 7 mistakes in 360, as the digits demo makes
    q = rng.normal(size=360)
    comparison = compare_scores({"q_score": q, "l2_norm": rng.normal(size=360)}, correct)
    low, high = auroc_interval(q, correct)
    (note,) = comparison.notes
    assert note.startswith("only 7 of 360 samples are misclassified (fewer than 30)")
    assert f"[{low:.3f}, {high:.3f}]" in note and high - low > 0.3
    assert f"WARNING: {note}" in report_text(comparison.to_dict())
    # the rule is symmetric: 7 correct samples make the AUROC as noisy
    assert "are correctly classified" in compare_scores({"q_score": q}, 1 - correct).notes[0]
    # 30 mistakes: no note
    correct[:30] = 0
    assert compare_scores({"q_score": q}, correct).notes == []
