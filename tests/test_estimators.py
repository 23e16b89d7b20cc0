"""MLPSearchClassifier and MLPSearchRegressor are scikit-learn estimators: they pass scikit-learn's
own checks, take NumPy and pandas with text columns and NaN, pickle, and work under clone,
Pipeline, cross_val_score and GridSearchCV."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import optuna
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import parametrize_with_checks

from search import MLPSearchClassifier, MLPSearchRegressor

optuna.logging.set_verbosity(optuna.logging.ERROR)
pytestmark = [
    pytest.mark.usefixtures("one_torch_thread_per_module"),
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::optuna.exceptions.ExperimentalWarning"),
]


# Tiny budgets: the checks fit dozens of times. The regressor's check_regressors_train asks for
# R² > 0.5 on 200 rows, which 3 epochs do not reach; 40 do.
@parametrize_with_checks([MLPSearchClassifier(trials=2, epochs=3), MLPSearchRegressor(trials=2, epochs=40)])
def test_scikit_learns_own_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


def _mixed_frame(n: int = 300, seed: int = 0):
    """Numeric, text and missing values; the label depends on a text column and a number."""
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], n)
    size = rng.normal(size=n)
    noise = rng.normal(size=n)
    size_seen = size.copy()
    size_seen[rng.random(n) < 0.1] = np.nan
    label = np.where((colour == "red") ^ (size > 0), "yes", "no")
    return pd.DataFrame({"colour": colour, "size": size_seen, "noise": noise}), label


def test_a_frame_with_text_and_missing_values_is_learned_and_the_fit_pickles():
    X, y = _mixed_frame(1000)
    clf = MLPSearchClassifier(trials=3, epochs=30).fit(X[:800], y[:800])
    assert list(clf.feature_names_in_) == ["colour", "size", "noise"] and clf.n_features_in_ == 3
    assert set(clf.classes_) == {"no", "yes"}
    # The rule is an interaction of a text column and a number; a tenth of the numbers are missing,
    # which caps the score near 0.95. A model that missed the interaction scores about 0.5.
    assert clf.score(X[800:], y[800:]) > 0.85
    probs = clf.predict_proba(X[800:])
    assert probs.shape == (200, 2) and np.allclose(probs.sum(1), 1)
    again = pickle.loads(pickle.dumps(clf))
    assert (again.predict(X[800:]) == clf.predict(X[800:])).all()
    assert np.array_equal(again.predict_proba(X[800:]), probs)
    assert clf.best_score_ == max(t.value for t in clf.study_.trials if t.value is not None)
    assert set(clf.best_params_) <= {p for t in clf.study_.trials for p in t.params}


def test_an_unseen_category_and_missing_values_at_prediction_still_answer():
    X, y = _mixed_frame()
    clf = MLPSearchClassifier(trials=2, epochs=5).fit(X, y)
    odd = X[:3].copy()
    odd.loc[0, "colour"] = "purple"
    odd.loc[1, "size"] = np.nan
    assert len(clf.predict(odd)) == 3


def test_the_regressor_learns_diabetes_and_reports_r2():
    X, y = load_diabetes(return_X_y=True, as_frame=True)
    reg = MLPSearchRegressor(trials=3, epochs=40).fit(X[:350], y[:350])
    assert reg.score(X[350:], y[350:]) > 0.3  # scikit-learn's MLPRegressor at its defaults: about 0.4


def test_clone_pipeline_cross_val_score_and_grid_search():
    X, y = load_breast_cancer(return_X_y=True)
    X, y = X[:200], y[:200]
    clf = MLPSearchClassifier(trials=2, epochs=5)
    assert clone(clf).get_params() == clf.get_params()
    pipe = make_pipeline(FunctionTransformer(np.log1p), clf)
    scores = cross_val_score(pipe, X, y, cv=2)
    assert len(scores) == 2 and all(s > 0.6 for s in scores)
    grid = GridSearchCV(clf, {"epochs": [3, 6]}, cv=2).fit(X, y)
    assert grid.best_params_["epochs"] in (3, 6) and grid.predict(X).shape == (200,)


def test_the_refit_preprocessing_is_fitted_on_all_of_x():
    """fit searches on a validation split, then refits on every row, the scaler included: its
    means are those of all of X, computed here by hand."""
    x, y = load_diabetes(return_X_y=True, as_frame=True)
    reg = MLPSearchRegressor(trials=2, epochs=3).fit(x, y)
    transformer = reg.predictor_.preprocess.transformer
    scaler = transformer.named_transformers_["numeric"][-1]
    if hasattr(scaler, "mean_"):  # the standard scaler; another transform has no means to compare
        assert np.allclose(scaler.mean_, x.to_numpy().mean(0))
    assert transformer.n_features_in_ == x.shape[1]
    imputer = transformer.named_transformers_["numeric"][0]
    assert np.allclose(imputer.statistics_, np.median(x.to_numpy(), axis=0))  # medians of all rows


def test_crossfit_averages_k_models_each_trained_without_one_fold():
    x, y = load_diabetes(return_X_y=True, as_frame=True)
    reg = MLPSearchRegressor(trials=2, epochs=5, crossfit=3).fit(x, y)
    members = list(reg.predictor_.model.members)
    assert len(members) == 3
    # the model's output is the mean of the three members' own outputs on the same preprocessed
    # rows (the standardized log target, which predict turns back into the target's units)
    alone = []
    for m in members:
        reg_k = pickle.loads(pickle.dumps(reg))
        reg_k.predictor_.model, reg_k.predictor_.exact = m, None
        alone.append(reg_k.predictor_.outputs(x[:20]).numpy())
    assert np.allclose(reg.predictor_.outputs(x[:20]).numpy(), np.mean(alone, axis=0), atol=1e-9)
    assert len({tuple(np.round(a.ravel(), 3)) for a in alone}) == 3  # three different models
    with pytest.raises(ValueError, match="crossfit=1"):
        MLPSearchRegressor(trials=1, epochs=1, crossfit=1).fit(x, y)
