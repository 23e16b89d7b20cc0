"""The models `python -m search.bench --tables` sets beside the search, each fitted once on a
target's reference split and scored once on its test rows:

    hgb          scikit-learn's HistGradientBoosting at its defaults, random_state=0: text columns
                 as pandas categoricals, categorical_features="from_dtype"
    catboost     CatBoost at its defaults, random_seed=0: text columns as cat_features, a missing
                 value as the string "(nan)"
    sklearn-mlp  scikit-learn's MLPClassifier/MLPRegressor at its defaults, random_state=0, on the
                 table study's own preprocessing (search.data.tables.make_transformer("standard"))
    realmlp      pytabkit's RealMLP-TD (RealMLP_TD_Classifier/Regressor), random_state=0
    tabm         pytabkit's TabM-D (TabM_D_Classifier/Regressor), random_state=0

`run_peer` fits one in a child process (`python -m search.perf.peers NAME SPLIT OUT`, its own
folder as working directory) and stops it at the budget, counted from when its imports are done:
what a peer has not fitted and predicted by then, it did not finish for that budget. A peer's result is one of
    {"score": ..., "wall_s": ..., "child_s": ...}   score: accuracy, or R² (with "rmse")
    {"stopped": budget_s}   {"not_installed": "pip install ..."}   {"failed": "its last error line"}
`wall_s` is the fit and the test predictions; `child_s` adds starting Python and the imports.

Imports nothing heavy at the top: the child starts with only what its peer needs.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

PEERS = ("hgb", "catboost", "sklearn-mlp", "realmlp", "tabm")
PACKAGE = {  # the distribution whose version a peer's figure depends on, and how to get it
    "hgb": ("scikit-learn", "pip install scikit-learn"),
    "catboost": ("catboost", "pip install catboost"),
    "sklearn-mlp": ("scikit-learn", "pip install scikit-learn"),
    "realmlp": ("pytabkit", "pip install pytabkit"),
    "tabm": ("pytabkit", "pip install pytabkit"),
}
MODULE = {"hgb": "sklearn.ensemble", "catboost": "catboost", "sklearn-mlp": "sklearn.neural_network",
          "realmlp": "pytabkit", "tabm": "pytabkit"}  # fmt: skip
STARTUP_S = 300.0  # a child that has not imported its model in this long is stopped anyway
POLL_S = 0.05
NAN_TEXT = "(nan)"  # CatBoost's categories are strings: a missing one is this string


@dataclass(frozen=True)
class Split:
    """A target's reference split: pandas frames of the input columns, target Series."""

    x_train: Any
    x_test: Any
    y_train: Any
    y_test: Any
    task: str  # classification | regression


def package_version(peer: str) -> str | None:
    """The version of the package `peer` runs on; None where it is not installed."""
    try:
        return metadata.version(PACKAGE[peer][0])
    except metadata.PackageNotFoundError:
        return None


def run_peer(peer: str, split: Split, *, budget_s: float) -> dict[str, Any]:
    """Fit `peer` on `split` in a child process stopped after `budget_s` seconds; its result."""
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; known: {', '.join(PEERS)}")
    if package_version(peer) is None:
        return {"not_installed": PACKAGE[peer][1]}
    with tempfile.TemporaryDirectory(prefix=f"search-peer-{peer}-") as tmp:
        folder = Path(tmp)
        (folder / "split.pkl").write_bytes(pickle.dumps(split))
        cmd = [sys.executable, "-m", "search.perf.peers", peer, "split.pkl", "out.pkl"]
        started = time.perf_counter()
        with open(folder / "stderr.txt", "wb") as err:
            child = subprocess.Popen(
                cmd, cwd=folder, stdout=subprocess.DEVNULL, stderr=err, start_new_session=os.name == "posix"
            )
            try:
                code = _wait(child, folder / "ready", budget_s)
            except BaseException:  # Ctrl-C reaches only this process: its own session must not outlive it
                _kill(child)
                raise
        child_s = time.perf_counter() - started
        if code is None:
            return {"stopped": budget_s}
        if code != 0 or not (folder / "out.pkl").exists():
            lines = (folder / "stderr.txt").read_text(errors="replace").strip().splitlines()
            return {"failed": lines[-1] if lines else f"exit code {code}"}
        return {**pickle.loads((folder / "out.pkl").read_bytes()), "child_s": child_s}


def _wait(child: subprocess.Popen, ready: Path, budget_s: float) -> int | None:
    """The child's exit code; None where it was stopped: `budget_s` after it said `ready` (its
    imports done, the clock of its fit starts), or STARTUP_S after it started without saying so."""
    deadline = time.perf_counter() + STARTUP_S
    clock_started = False
    while True:
        try:
            return child.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            pass
        if not clock_started and ready.exists():
            clock_started, deadline = True, time.perf_counter() + budget_s
        if time.perf_counter() > deadline:
            _kill(child)
            return None


def _kill(child: subprocess.Popen) -> None:
    """Stop the child and whatever it started (its own session on POSIX)."""
    try:
        if os.name == "posix":
            os.killpg(child.pid, signal.SIGKILL)
        else:
            child.kill()
    except ProcessLookupError:
        pass
    child.wait()


def scores(task: str, truth, pred) -> dict[str, float]:
    """The suite's metric as `score` (accuracy, or R² with RMSE beside it)."""
    import numpy as np
    from sklearn import metrics

    if task == "regression":
        return {
            "score": float(metrics.r2_score(truth, pred)),
            "rmse": float(metrics.root_mean_squared_error(truth, pred)),
        }
    labels = np.asarray(truth).astype(str), np.asarray(pred).astype(str)
    return {"score": float(metrics.accuracy_score(*labels))}


def _text_columns(x) -> list[str]:
    import pandas as pd

    return [c for c in x.columns if not pd.api.types.is_numeric_dtype(x[c])]


def _categoricals(x):
    """Text columns as pandas categoricals (HistGradientBoosting's and pytabkit's way in)."""
    x = x.copy()
    for c in _text_columns(x):
        x[c] = x[c].astype("category")
    return x


def fit_predict(peer: str, s: Split):
    """`peer` fitted on the training rows: its predictions for the test rows."""
    regression = s.task == "regression"
    if peer == "hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        hgb = HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier
        model = hgb(categorical_features="from_dtype", random_state=0)
        return model.fit(_categoricals(s.x_train), s.y_train).predict(_categoricals(s.x_test))
    if peer == "catboost":
        from catboost import CatBoostClassifier, CatBoostRegressor

        cat = _text_columns(s.x_train)

        def texts(x):
            x = x.copy()
            for c in cat:
                x[c] = x[c].astype(object).where(x[c].notna(), NAN_TEXT).astype(str)
            return x

        boost = CatBoostRegressor if regression else CatBoostClassifier
        model = boost(random_seed=0, verbose=0, allow_writing_files=False, cat_features=cat)
        return model.fit(texts(s.x_train), s.y_train).predict(texts(s.x_test)).ravel()
    if peer == "sklearn-mlp":
        import pandas as pd
        from sklearn.neural_network import MLPClassifier, MLPRegressor
        from sklearn.pipeline import make_pipeline

        from search.data.tables import make_transformer

        x = s.x_train
        num = [c for c in x.columns if pd.api.types.is_numeric_dtype(x[c])]
        cat = [c for c in x.columns if c not in num or pd.api.types.is_bool_dtype(x[c])]
        num = [c for c in num if c not in cat]
        mlp = MLPRegressor if regression else MLPClassifier
        model = make_pipeline(make_transformer("standard", num, cat, rows=len(x)), mlp(random_state=0))
        return model.fit(x, s.y_train).predict(s.x_test)
    import pytabkit

    name = {"realmlp": "RealMLP_TD", "tabm": "TabM_D"}[peer] + ("_Regressor" if regression else "_Classifier")
    model = getattr(pytabkit, name)(random_state=0, verbosity=0)
    train, test = _filled(_categoricals(s.x_train), _categoricals(s.x_test))
    return model.fit(train, s.y_train).predict(test)


def _filled(train, test):
    """pytabkit refuses NaN in numeric columns: each such column's gaps take its training median,
    and a 0/1 column marks them where the training rows have gaps (what our preprocessing does)."""
    import pandas as pd

    train, test = train.copy(), test.copy()
    for c in [c for c in train.columns if pd.api.types.is_numeric_dtype(train[c])]:
        if train[c].isna().any():
            train[f"{c}__missing"], test[f"{c}__missing"] = (
                train[c].isna().astype(float),
                test[c].isna().astype(float),
            )
        median = train[c].median()
        train[c], test[c] = train[c].fillna(median), test[c].fillna(median)
    return train, test


def _exit_with_parent(parent: int) -> None:
    """A killed bench leaves no fit running: the child ends once its parent is gone."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _child(peer: str, split_path: str, out_path: str) -> None:
    import importlib
    import threading
    import warnings

    warnings.filterwarnings("ignore")  # the parent reads only the result, or the last error line
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    split: Split = pickle.loads(Path(split_path).read_bytes())
    importlib.import_module(MODULE[peer])  # imports are not the model's time, nor its budget
    Path("ready").touch()
    started = time.perf_counter()
    pred = fit_predict(peer, split)
    result = {**scores(split.task, split.y_test, pred), "wall_s": time.perf_counter() - started}
    Path(out_path).write_bytes(pickle.dumps(result))


if __name__ == "__main__":
    _child(*sys.argv[1:4])
