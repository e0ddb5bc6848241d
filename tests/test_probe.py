"""Tests of the linear probe (qscore_hf.probe) on scikit-learn's digits as raw 64-pixel features.

Expectations are independent of the code under test: accuracy bounds a linear model is known to reach on digits,
NumPy means and standard deviations, scikit-learn's L2-regularised logistic regression (the same objective as the
L-BFGS probe), and the invariance of a standardized probe to rescaling its inputs.
"""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from qscore_hf.probe import LinearProbe, feature_mean_std, train_linear_probe


# Tiny CPU workloads run faster (and steadier on a shared machine) without intra-op threads.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits_split():
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x.astype(np.float32), y, test_size=0.2, random_state=0,
                                                        stratify=y)  # fmt: skip
    return x_train, x_test, y_train, y_test


def accuracy(probe: LinearProbe, features: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(probe.predict(features) == labels))


@pytest.mark.parametrize("optimizer", ["sgd", "lbfgs"])
def test_probe_on_digit_pixels_beats_90_percent(digits_split, optimizer):
    x_train, x_test, y_train, y_test = digits_split
    probe = train_linear_probe(x_train, y_train, optimizer=optimizer, progress=False)
    assert accuracy(probe, x_test, y_test) > 0.90
    assert probe.settings.optimizer == optimizer and probe.settings.epochs == 100


def test_default_settings_are_the_documented_ones(digits_split):
    x_train, _, y_train, _ = digits_split
    sgd = train_linear_probe(x_train[:64], y_train[:64], epochs=1, progress=False).settings
    assert (sgd.lr, sgd.weight_decay, sgd.momentum, sgd.batch_size, sgd.standardize) == (0.1, 0.0, 0.9, 256, True)
    lbfgs = train_linear_probe(x_train[:64], y_train[:64], epochs=1, optimizer="lbfgs", progress=False).settings
    assert (lbfgs.lr, lbfgs.weight_decay) == (1.0, 1e-4)


def test_standardization_uses_numpy_train_mean_and_std(digits_split):
    x_train, _, y_train, _ = digits_split
    probe = train_linear_probe(x_train, y_train, epochs=1, progress=False)
    mean = x_train.astype(np.float64).mean(axis=0)
    std = x_train.astype(np.float64).std(axis=0)  # population std
    assert (std == 0).any(), "digits has constant border pixels: the zero-spread rule is exercised"
    np.testing.assert_allclose(probe.mean.numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(probe.std.numpy(), np.where(std > 0, std, 1.0), rtol=1e-6)


def test_feature_mean_std_in_chunks_equals_numpy(digits_split):
    x_train = digits_split[0]
    mean, std = feature_mean_std(x_train, chunk_rows=100)
    np.testing.assert_allclose(mean, x_train.astype(np.float64).mean(axis=0), rtol=1e-12, atol=1e-12)
    reference = x_train.astype(np.float64).std(axis=0)
    np.testing.assert_allclose(std, np.where(reference > 0, reference, 1.0), rtol=1e-10)


def test_standardized_probe_ignores_the_scale_of_its_inputs(digits_split):
    x_train, x_test, y_train, _ = digits_split
    scale = np.float32(1000.0)
    plain = train_linear_probe(x_train, y_train, epochs=20, progress=False)
    scaled = train_linear_probe(x_train * scale + 5, y_train, epochs=20, progress=False)
    agreement = np.mean(plain.predict(x_test) == scaled.predict(x_test * scale + 5))
    assert agreement > 0.99


def test_lbfgs_reaches_scikit_learns_l2_logistic_regression(digits_split):
    # The L-BFGS probe minimises mean CE + wd/2 ||W||^2 on standardized features; scikit-learn's
    # LogisticRegression minimises 1/2 ||W||^2 + C * sum CE, the same optimum for C = 1 / (N * wd).
    x_train, x_test, y_train, _ = digits_split
    weight_decay = 1e-2
    probe = train_linear_probe(x_train, y_train, optimizer="lbfgs", weight_decay=weight_decay, epochs=200,
                               progress=False)  # fmt: skip
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0
    reference = LogisticRegression(C=1.0 / (len(x_train) * weight_decay), max_iter=5000, tol=1e-8)
    reference.fit((x_train - mean) / std, y_train)
    np.testing.assert_allclose(probe.linear.weight.detach().numpy(), reference.coef_, atol=5e-4)
    agreement = np.mean(probe.predict(x_test) == reference.predict((x_test - mean) / std))
    assert agreement > 0.99


def test_predict_on_a_memory_map_equals_predict_on_an_array(digits_split, tmp_path):
    x_train, x_test, y_train, _ = digits_split
    probe = train_linear_probe(x_train, y_train, epochs=5, progress=False)
    np.save(tmp_path / "x.npy", x_test)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    predictions = probe.predict(mapped, batch_size=50)
    assert predictions.dtype == np.int64 and predictions.shape == (len(x_test),)
    np.testing.assert_array_equal(predictions, probe.predict(x_test))
    np.testing.assert_array_equal(predictions, probe(torch.from_numpy(x_test)).argmax(dim=1).numpy())


def test_same_seed_same_probe(digits_split):
    x_train, _, y_train, _ = digits_split
    first = train_linear_probe(x_train, y_train, epochs=3, progress=False, seed=1)
    second = train_linear_probe(x_train, y_train, epochs=3, progress=False, seed=1)
    torch.testing.assert_close(first.linear.weight, second.linear.weight, rtol=0, atol=0)


def test_num_classes_above_the_labels_seen(digits_split):
    x_train, _, y_train, _ = digits_split
    probe = train_linear_probe(x_train, y_train, epochs=1, num_classes=12, progress=False)
    assert probe.linear.out_features == 12


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"optimizer": "adam"}, "optimizer must be one of"),
        ({"epochs": 0}, "epochs and batch_size must be positive"),
    ],
)
def test_bad_settings_are_named(digits_split, kwargs, message):
    x_train, _, y_train, _ = digits_split
    with pytest.raises(ValueError, match=message):
        train_linear_probe(x_train, y_train, progress=False, **kwargs)


def test_bad_labels_are_named(digits_split):
    x_train, _, y_train, _ = digits_split
    with pytest.raises(ValueError, match="one label per row"):
        train_linear_probe(x_train, y_train[:-1], progress=False)
    with pytest.raises(ValueError, match="non-negative integer class indices"):
        train_linear_probe(x_train, y_train - 1, progress=False)
    with pytest.raises(ValueError, match="non-negative integer class indices"):
        train_linear_probe(x_train, y_train.astype(np.float64), progress=False)
