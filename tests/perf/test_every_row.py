"""search.bench --every-row: one search per target, exported refit and cross-fitted from the same
study; each figure is what the saved model predicts; finished rows are kept; the summary's
arithmetic."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import made_up_suite

from search.bench import build_parser, request_from_args
from search.errors import UserError
from search.perf import every_row
from search.perf.every_row import format_every_row, run_every_row, summarize
from search.predict import main as predict_main


def test_one_study_exported_both_ways_and_each_figure_is_what_its_model_predicts(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    suite, out = made_up_suite(tmp_path), tmp_path / "out"
    r = run_every_row(suite=suite, only=["diabetes-y"], budget_s=12, folds=3, folder=out)
    (row,) = r["rows"]
    assert "failed" not in row, row
    assert row["crossfit_models"] == 3 * row["refit_models"]  # K fold models for each chosen config
    folder = out / "diabetes-y"
    cross = json.loads((folder / "crossfit" / "best.json").read_text())
    refit = json.loads((folder / "refit" / "best.json").read_text())
    assert cross["trial_number"] == refit["trial_number"] and cross["refit"]["folds"] == 3  # one choice
    test = pd.read_csv(folder / "diabetes-test.csv")
    truth = test["y"].to_numpy()
    for way in ("refit", "crossfit"):
        assert predict_main(["--model", str(folder / way), "--data", str(folder / "diabetes-test.csv"),
                             "--out", str(tmp_path / f"{way}.csv")]) == 0  # fmt: skip
        predicted = pd.read_csv(tmp_path / f"{way}.csv")["prediction"].to_numpy()
        r2 = 1 - ((truth - predicted) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
        assert r2 == pytest.approx(row[way], abs=1e-4), way
    assert row["searched"] == refit["refit"]["searched_model_test_score"]
    assert "diabetes-y" in format_every_row(r) and "crossfit vs refit" in format_every_row(r)

    # a rerun keeps the finished row and searches nothing
    def no_search(*a, **k):
        raise AssertionError("a kept row was searched again")

    monkeypatch.setattr(every_row, "run_target", no_search)
    assert run_every_row(suite=suite, only=["diabetes-y"], budget_s=12, folds=3, folder=out)["rows"] == [row]


def test_the_summary_compares_refit_with_searched_and_crossfit_with_refit():
    rows = [
        {"searched": 0.50, "refit": 0.52, "crossfit": 0.53},
        {"searched": 0.80, "refit": 0.79, "crossfit": 0.79},
        {"failed": "search.run: no trial finished"},
    ]
    s = summarize(rows)
    assert s["refit_vs_searched"] == {"mean": pytest.approx(0.5), "wins": 1, "ties": 0, "losses": 1, "n": 2}
    assert s["crossfit_vs_refit"] == {"mean": pytest.approx(0.5), "wins": 1, "ties": 1, "losses": 0, "n": 2}


def test_one_fold_is_refused_in_one_line():
    args = build_parser().parse_args(["--every-row", "--crossfit", "1"])
    with pytest.raises(UserError, match="at least 2"):
        request_from_args(args)
