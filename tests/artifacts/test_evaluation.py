"""search.artifacts.evaluation: test scores agree with training's, reports are complete, exports read back."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from search.artifacts.evaluation import (
    evaluate,
    evaluate_split,
    format_confusion,
    load_model,
    load_state,
    mean_std,
    read_best,
    write_json,
    write_reports,
)
from search.artifacts.table_figures import REPEATS, permutation_importance
from search.data.targets import METRICS, SCORERS
from search.errors import UserError
from search.training.config import TrainConfig
from search.training.model import build_mlp

CLASSES = ("cat", "dog", "bird")


def fixed_model() -> nn.Module:
    """Class = argmax of the first three features: predictions are known in advance."""
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3, 4))
        model.bias.zero_()
    return model


def data():
    x = torch.tensor([[5.0, 0, 0, 1], [0, 5, 0, 1], [0, 0, 5, 1], [5, 0, 0, 1], [0, 5, 0, 1]])
    y = torch.tensor([0, 1, 2, 1, 1])  # sample 3 is a dog predicted as a cat
    return x, y


def test_accuracy_matches_trainer_evaluate_bit_for_bit():
    x, y = data()
    ev = evaluate_split(fixed_model(), x, y, CLASSES)
    assert ev.accuracy == evaluate(fixed_model(), x, y)[1] == 4 / 5
    assert (ev.n, ev.n_correct) == (5, 4)


def test_predictions_and_confidences_are_per_sample_softmax_of_the_predicted_class():
    x, y = data()
    ev = evaluate_split(fixed_model(), x, y, CLASSES)
    assert ev.predictions.tolist() == [0, 1, 2, 0, 1] and ev.targets.tolist() == y.tolist()
    expected = torch.softmax(fixed_model()(x), 1).max(1).values.detach().numpy()
    np.testing.assert_allclose(ev.confidences, expected, rtol=1e-6)
    assert ev.confidences.dtype == np.float32 and ((ev.confidences > 0) & (ev.confidences <= 1)).all()


def test_confusion_rows_are_true_classes_and_every_class_is_reported():
    x, y = data()
    ev = evaluate_split(fixed_model(), x[:2], y[:2], CLASSES)  # no bird at all in these two
    assert ev.confusion.shape == (3, 3) and ev.confusion.sum() == 2
    assert set(ev.report) >= {"cat", "dog", "bird", "macro avg"}
    full = evaluate_split(fixed_model(), x, y, CLASSES)
    assert full.confusion[1].tolist() == [1, 2, 0]  # true dog: one called cat, two right
    table = format_confusion(full.confusion, CLASSES).splitlines()
    assert table[0].split()[-3:] == list(CLASSES) and table[2].split() == ["dog", "1", "2", "0"]


def test_write_reports_writes_the_text_and_json_pair(tmp_path):
    x, y = data()
    ev = evaluate_split(fixed_model(), x, y, CLASSES)
    txt, js = write_reports(tmp_path, ev, header=["retrained on x"], meta={"val": float("nan")})
    text = txt.read_text()
    assert text.startswith("retrained on x\n") and "test accuracy 0.8000 (4 of 5 test rows right)" in text
    assert "precision" in text and "confusion matrix" in text
    payload = json.loads(js.read_text())  # strict JSON: NaN became null
    assert payload["val"] is None and payload["test_score"] == 0.8
    assert payload["confusion_matrix"] == ev.confusion.tolist() and payload["classes"] == list(CLASSES)


def test_mean_std_is_the_sample_std_and_zero_for_one_value():
    mean, std = mean_std([0.8, 0.9, 1.0])
    assert math.isclose(mean, 0.9) and math.isclose(std, 0.1)
    assert mean_std([0.7]) == (0.7, 0.0)


# ---------------------------------------------------------------------------- reading an export


def good_best() -> dict:
    return {
        "study": "s", "trial_number": 0, "value": 0.5, "params": {},
        "config": TrainConfig(hidden=(8,)).to_dict(), "dataset": "digits",
        "val_fraction": 0.2, "split_seed": 0,
    }  # fmt: skip


def test_read_best_accepts_what_export_writes(tmp_path):
    write_json(tmp_path / "best.json", good_best())
    assert read_best(tmp_path / "best.json") == good_best()


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "does not exist"),
        ("{", "not valid JSON"),
        ('"text"', "expected a JSON object"),
        ('{"study": "s"}', "missing key(s) trial_number"),
        (json.dumps({**good_best(), "value": "high"}), "value must be int or float"),
        (json.dumps({**good_best(), "trial_number": True}), "trial_number must be int"),
    ],
)
def test_read_best_rejects_a_missing_or_malformed_file_in_one_line(tmp_path, content, needle):
    path = tmp_path / "best.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError) as info:
        read_best(path)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_load_model_round_trips_a_state_dict(tmp_path):
    model = build_mlp(TrainConfig(hidden=(8,)), in_features=64, n_classes=10)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    again = load_model(good_best(), tmp_path / "model.pt", in_features=64, n_classes=10)
    x = torch.randn(5, 64)
    assert torch.equal(again(x), model.eval()(x)) and not again.training


def test_a_model_pt_that_does_not_fit_the_config_is_one_line(tmp_path):
    other = build_mlp(TrainConfig(hidden=(16, 4)), in_features=64, n_classes=10)
    torch.save(other.state_dict(), tmp_path / "model.pt")
    with pytest.raises(UserError) as info:
        load_model(good_best(), tmp_path / "model.pt", in_features=64, n_classes=10)
    msg = str(info.value)
    assert "does not match the config's model" in msg and "\n" not in msg
    assert "unexpected 4.weight" in msg and "shape of 0.weight [16, 64] vs [8, 64]" in msg


def test_a_model_pt_that_is_not_weights_is_one_line(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="not a PyTorch weights file"):
        load_model(good_best(), tmp_path / "model.pt", in_features=64, n_classes=10)
    with pytest.raises(UserError, match="not a state_dict"):
        load_state(fixed_model(), {"weight": "x"}, source="m.pt")


# ---------------------------------------------------------------------------- the study's metric


@pytest.mark.parametrize("metric", METRICS["regression"])
def test_the_regression_report_states_the_score_by_the_same_code(metric):
    from search.data.targets import TargetScale

    rng = np.random.default_rng(0)
    raw = rng.lognormal(3, 1, 40)
    scale = TargetScale.fit(raw, log=True)
    x = torch.as_tensor(scale.forward(raw) + rng.normal(scale=0.3, size=40))[:, None]
    y = torch.as_tensor(scale.forward(raw))
    ev = evaluate_split(nn.Identity(), x, y, (), task="regression", metric=metric, target=scale)
    assert np.allclose(ev.targets, raw) and ev.task == "regression"
    figure = ev.report["r2"] if metric == "r2" else -ev.report["rmse"]
    assert figure == ev.score  # the test report's figure is the study's score, bit for bit


class _Stand:
    """A scikit-learn model answering as an exported table `Predictor` does (outputs, predict,
    predict_proba), with class indices for classes."""

    def __init__(self, model, task: str):
        self.model, self.preprocess = model, SimpleNamespace(task=task)

    def outputs(self, rows) -> torch.Tensor:
        d = self.model.decision_function(rows)
        return torch.as_tensor(d if d.ndim == 2 else np.stack([np.zeros_like(d), d], 1))

    def predict(self, rows) -> np.ndarray:
        return self.model.predict(rows)

    def predict_proba(self, rows) -> np.ndarray:
        return self.model.predict_proba(rows)


@pytest.mark.parametrize(("metric", "n_classes"), [(m, c) for m in METRICS["classification"] for c in (2, 3)]
                         + [(m, 0) for m in METRICS["regression"]])  # fmt: skip
def test_permutation_importance_scores_the_metric_as_scikit_learns_scorer_of_its_name(metric, n_classes):
    from sklearn.datasets import make_classification, make_regression
    from sklearn.inspection import permutation_importance as sk_importance
    from sklearn.linear_model import LogisticRegression, Ridge

    task = SCORERS[metric].task
    if task == "regression":
        x, y = make_regression(n_samples=80, n_features=4, noise=30.0, bias=100.0, random_state=0)
        model = Ridge().fit(pd.DataFrame(x).add_prefix("c"), y)
    else:
        x, y = make_classification(n_samples=80, n_features=4, n_classes=n_classes, n_informative=3,
                                   n_redundant=0, random_state=0)  # fmt: skip
        model = LogisticRegression().fit(pd.DataFrame(x).add_prefix("c"), y)
    rows = pd.DataFrame(x).add_prefix("c")
    found = permutation_importance(_Stand(model, task), rows, y, metric, seed=3)
    name = "roc_auc_ovr" if metric == "roc_auc" and n_classes > 2 else metric
    want = sk_importance(model, rows, y, scoring=name, n_repeats=REPEATS, random_state=3)
    by_column = {r["column"]: (r["mean"], r["std"]) for r in found}
    for column, mean, std in zip(rows.columns, want.importances_mean, want.importances_std, strict=True):
        assert by_column[column] == pytest.approx((mean, std), rel=1e-9, abs=1e-12), column
