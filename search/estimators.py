"""scikit-learn estimators that search an MLP for the data they are fitted on.

    from search import MLPSearchClassifier
    clf = MLPSearchClassifier(trials=30).fit(X_train, y_train)     # NumPy or pandas, NaN, text
    clf.predict(X_test), clf.predict_proba(X_test), clf.best_params_, clf.study_

`fit(X, y)` holds out `val_fraction` of the rows (stratified for classification), runs the table
study's search on them (the shipped studies/table.toml, or `study`; `space` overrides knobs of its
[space] table, `epochs` its budget), then **refits** the best config on every row of X, as
`GridSearchCV(refit=True)` does: the validation rows' work (choosing the config) is done, and the
final model should learn from all the data it was given; the preprocessing (search.data.tables)
is fitted again on all of X too. With `crossfit` K >= 2 the best config is instead trained K times,
each time leaving one fold of X out, and the K models averaged (search.artifacts.refit, as
`search.export --crossfit K`). The study lives in memory unless `storage` names an
Optuna storage URL. Fitted estimators pickle, clone, and run under `Pipeline`, `cross_val_score`
and `GridSearchCV`; tests/test_estimators.py runs scikit-learn's own `parametrize_with_checks`.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import optuna
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils import check_array
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_consistent_length, check_is_fitted, column_or_1d, validate_data

from search.artifacts.predict import Predictor, Preprocess
from search.artifacts.refit import refit
from search.data.tables import TableSpec, load_table
from search.device import resolve_device
from search.errors import UserError
from search.schema import ATTR_BASELINE, ATTR_SEED
from search.tuning.objective import Objective
from search.tuning.runner import run_trials
from search.tuning.space import parse_space, replay_config
from search.tuning.strategy import make_pruner, make_sampler
from search.tuning.study_file import load_study

TARGET = "__target__"  # the target's column in the frame the search reads


class _MLPSearch(BaseEstimator):
    _task = "classification"

    def __init__(
        self, *, trials: int = 20, timeout: float | None = None, epochs: int | None = None,
        space: dict[str, Any] | None = None, study: str = "table", metric: str | None = None,
        val_fraction: float = 0.2, storage: str | None = None, seed: int = 0, device: str = "cpu",
        crossfit: int = 0,
    ):  # fmt: skip
        self.trials = trials
        self.timeout = timeout
        self.epochs = epochs
        self.space = space
        self.study = study
        self.metric = metric
        self.val_fraction = val_fraction
        self.storage = storage
        self.seed = seed
        self.device = device
        self.crossfit = crossfit

    def fit(self, X, y):
        import pandas as pd

        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        if self.crossfit == 1 or self.crossfit < 0:
            raise ValueError(f"crossfit={self.crossfit}: 0 refits once; K >= 2 folds cross-fit")
        frame, y = self._checked(X, y, reset=True)
        if self._task == "classification":
            check_classification_targets(y)
            if len(np.unique(y)) < 2:
                raise ValueError("Classifier can't train when only one class is present.")
        frame[TARGET] = pd.Series(y, index=frame.index)
        spec = load_study(self.study)
        if self.epochs is not None:
            spec = spec.with_overrides(epochs=self.epochs)
        if self.space:
            raw = {**spec.raw_space, **self.space}
            spec = spec.with_overrides(space=parse_space(raw, where="space"), raw_space=raw)
        table = TableSpec(train="X", target=TARGET, task=self._task, metric=self.metric)
        device = resolve_device(self.device)
        try:
            data = load_table(table, device=device, val_fraction=self.val_fraction, split_seed=self.seed,
                              frame=frame, holdout=False)  # fmt: skip
        except UserError as e:  # one class with one row, an empty column: scikit-learn's error type
            raise ValueError(str(e)) from None
        study = optuna.create_study(
            storage=self.storage, direction="maximize", load_if_exists=self.storage is not None,
            sampler=make_sampler(spec.sampler, self.seed, startup_trials=spec.startup_trials),
            pruner=make_pruner(spec.pruner, spec.epochs, min_epochs=spec.min_epochs),
        )  # fmt: skip
        baseline = spec.baseline_params()
        if baseline is not None and not study.trials:
            study.enqueue_trial(baseline, user_attrs={ATTR_BASELINE: True})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            verbosity = optuna.logging.get_verbosity()
            optuna.logging.set_verbosity(optuna.logging.ERROR)
            try:
                run_trials(study, Objective(spec=spec, data=data, seed=self.seed), n_trials=self.trials,
                           timeout=self.timeout)  # fmt: skip
            finally:
                optuna.logging.set_verbosity(verbosity)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not done:
            raise RuntimeError(f"no trial of the search completed ({len(study.trials)} tried)")
        best = max(done, key=lambda t: t.value)
        config = replay_config(best.params, spec.space, epochs=spec.epochs, seed=best.user_attrs[ATTR_SEED])
        try:  # on all of X, the preprocessing refitted on it too
            every_row = refit(
                config, None, data, with_ensemble=False, trial_number=best.number, folds=self.crossfit
            )
        except UserError as e:
            raise RuntimeError(str(e)) from None
        model = every_row.ensemble if every_row.ensemble is not None else every_row.single
        self.study_ = study
        self.best_params_ = dict(best.params)
        self.best_score_ = float(best.value)
        self.best_config_ = config
        self.predictor_ = Predictor(model, Preprocess.of(every_row.data, config.numeric), device)
        if self._task == "classification":
            self.classes_ = np.asarray(self.predictor_.classes)
        return self

    def _checked(self, X, y=None, *, reset: bool):
        """X as a DataFrame (a DataFrame keeps its columns' types; anything else goes through
        scikit-learn's own checks: sparse, empty or 1-D input fails as every estimator's does)."""
        import pandas as pd

        if isinstance(X, pd.DataFrame):
            validate_data(self, X, skip_check_array=True, reset=reset)  # n_features_in_, names
            if X.shape[0] == 0 or X.shape[1] == 0:
                raise ValueError(f"Found array with {X.shape[0]} sample(s) and {X.shape[1]} feature(s)")
        else:
            X = validate_data(self, X, dtype=None, ensure_all_finite="allow-nan", reset=reset)
        if y is not None:
            y = column_or_1d(check_array(y, ensure_2d=False, dtype=None, ensure_all_finite=True), warn=True)
            if self._task == "regression":
                y = check_array(y, ensure_2d=False, dtype="numeric")
            check_consistent_length(X, y)
            if len(y) < 2:
                raise ValueError(f"{type(self).__name__} needs at least 2 samples, got {len(y)} sample(s)")
        return _frame(X, getattr(self, "feature_names_in_", None)), y

    def _rows(self, X):
        check_is_fitted(self)
        return self._checked(X, reset=False)[0]

    def predict(self, X):
        rows = self._rows(X)
        out = self.predictor_.predict(rows)
        return out.astype(self.classes_.dtype) if self._task == "classification" else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.string = True
        tags.input_tags.categorical = True
        tags.non_deterministic = False
        return tags


class MLPSearchClassifier(ClassifierMixin, _MLPSearch):
    """An MLP classifier found by a hyperparameter search on the rows it is fitted on."""

    _task = "classification"

    def predict_proba(self, X) -> np.ndarray:
        rows = self._rows(X)
        return self.predictor_.predict_proba(rows)


class MLPSearchRegressor(RegressorMixin, _MLPSearch):
    """An MLP regressor found by a hyperparameter search on the rows it is fitted on."""

    _task = "regression"


def _frame(X, names):
    """X as a DataFrame with string column names (its own, or x0, x1, ...)."""
    import pandas as pd

    if isinstance(X, pd.DataFrame):
        frame = X.reset_index(drop=True).copy()
    else:
        arr = np.asarray(X)
        if arr.ndim != 2:
            raise ValueError(f"Expected 2D array, got {arr.ndim}D array instead")
        frame = pd.DataFrame(arr, columns=[f"x{i}" for i in range(arr.shape[1])])
        if arr.dtype.kind in "fiub":
            frame = frame.astype(float)
    frame.columns = [str(c) for c in frame.columns] if names is None else [str(c) for c in names]
    return frame


__all__ = ["MLPSearchClassifier", "MLPSearchRegressor"]
