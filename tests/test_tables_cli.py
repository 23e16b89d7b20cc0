"""Your own table from the command line: search.run --data/--target, export, predict; bad input is
one line, exit 2, and nothing written."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pandas as pd
import pytest
from helpers import one_torch_thread
from sklearn.datasets import load_breast_cancer, load_diabetes

from search.export import main as export_main
from search.predict import main as predict_main
from search.run import main as run_main


def _args(folder, *extra):
    storage = f"sqlite:///{folder}/s.db"
    results = str(folder / "results")
    return ["--storage", storage, "--results-dir", results, "--device", "cpu", "--no-progress", *extra]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tables")
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    cancer = x.iloc[:, :8].assign(kind=np.where(y == 1, "benign", "malignant"))
    cancer.loc[::11, "mean radius"] = np.nan  # gaps the imputer fills
    cancer.to_csv(folder / "cancer.csv", index=False)
    x, y = load_diabetes(return_X_y=True, as_frame=True)
    x.assign(progression=y).to_parquet(folder / "diabetes.parquet", index=False)
    return folder


@pytest.mark.parametrize(("file", "target", "task", "picture"), [
    ("cancer.csv", "kind", "classification", "confusion.png"),
    ("diabetes.parquet", "progression", "regression", "predicted_vs_actual.png"),
])  # fmt: skip
def test_search_export_and_predict_a_table(tables, tmp_path, capsys, file, target, task, picture):
    data = tables / file
    with one_torch_thread("search.tuning.run"):
        assert (
            run_main(
                _args(tmp_path, "--data", str(data), "--target", target, "--trials", "3", "--epochs", "4")
            )
            == 0
        )
        assert export_main(_args(tmp_path)) == 0
    name = f"{data.stem}-{target}"
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/s.db")
    assert study.user_attrs["task"] == task and study.user_attrs["table"]["train"] == str(data)
    out = tmp_path / "results" / name
    for f in ("best.json", "model.pt", "preprocess.skops", "importance.png", picture, "test_report.txt"):
        assert (out / f).is_file(), f
    report = json.loads((out / "test_report.json").read_text())
    assert report["metric"] == ("accuracy" if task == "classification" else "r2")
    assert report["permutation_importance"][0]["column"] in pd.read_csv(data).columns if file.endswith(
        ".csv") else True  # fmt: skip
    rows = pd.read_csv(data) if file.endswith(".csv") else pd.read_parquet(data)
    new = rows.drop(columns=[target]).head(5).copy()
    new.iloc[0, 0] = np.nan
    new.to_csv(tmp_path / "new.csv", index=False)
    assert predict_main(["--model", str(out), "--data", str(tmp_path / "new.csv")]) == 0
    predicted = pd.read_csv(out / "predictions.csv")
    assert len(predicted) == 5 and predicted["prediction"].notna().all()
    if task == "classification":
        assert set(predicted["prediction"]) <= {"benign", "malignant"}
        assert np.allclose(predicted[["proba_benign", "proba_malignant"]].sum(axis=1), 1)
    capsys.readouterr()
    new.drop(columns=[new.columns[1]]).to_csv(tmp_path / "short.csv", index=False)
    assert (
        predict_main(
            ["--model", str(out), "--data", str(tmp_path / "short.csv"), "--out", str(tmp_path / "p.csv")]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "lack column(s)" in err and "\n" not in err and not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize(("extra", "words"), [
    (["--target", "nope"], "target column 'nope' is not in the table"),
    (["--target", "kind", "--drop", "gone"], "column 'gone'"),
    (["--target", "kind", "--task", "regression"], "is not numeric, so it cannot be regressed"),
    (["--target", "kind", "--metric", "r2"], "metric 'r2' does not score classification"),
])  # fmt: skip
def test_bad_table_input_is_one_line_exit_2_and_writes_nothing(tables, tmp_path, capsys, extra, words):
    assert run_main(_args(tmp_path, "--data", str(tables / "cancer.csv"), *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "results").exists()


def test_a_file_that_is_not_a_table_is_one_line(tmp_path, capsys):
    (tmp_path / "x.csv").write_bytes(b"\x00\x01\x02")
    assert run_main(_args(tmp_path, "--data", str(tmp_path / "x.csv"), "--target", "y")) == 2
    err = capsys.readouterr().err.strip()
    assert "not a table" in err and "\n" not in err and not (tmp_path / "s.db").exists()


def test_report_compare_certify_audit_and_retrain_work_on_a_table_study(tables, tmp_path, capsys):
    from search.audit import main as audit_main
    from search.certify import main as certify_main
    from search.compare import main as compare_main
    from search.report import main as report_main
    from search.retrain import main as retrain_main

    data = tables / "cancer.csv"
    storage = ["--storage", f"sqlite:///{tmp_path}/s.db", "--results-dir", str(tmp_path / "results")]
    with one_torch_thread("search.tuning.run"):
        args = _args(tmp_path, "--data", str(data), "--target", "kind", "--trials", "6", "--epochs", "4")
        assert run_main([*args, "--pruner", "median"]) == 0
        assert export_main(_args(tmp_path)) == 0
        out = tmp_path / "results" / "cancer-kind"
        assert (
            report_main(storage) == 0 and "validation accuracy per epoch" in (out / "report.html").read_text()
        )
        assert compare_main(storage[:2]) == 0
        assert certify_main([*storage, "--top", "2", "--seeds", "2", "--device", "cpu", "--no-progress"]) == 0
        certified = json.loads((out / "certified.json").read_text())
        assert certified["metric"] == "accuracy" and len(certified["winner"]["test_score"]) == 2
        assert retrain_main(["--config", str(out / "best.json"), "--device", "cpu", "--no-progress"]) == 0
        said = capsys.readouterr().out
        assert "reproduced the trial's validation" in said, said
        pruned = optuna.load_study(study_name="cancer-kind", storage=storage[1]).trials
        if any(t.state == optuna.trial.TrialState.PRUNED for t in pruned):
            assert audit_main([*storage, "--n", "1", "--device", "cpu", "--no-progress"]) == 0
