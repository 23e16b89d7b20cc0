"""Every row used: the exported table model learns from the training and validation rows, with
its preprocessing fitted on them; the test rows are untouched and scored once per model."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import one_torch_thread
from sklearn.datasets import load_diabetes

from search.data.merged import with_validation_rows
from search.data.tables import TableSpec, load_table
from search.export import main as export_main
from search.predict import main as predict_main
from search.run import main as run_main


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
        assert export_main(_args(tmp_path, "--out", str(tmp_path / "refit"))) == 0
        assert export_main(_args(tmp_path, "--out", str(tmp_path / "kept"), "--no-refit")) == 0
    refit, kept = (json.loads((tmp_path / d / "best.json").read_text()) for d in ("refit", "kept"))
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
