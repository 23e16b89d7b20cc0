"""Every row used: the exported table model learns from the training and validation rows, with
its preprocessing fitted on them; the test rows are untouched and scored once per model."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import one_torch_thread
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.model_selection import KFold

from search.artifacts.refit import AUTO_FOLDS, AUTO_MAX_ROWS, default_folds, fold_rows
from search.data.merged import with_validation_rows
from search.data.tables import TableSpec, load_table
from search.export import main as export_main
from search.predict import main as predict_main
from search.run import main as run_main
from search.training.config import TrainConfig
from search.training.fit import fit


@pytest.fixture(scope="module")
def diabetes():
    return load_diabetes(as_frame=True).frame


def _data(frame, numeric="standard"):
    spec = TableSpec(train="diabetes.csv", target="target")
    return load_table(spec, device="cpu", val_fraction=0.2, split_seed=0, frame=frame).variant(numeric)


def test_training_gets_the_validation_rows_and_the_preprocessing_is_fitted_on_both(diabetes):
    data = _data(diabetes)
    merged = with_validation_rows(data)
    frames = data.table.frames
    rows = pd.concat([frames["train"], frames["val"]], ignore_index=True)
    assert len(merged.y_train) == len(rows) == len(data.y_train) + len(data.y_val)
    assert torch.equal(merged.y_train, torch.cat([data.y_train, data.y_val]))
    assert torch.equal(merged.y_test, data.y_test) and merged.table.frames["test"] is frames["test"]
    # standardized with the mean and spread of training + validation rows, computed here by hand
    column = merged.table.numeric[0]
    by_hand = (rows[column] - rows[column].mean()) / rows[column].std(ddof=0)
    assert np.allclose(merged.x_train[:, 0].numpy(), by_hand.to_numpy(), atol=1e-5)
    test_by_hand = (frames["test"][column] - rows[column].mean()) / rows[column].std(ddof=0)
    assert np.allclose(merged.x_test[:, 0].numpy(), test_by_hand.to_numpy(), atol=1e-5)
    assert not np.allclose(data.x_test[:, 0].numpy(), test_by_hand.to_numpy(), atol=1e-5)  # a refit
    # the searched dataset is left as it was, and other transforms refit on the merged rows too
    assert len(data.table.frames["train"]) == len(data.y_train)
    ple = merged.variant("ple8").table.transformer("ple8").named_transformers_["numeric"][-1]
    assert ple.n_features_in_ == len(merged.table.numeric)
    edges_by_hand = np.unique(np.quantile(rows[column].to_numpy(float), np.linspace(0, 1, 9)))
    assert np.allclose(ple.left_[: len(edges_by_hand) - 1], edges_by_hand[:-1])


def _args(folder, *extra):
    return ["--storage", f"sqlite:///{folder}/s.db", "--results-dir", str(folder / "results"),
            "--device", "cpu", "--no-progress", *extra]  # fmt: skip


def test_the_export_is_the_refit_model_and_records_both_test_figures(diabetes, tmp_path):
    csv = tmp_path / "d.csv"
    diabetes.to_csv(csv, index=False)
    with one_torch_thread("search.tuning.run"):
        assert (
            run_main(
                _args(tmp_path, "--data", str(csv), "--target", "target", "--trials", "3", "--epochs", "3")
            )
            == 0
        )
        assert export_main(_args(tmp_path, "--out", str(tmp_path / "refit"), "--crossfit", "0")) == 0
        assert export_main(_args(tmp_path, "--out", str(tmp_path / "kept"), "--no-refit")) == 0
        assert export_main(_args(tmp_path, "--out", str(tmp_path / "default"))) == 0
    refit, kept, default = (
        json.loads((tmp_path / d / "best.json").read_text()) for d in ("refit", "kept", "default")
    )
    # a table this small is cross-fitted unless told otherwise; one past the bound is refit once
    assert refit["refit"]["folds"] == 0 and default["refit"]["folds"] == AUTO_FOLDS
    assert default_folds(AUTO_MAX_ROWS) == AUTO_FOLDS and default_folds(AUTO_MAX_ROWS + 1) == 0
    rest = len(diabetes) - math.ceil(0.2 * len(diabetes))  # train_test_split's test share rounds up
    assert refit["refit"]["rows"] == rest and refit["refit"]["searched_rows"] == rest - round(0.2 * rest)
    assert kept["refit"] is None
    # the search's own model scores on the refit export what the --no-refit export reports
    assert refit["refit"]["searched_model_test_score"] == pytest.approx(kept["test_score"], abs=1e-12)
    # the saved model and preprocessing predict the test rows as the export scored them
    test_rows = diabetes.iloc[_data(diabetes).table.frames["test"].index]
    test_rows.to_csv(tmp_path / "test.csv", index=False)
    assert predict_main(["--model", str(tmp_path / "refit"), "--data", str(tmp_path / "test.csv"),
                         "--out", str(tmp_path / "p.csv")]) == 0  # fmt: skip
    predicted = pd.read_csv(tmp_path / "p.csv")["prediction"].to_numpy()
    truth = test_rows["target"].to_numpy()
    r2 = 1 - ((truth - predicted) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
    assert r2 == pytest.approx(refit["test_score"], abs=1e-4)


def test_crossfit_folds_leave_each_row_out_once_and_keep_the_class_shares():
    frame = load_breast_cancer(as_frame=True).frame
    spec = TableSpec(train="bc.csv", target="target")
    data = with_validation_rows(load_table(spec, device="cpu", val_fraction=0.2, split_seed=0, frame=frame))
    n, y = len(data.y_train), data.y_train.numpy()
    kept = fold_rows(data, 5, seed=3)
    assert len(kept) == 5
    left_out = [np.setdiff1d(np.arange(n), k.numpy()) for k in kept]
    assert np.array_equal(np.sort(np.concatenate(left_out)), np.arange(n))  # each row out exactly once
    share = y.mean()
    for out in left_out:
        assert abs(len(out) - n / 5) <= 1
        assert abs(y[out].mean() - share) <= 2 / len(out)  # stratified: within a row or two
    # a class of a single row cannot be stratified: plain folds, still each row out once
    data.y_train[:] = 0
    data.y_train[0] = 1
    left_out = [np.setdiff1d(np.arange(n), k.numpy()) for k in fold_rows(data, 4, seed=0)]
    assert np.array_equal(np.sort(np.concatenate(left_out)), np.arange(n))
    # three rows make at most three folds
    tiny = dataclasses.replace(data, task="regression", y_train=data.y_train[:3].float())
    assert sorted(len(k) for k in fold_rows(tiny, 5, seed=0)) == [2, 2, 2]


def test_crossfit_export_averages_models_each_trained_without_its_fold(diabetes, tmp_path, capsys):
    csv = tmp_path / "d.csv"
    diabetes.to_csv(csv, index=False)
    with one_torch_thread("search.tuning.run"):
        run = _args(tmp_path, "--data", str(csv), "--target", "target", "--trials", "2", "--epochs", "2")
        assert run_main(run) == 0
        out = tmp_path / "cross"
        capsys.readouterr()
        assert export_main(_args(tmp_path, "--out", str(out), "--crossfit", "3")) == 0
        said = capsys.readouterr().out
        assert "cross-fitted: " in said and "exported alone" not in said, said
        best = json.loads((out / "best.json").read_text())
        assert best["refit"]["folds"] == 3
        saved = torch.load(out / "ensemble.pt", weights_only=True)
        config = TrainConfig.from_dict(best["config"])
        members = [m for m in saved["members"] if m["trial_number"] == best["trial_number"]]
        seeds = [TrainConfig.from_dict(m["config"]).seed for m in members]
        assert seeds == [config.seed + k for k in range(3)]
        # Member k is the config trained, with seed + k, on the merged rows but fold k's, the folds
        # drawn here by scikit-learn's KFold directly; on the CPU a retrain is bit for bit.
        merged = with_validation_rows(_data(diabetes, config.numeric))
        for k, (rows, _) in enumerate(KFold(3, shuffle=True, random_state=config.seed).split(merged.y_train)):
            part = dataclasses.replace(merged, x_train=merged.x_train[rows], y_train=merged.y_train[rows])
            by_hand = fit(config.replace(seed=config.seed + k), part).model
            for name, value in by_hand.state_dict().items():
                assert torch.equal(members[k]["state_dict"][name], value), (k, name)
    # the saved ensemble predicts the test rows as the export scored them
    test_rows = diabetes.iloc[_data(diabetes).table.frames["test"].index]
    test_rows.to_csv(tmp_path / "test.csv", index=False)
    assert predict_main(["--model", str(out), "--data", str(tmp_path / "test.csv"),
                         "--out", str(tmp_path / "p.csv")]) == 0  # fmt: skip
    predicted = pd.read_csv(tmp_path / "p.csv")["prediction"].to_numpy()
    truth = test_rows["target"].to_numpy()
    r2 = 1 - ((truth - predicted) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
    assert r2 == pytest.approx(best["test_score"], abs=1e-4)
    assert best["test_score"] != best["single_test_score"]  # the averaged models, not model.pt


def test_crossfit_is_refused_in_one_line_where_it_cannot_apply(diabetes, tmp_path, capsys):
    csv = tmp_path / "d.csv"
    diabetes.to_csv(csv, index=False)
    with one_torch_thread("search.tuning.run"):
        assert run_main(_args(tmp_path, "--data", str(csv), "--target", "target", "--trials", "1",
                              "--epochs", "1")) == 0  # fmt: skip
        capsys.readouterr()
        assert export_main(_args(tmp_path, "--crossfit", "1")) != 0
        assert export_main(_args(tmp_path, "--crossfit", "3", "--no-refit")) != 0
        assert export_main(_args(tmp_path, "--crossfit", "3", "--max-params", "1000")) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all("--crossfit" in line for line in err), err
