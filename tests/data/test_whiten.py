"""ZCA is fitted on the training split alone, whitens it, is cached, and folds into the model."""

import dataclasses

import numpy as np
import pytest
import torch
from helpers import as_float64

from search.artifacts.evaluation import evaluate
from search.data import whiten
from search.data.datasets import load_dataset
from search.training.config import TrainConfig
from search.training.fit import fit


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0)


def test_zca_matrix_matches_numpys(digits):
    eps = 0.5
    x = digits.x_train.double().numpy()
    centered = x - x.mean(0)
    values, vectors = np.linalg.eigh(np.cov(centered, rowvar=False))
    expected = vectors @ np.diag(1.0 / np.sqrt(np.clip(values, 0, None) + eps)) @ vectors.T
    mean, w = whiten.zca_matrix(digits, eps)
    np.testing.assert_allclose(mean.numpy(), x.mean(0), atol=1e-6)
    # The pixels are float32: W agrees with NumPy's float64 to about 1e-6 (measured 6.5e-7), far
    # inside 1e-5; dividing the covariance by n instead of n - 1 moves it by 1.8e-4.
    np.testing.assert_allclose(w.numpy(), expected, atol=1e-5)


def test_whitened_training_split_has_unit_covariance_where_the_data_varies(digits):
    white = whiten.whitened(digits, 1e-6)
    cov = np.cov(white.x_train.double().numpy(), rowvar=False)
    varying = digits.x_train.std(0).numpy() > 1e-3  # digits has always-blank corner pixels
    strong = np.linalg.eigvalsh(cov)[-int(varying.sum()) // 2 :]
    np.testing.assert_allclose(strong, 1.0, atol=1e-2)


def test_zca_sees_only_the_training_split(digits):
    other = dataclasses.replace(digits, x_val=digits.x_val * 10 + 3, x_test=digits.x_test - 5)
    # Two computations from the same training rows (float32 sums may block differently with the
    # thread count: 1e-7); validation or test rows in the fit would move W by far more.
    torch.testing.assert_close(
        whiten.zca_matrix(digits, 1.0)[1], whiten.zca_matrix(other, 1.0)[1], rtol=0, atol=1e-6
    )


def test_whitened_data_is_made_once_per_process(digits):
    assert whiten.whitened(digits, 1.0) is whiten.whitened(digits, 1.0)
    assert whiten.whitened(digits, 1.0).x_test is digits.x_test  # only a folded model meets it


def test_a_zca_fit_returns_a_model_for_the_plain_normalized_inputs(digits):
    data = as_float64(digits)  # float64: the folded model and the trained one agree to 1e-13
    result = fit(TrainConfig(hidden=(32,), whiten="zca", zca_eps=0.1, epochs=3), data)
    val_loss, val_score = evaluate(result.model, data.x_val, data.y_val)
    assert val_score == result.history[-1].val_score
    assert val_loss == pytest.approx(result.history[-1].val_loss, rel=1e-9)
    plain = fit(TrainConfig(hidden=(32,), epochs=3), data)
    assert plain.history[-1].val_loss != result.history[-1].val_loss


def test_fold_gives_the_unfolded_models_logits(digits):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)).double()
    mean, w = whiten.zca_matrix(digits, 0.3)
    x = digits.x_val.double()
    expected = model((x - mean) @ w)
    whiten.fold_into_first_linear(model, mean, w)
    torch.testing.assert_close(model(x), expected)
