"""Every metric a study may name is scikit-learn's scorer of that name, and scores a stack's members
as scikit-learn scores each alone; the task rule and the target's scale do what the README says."""

import math

import numpy as np
import pytest
import torch
from sklearn import metrics
from sklearn.datasets import make_classification, make_regression
from sklearn.linear_model import LogisticRegression, Ridge

from search.data.targets import (
    DEFAULT_METRIC,
    METRICS,
    SCORERS,
    TASKS,
    TargetScale,
    infer_task,
    losses_and_scores,
    regression_figures,
    score,
    wants_log,
)

rng = np.random.default_rng(0)
K, N, C = 3, 50, 4


def test_the_metrics_are_scikit_learns_scorer_names():
    assert set(SCORERS) <= set(metrics.get_scorer_names())
    assert [m for t in TASKS for m in METRICS[t]] == list(SCORERS)
    assert all(DEFAULT_METRIC[t] in METRICS[t] for t in TASKS)


def fitted_members(task: str, n_classes: int):
    """K tiny fitted scikit-learn models on one data set, and their raw outputs stacked [K, N, C]:
    the logits (a binary model's decision d as the pair (0, d)), or the predicted values."""
    if task == "regression":
        x, y = make_regression(n_samples=60, n_features=4, noise=30.0, bias=100.0, random_state=0)
        models = [Ridge(alpha=a).fit(x, y) for a in (0.1, 30.0, 3000.0)]
        outputs = [m.predict(x)[:, None] for m in models]
    else:
        x, y = make_classification(
            n_samples=60, n_features=5, n_informative=3, n_classes=n_classes, random_state=2
        )
        models = [LogisticRegression(C=c).fit(x, y) for c in (0.001, 0.03, 100.0)]
        decisions = [m.decision_function(x) for m in models]
        outputs = [d if d.ndim == 2 else np.stack([np.zeros_like(d), d], 1) for d in decisions]
    return models, x, y, torch.as_tensor(np.stack(outputs))


@pytest.mark.parametrize(
    ("metric", "n_classes"),
    [(m, c) for m in METRICS["classification"] for c in (2, 3)] + [(m, 0) for m in METRICS["regression"]],
)
def test_every_metric_is_the_scorer_of_its_name_on_fitted_models(metric, n_classes):
    """Each SCORERS entry against `get_scorer(name)(estimator, X, y)`, computed independently:
    `score` from what the entry says the scorer asks the model for, and `losses_and_scores` from
    the raw outputs of K members at once (on the device for accuracy, log loss, R² and RMSE)."""
    scorer = SCORERS[metric]
    models, x, y, outputs = fitted_members(scorer.task, n_classes)
    name = "roc_auc_ovr" if metric == "roc_auc" and n_classes > 2 else metric  # one-vs-rest beyond 2
    want = [metrics.get_scorer(name)(m, x, y) for m in models]
    assert [score(metric, y, getattr(m, scorer.response)(x)) for m in models] == pytest.approx(
        want, rel=1e-12
    )
    _, scores = losses_and_scores(outputs, torch.as_tensor(y), task=scorer.task, metric=metric, target=None)
    assert scores == pytest.approx(want, rel=1e-9)
    assert len(set(scores)) > 1  # the members differ: each is scored as itself


def test_the_regression_report_figures_are_scikit_learns():
    truth, pred = rng.lognormal(3, 1, N), rng.lognormal(3, 1, N)
    figures = regression_figures(pred, truth)
    assert figures == pytest.approx(
        {
            "r2": metrics.r2_score(truth, pred),
            "rmse": metrics.root_mean_squared_error(truth, pred),
            "mae": metrics.mean_absolute_error(truth, pred),
        },
        rel=1e-12,
    )
    outputs, y = torch.as_tensor(pred)[None, :, None], torch.as_tensor(truth)
    for metric, figure in (("r2", "r2"), ("neg_root_mean_squared_error", "rmse")):  # the score's own code
        _, (value,) = losses_and_scores(outputs, y, task="regression", metric=metric, target=None)
        assert value == SCORERS[metric].sign * figures[figure]


def test_classification_metrics_equal_scikit_learns_member_by_member():
    logits = torch.as_tensor(rng.normal(size=(K, N, C)) * 2)
    y = torch.as_tensor(rng.integers(0, C, N))
    probs = torch.softmax(logits, 2).numpy()
    truth = y.numpy()
    expected = {
        "accuracy": [metrics.accuracy_score(truth, p.argmax(1)) for p in probs],
        "balanced_accuracy": [metrics.balanced_accuracy_score(truth, p.argmax(1)) for p in probs],
        "roc_auc": [metrics.roc_auc_score(truth, p, multi_class="ovr") for p in probs],
        "neg_log_loss": [-metrics.log_loss(truth, p, labels=range(C)) for p in probs],
    }
    for metric, want in expected.items():
        losses, scores = losses_and_scores(logits, y, task="classification", metric=metric, target=None)
        assert scores == pytest.approx(want, rel=1e-9), metric
        assert losses == pytest.approx([metrics.log_loss(truth, p, labels=range(C)) for p in probs], rel=1e-9)


def test_binary_roc_auc_ranks_the_positive_class():
    logits = torch.as_tensor(rng.normal(size=(K, N, 2)))
    y = torch.as_tensor(rng.integers(0, 2, N))
    _, scores = losses_and_scores(logits, y, task="classification", metric="roc_auc", target=None)
    want = [metrics.roc_auc_score(y.numpy(), torch.softmax(p, 1)[:, 1].numpy()) for p in logits]
    assert scores == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("log", [False, True])
def test_regression_scores_are_in_the_targets_own_units(log):
    raw = rng.lognormal(3, 1, N)
    scale = TargetScale.fit(raw, log=log)
    y = torch.as_tensor(scale.forward(raw))
    outputs = y[None, :, None] + torch.as_tensor(rng.normal(scale=0.3, size=(K, N, 1)))
    pred_raw = [scale.inverse(o[:, 0].numpy()) for o in outputs]
    _, r2 = losses_and_scores(outputs, y, task="regression", metric="r2", target=scale)
    assert r2 == pytest.approx([metrics.r2_score(raw, p) for p in pred_raw], rel=1e-9)
    losses, rmse = losses_and_scores(
        outputs, y, task="regression", metric="neg_root_mean_squared_error", target=scale
    )
    assert rmse == pytest.approx([-metrics.root_mean_squared_error(raw, p) for p in pred_raw], rel=1e-9)
    # The loss is what training minimizes: the standardized target's squared error.
    assert losses == pytest.approx([float(((o[:, 0] - y) ** 2).mean()) for o in outputs], rel=1e-9)


def test_a_non_finite_member_scores_nan_and_the_others_do_not():
    logits = torch.as_tensor(rng.normal(size=(K, N, C)))
    logits[1, 0, 0] = float("nan")
    y = torch.as_tensor(rng.integers(0, C, N))
    _, scores = losses_and_scores(logits, y, task="classification", metric="roc_auc", target=None)
    assert math.isnan(scores[1]) and not math.isnan(scores[0]) and not math.isnan(scores[2])


def test_the_task_rule():
    assert infer_task(np.array([]), is_numeric=False) == "classification"  # text, categories, booleans
    assert infer_task(np.array([0.0, 1, 2, 1, 0]), is_numeric=True) == "classification"  # few whole numbers
    assert infer_task(np.arange(21.0), is_numeric=True) == "regression"  # more than 20 values
    assert infer_task(np.array([0.5, 1, 2]), is_numeric=True) == "regression"  # not whole


def test_the_target_scale_round_trips_and_logs_only_positive_skewed_targets():
    raw = rng.lognormal(5, 1.5, 200)
    for log in (False, True):
        scale = TargetScale.fit(raw, log=log)
        z = scale.forward(raw)
        assert abs(z.mean()) < 1e-9 and abs(z.std() - 1) < 1e-9
        assert np.allclose(scale.inverse(z), raw)
    scale = TargetScale.fit(raw, log=True)
    far = np.array([scale.high + 5.0, scale.low - 5.0])  # predictions beyond anything trained on
    assert np.allclose(scale.inverse(far), [raw.max(), raw.min()])  # answered within the range
    assert scale.inverse(far, clip=False)[0] > 100 * raw.max()  # a true value maps back as it is
    assert wants_log(raw) and not wants_log(raw - raw.mean()) and not wants_log(np.linspace(10, 12, 50))
