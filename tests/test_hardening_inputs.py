"""Hardening (issue 33, items 6, 8-10, 17-18, 21-23): stale caches, strict dtypes and label columns, config and data
file validation, 16-bit images, report schemas and metric inputs. Every expectation is independent of the code under
test (hand-written values, round trips, the input itself)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from qscore_hf.data import load_image_dataset


# ------------------------------------------------------------------------------ 6: content identifies local files
def _replace_keeping_mtime(path, image: np.ndarray) -> None:
    stat = os.stat(path)
    Image.fromarray(image).save(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_an_image_replaced_with_its_mtime_kept_changes_the_fingerprint(tmp_path, digits, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    images, _, target = digits
    for index in range(6):
        folder = tmp_path / "folder" / "train" / f"class_{target[index]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index]).save(folder / f"{index}.png")
    before = load_image_dataset(str(tmp_path / "folder"), "train").dataset
    first = next(iter((tmp_path / "folder" / "train").rglob("0.png")))
    _replace_keeping_mtime(first, 255 - images[0])  # `cp -p`: other pixels, same path, same mtime
    after = load_image_dataset(str(tmp_path / "folder"), "train").dataset
    assert after._fingerprint != before._fingerprint
    paths = [image["path"] for image in after.cast_column("image", datasets.Image(decode=False))["image"]]
    row = [path.endswith("/0.png") for path in paths].index(True)
    np.testing.assert_array_equal(np.asarray(after[row]["image"]), 255 - images[0])


def test_a_parquet_file_replaced_with_its_mtime_kept_is_read_again(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    path = tmp_path / "data.parquet"
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    blank = [np.zeros((4, 4), np.uint8)] * 2
    datasets.Dataset.from_dict({"image": blank, "label": [0, 1]}, features=features).to_parquet(str(path))
    assert load_image_dataset(str(path)).dataset["label"] == [0, 1]
    stat = os.stat(path)
    datasets.Dataset.from_dict({"image": blank, "label": [1, 0]}, features=features).to_parquet(str(path))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert load_image_dataset(str(path)).dataset["label"] == [1, 0]


# ------------------------------------------------------------------------------ 9: integer features, exactly
# One row of 2**30 + (0, 1, 0, 0): mean 2**30 + 1/4, std sqrt(3/16) < 3/4, so at eps 1 exactly the +1 entry is
# selected and Q = 3/4. Rounded to float32 first, the four entries are equal and Q would be 0.
_BIG_ROW = [2**30, 2**30 + 1, 2**30, 2**30]


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_integer_features_above_2_to_the_24_score_exactly(dtype):
    import torch

    from qscore_hf.score import qscore

    q = qscore(np.array([_BIG_ROW] * 3, dtype=dtype), eps=1.0)
    np.testing.assert_array_equal(np.asarray(q, dtype=np.float64), [0.75] * 3)
    q = qscore(torch.tensor([_BIG_ROW], dtype=torch.int64), eps=1.0)
    assert float(q[0]) == 0.75


def test_integers_no_float_holds_are_refused():
    from qscore_hf.score import qscore

    with pytest.raises(ValueError, match=r"beyond 2\*\*53"):
        qscore(np.array([[2**60, 0, 1]], dtype=np.int64), eps=1.0)


@pytest.fixture(scope="module")
def metric():
    import evaluate

    from qscore_hf.evaluate_metric import METRIC_PATH

    return evaluate.load(str(METRIC_PATH))


def test_the_metric_scores_large_integers_exactly(metric):
    out = metric.compute(predictions=[_BIG_ROW] * 3, eps=1.0)
    assert out["q_scores"] == [0.75] * 3


def test_the_metric_scores_float32_predictions_as_before(metric):
    row = np.array([0.1, 0.7, 0.2, 0.3], dtype=np.float32)  # float32 values, scored in float32 as before
    from qscore_hf.score import qscore

    expected = np.asarray(qscore(row[None], eps=1.0))
    assert metric.compute(predictions=[row.tolist()], eps=1.0)["q_scores"] == expected.tolist()


# ------------------------------------------------------------------------------ 23: metric leftovers
@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(predictions=[[1.0, 2.0], [1.0]]), "row 0 has 2 values, row 1 has 1"),
        (dict(predictions=[]), "predictions is empty"),
        (dict(predictions=[[1.0, 2.0, 3.0]] * 4, p_lo=-5, p_hi=500), r"0 <= p_lo <= p_hi <= 100"),
        (dict(predictions=[[1.0, 2.0, 3.0]] * 4, activation_stats={"counts": [1.5, 2, 3], "num_samples": 10}),
         "counts must be whole numbers.*with fractions"),
        (dict(predictions=[[1.0, 2.0, 3.0]] * 4,
              activation_stats={"counts": np.array([True, False, True]), "num_samples": 10}),
         "counts must be whole numbers.*bool"),
        (dict(predictions=[[1.0, 2.0, 3.0]] * 4, activation_stats={"counts": [1, 2, 3], "num_samples": 10.5}),
         "num_samples must be whole numbers"),
    ],
    ids=["ragged", "empty", "percentiles", "fractional-counts", "mask-as-counts", "fractional-num-samples"],
)
def test_metric_inputs_are_refused_in_one_line(metric, kwargs, words):
    with pytest.raises(ValueError, match=words) as error:
        metric.compute(**kwargs)
    assert "\n" not in str(error.value) and "inhomogeneous" not in str(error.value)


def test_whole_float_counts_are_still_counts(metric):
    # counts [1, 2, 3] of 10 samples as floats: the same statistics as integers
    as_ints = metric.compute(predictions=[[1.0, 2.0, 3.0]] * 2, eps=0.5,
                             activation_stats={"counts": [1, 2, 3], "num_samples": 10})  # fmt: skip
    as_floats = metric.compute(predictions=[[1.0, 2.0, 3.0]] * 2, eps=0.5,
                               activation_stats={"counts": [1.0, 2.0, 3.0], "num_samples": 10.0})  # fmt: skip
    assert as_floats["q_scores"] == as_ints["q_scores"] and as_ints["num_discriminative"] >= 1
