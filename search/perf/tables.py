"""`python -m search.bench --tables`: the table study against the models a user would otherwise
pick, on the same splits of the same real tables.

Each table is split as its reference figures are (../shared/data/tables/README.md:
`train_test_split(test_size=0.2, random_state=0)`, stratified for classification), so every
model below meets the same test rows once:

    hgb          scikit-learn's HistGradientBoosting at its defaults (string columns as pandas
                 categoricals, `categorical_features="from_dtype"`), fitted on the training 80%
    sklearn-mlp  scikit-learn's MLPClassifier/MLPRegressor at its defaults, fitted on the training
                 80% through the table study's own preprocessing (median imputation, standard
                 scaling, one-hot)
    realmlp      pytabkit's RealMLP-TD at its tuned defaults, where pytabkit is installed
                 (pip install pytabkit; skipped with a line where it is not), in a child process
                 stopped at the search's budget: what it has not finished by then, it did not
                 finish for that budget
    search       `python -m search.run --data PATH --target COLUMN --timeout BUDGET`, then
                 `python -m search.export`: the study's best trial, its test figure from export

Each one's test figure (accuracy, or R² with RMSE) and wall time, in a JSON-ready dict.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SHARED_TABLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "tables"
TABLES = (("diamonds.csv", "price"), ("HI.csv", "whi"))  # the done-when tables
PEERS = ("hgb", "sklearn-mlp", "realmlp", "search")


def tables_dir() -> Path | None:
    return SHARED_TABLES if SHARED_TABLES.is_dir() else None


def _split(path: Path, target: str):
    """(X_train, X_test, y_train, y_test, task) on the reference split, pandas frames."""
    from sklearn.model_selection import train_test_split

    from search.data.tables import TableSpec, read_table, split_table

    frame = read_table(path)
    _, ys, task, *_ = split_table(
        frame.copy(), TableSpec(train=str(path), target=target), val_fraction=0.2, split_seed=0
    )  # fmt: skip  (the task, as the study reads it)
    y = frame.pop(target)
    stratify = y if task == "classification" else None
    x_tr, x_te, y_tr, y_te = train_test_split(frame, y, test_size=0.2, random_state=0, stratify=stratify)
    return x_tr, x_te, y_tr, y_te, task


def _figures(task: str, truth, pred) -> dict[str, float]:
    from sklearn import metrics

    if task == "regression":
        return {
            "r2": float(metrics.r2_score(truth, pred)),
            "rmse": float(metrics.root_mean_squared_error(truth, pred)),
        }
    return {
        "accuracy": float(metrics.accuracy_score(np.asarray(truth, dtype=str), np.asarray(pred, dtype=str)))
    }


def run_hgb(x_tr, x_te, y_tr, y_te, task) -> dict[str, Any]:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    def typed(x):
        x = x.copy()
        for c in x.columns:
            if not pd.api.types.is_numeric_dtype(x[c]):
                x[c] = x[c].astype("category")
        return x

    cls = HistGradientBoostingRegressor if task == "regression" else HistGradientBoostingClassifier
    model = cls(categorical_features="from_dtype", random_state=0)
    started = time.perf_counter()
    model.fit(typed(x_tr), y_tr)
    return {**_figures(task, y_te, model.predict(typed(x_te))), "wall_s": time.perf_counter() - started}


def run_sklearn_mlp(x_tr, x_te, y_tr, y_te, task) -> dict[str, Any]:
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline

    from search.data.tables import make_transformer

    num = [c for c in x_tr.columns if pd.api.types.is_numeric_dtype(x_tr[c])]
    cat = [c for c in x_tr.columns if c not in num]
    cls = MLPRegressor if task == "regression" else MLPClassifier
    model = make_pipeline(make_transformer("standard", num, cat, rows=len(x_tr)), cls(random_state=0))
    started = time.perf_counter()
    model.fit(x_tr, y_tr)
    return {**_figures(task, y_te, model.predict(x_te)), "wall_s": time.perf_counter() - started}


def run_realmlp(x_tr, x_te, y_tr, y_te, task, *, budget_s: float) -> dict[str, Any]:
    import importlib.util
    import multiprocessing as mp

    if importlib.util.find_spec("pytabkit") is None:
        return {"skipped": "pytabkit is not installed (pip install pytabkit)"}
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    child = ctx.Process(target=_realmlp_child, args=(x_tr, x_te, y_tr, y_te, task, results))
    started = time.perf_counter()
    child.start()
    child.join(budget_s)
    if child.is_alive():
        child.kill()
        child.join()
        return {"skipped": f"did not finish within {budget_s:.0f} s"}
    out = results.get() if not results.empty() else {"skipped": f"failed (exit code {child.exitcode})"}
    return {**out, "wall_s": time.perf_counter() - started}


def _realmlp_child(x_tr, x_te, y_tr, y_te, task, results) -> None:
    from pytabkit import RealMLP_TD_Classifier, RealMLP_TD_Regressor

    cls = RealMLP_TD_Regressor if task == "regression" else RealMLP_TD_Classifier
    model = cls(random_state=0, device="cpu", verbosity=0)
    model.fit(x_tr, y_tr)
    results.put(_figures(task, y_te, model.predict(x_te)))


def run_search(path: Path, target: str, task: str, *, budget_s: float, folder: Path) -> dict[str, Any]:
    """The user's two commands, in a fresh folder: search for `budget_s`, export, read the figure."""
    base = [sys.executable, "-m"]
    common = ["--storage", f"sqlite:///{folder}/s.db", "--results-dir", str(folder / "results")]
    started = time.perf_counter()
    run = [*base, "search.run", "--data", str(path), "--target", target, "--timeout", str(budget_s),
           "--trials", "100000", "--no-progress", *common]  # fmt: skip
    subprocess.run(run, check=True, capture_output=True, text=True, cwd=folder)
    subprocess.run([*base, "search.export", *common], check=True, capture_output=True, text=True, cwd=folder)
    wall = time.perf_counter() - started
    name = f"{path.stem}-{target}"
    report = json.loads((folder / "results" / name / "test_report.json").read_text())
    best = json.loads((folder / "results" / name / "best.json").read_text())
    figures = (
        {"r2": report["r2"], "rmse": report["rmse"]}
        if task == "regression"
        else {"accuracy": report["test_accuracy"]}
    )
    return {**figures, "wall_s": wall, "budget_s": budget_s, "val_score": best["value"],
            "architecture": best["architecture"], "command": " ".join(run[2:])}  # fmt: skip


def run_tables_bench(
    *, budget_s: float = 600.0, tables: tuple[tuple[str, str], ...] = TABLES, root: Path | None = None,
    peers: tuple[str, ...] = PEERS, progress=lambda line: None,
) -> dict[str, Any]:  # fmt: skip
    root = root or tables_dir()
    if root is None:
        from search.errors import UserError

        raise UserError(f"--tables needs the real tables in {SHARED_TABLES}; none are there")
    out: dict[str, Any] = {
        "budget_s": budget_s,
        "split": "train_test_split(test_size=0.2, random_state=0)",
        "tables": [],
    }
    for file, target in tables:
        path = root / file
        x_tr, x_te, y_tr, y_te, task = _split(path, target)
        row: dict[str, Any] = {
            "table": file,
            "target": target,
            "task": task,
            "n_train": len(x_tr),
            "n_test": len(x_te),
        }
        for peer in peers:
            progress(f"{file} {target}: {peer}")
            if peer == "search":
                with tempfile.TemporaryDirectory(prefix="search-tables-") as tmp:
                    row[peer] = run_search(path, target, task, budget_s=budget_s, folder=Path(tmp))
            elif peer == "realmlp":
                row[peer] = run_realmlp(x_tr, x_te, y_tr, y_te, task, budget_s=budget_s)
            else:
                runner = {"hgb": run_hgb, "sklearn-mlp": run_sklearn_mlp}[peer]
                row[peer] = runner(x_tr, x_te, y_tr, y_te, task)
        out["tables"].append(row)
    return out


def format_tables(r: dict[str, Any]) -> str:
    lines = [f"tables bench: the reference split ({r['split']}), search budget {r['budget_s']:.0f} s"]
    for row in r["tables"]:
        key = "r2" if row["task"] == "regression" else "accuracy"
        rows = f"{row['n_train']:,} train / {row['n_test']:,} test rows"
        lines.append(f"{row['table']} -> {row['target']} ({row['task']}, {rows}), test {key}:")
        for peer in PEERS:
            res = row.get(peer)
            if res is None:
                continue
            if "skipped" in res:
                lines.append(f"  {peer:<12} skipped: {res['skipped']}")
                continue
            extra = f"  RMSE {res['rmse']:.1f}" if key == "r2" else ""
            lines.append(f"  {peer:<12} {res[key]:.4f}{extra}  ({res['wall_s']:.0f} s)")
    return "\n".join(lines)
