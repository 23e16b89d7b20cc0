"""A table becomes a dataset: read from CSV, Parquet, a DataFrame or an array; split as the
reference figures split it; preprocessed on its training rows only; every bad input one line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.model_selection import train_test_split

from search.data.image_files import DataError
from search.data.numeric import MAX_CODES
from search.data.tables import TableSpec, code_columns, load_table, read_table, smooth_clip


def _frame(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "size": rng.normal(10, 3, n), "shade": rng.choice(["a", "b", "c"], n), "id": np.arange(n),
        "label": rng.choice(["x", "y"], n),
    })  # fmt: skip


def _load(frame, **spec):
    return load_table(
        TableSpec(train="t.csv", **spec), device="cpu", val_fraction=0.2, split_seed=0, frame=frame
    )


def test_csv_parquet_frame_and_array_read_the_same_rows(tmp_path):
    frame = _frame()
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    for source in (tmp_path / "t.csv", tmp_path / "t.parquet", frame):
        pd.testing.assert_frame_equal(read_table(source), frame)
    arr = read_table(frame[["size", "id"]].to_numpy())
    assert list(arr.columns) == ["x0", "x1"] and np.allclose(arr.to_numpy(), frame[["size", "id"]])


def test_the_test_split_is_the_reference_split_and_validation_is_carved_from_the_rest():
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    frame = x.assign(target=y)
    data = _load(frame, target="target")
    # The reference figures' split: train_test_split(test_size=0.2, random_state=0, stratify=y).
    _, test = train_test_split(np.arange(len(frame)), test_size=0.2, random_state=0, stratify=y)
    assert np.array_equal(data.table.frames["test"].index.to_numpy(), test)
    rows = {s: set(data.table.frames[s].index) for s in ("train", "val", "test")}
    assert (
        not rows["train"] & rows["val"]
        and not rows["val"] & rows["test"]
        and not rows["train"] & rows["test"]
    )
    assert sum(map(len, rows.values())) == len(frame)
    assert data.task == "classification" and data.metric == "accuracy" and data.classes == ("0", "1")


def test_preprocessing_is_fitted_on_the_training_rows_only():
    frame = _frame(400)
    data = _load(frame, target="label", drop=("id",))
    train_sizes = data.table.frames["train"]["size"]
    # The first encoded column is `size`, standardized with the training rows' mean and std alone.
    expected = (train_sizes - train_sizes.mean()) / train_sizes.std(ddof=0)
    assert np.allclose(data.x_train[:, 0].numpy(), expected, atol=1e-5)
    shifted = frame.copy()
    val_rows = data.table.frames["val"].index
    shifted.loc[val_rows, "size"] += 1000  # validation rows moved far away
    again = _load(shifted, target="label", drop=("id",))
    assert torch.equal(again.x_train, data.x_train)


def test_each_numeric_transform_is_a_variant_with_its_own_scaling():
    data = _load(_frame(400), target="label")
    quantile, robust = data.variant("quantile"), data.variant("robust")
    assert data.variant("quantile") is quantile  # built once
    assert abs(float(quantile.x_train[:, 0].mean())) < 0.1 and robust.x_train[:, 0].abs().max() < 3
    assert np.allclose(smooth_clip(np.array([0.0, 3.0, 1e6])), [0.0, 3 / np.sqrt(2), 3.0], atol=1e-5)
    for numeric in ("standard", "quantile", "robust"):  # an export loads a model by these names' count
        names = data.table.transformer(numeric).get_feature_names_out()
        assert len(names) == data.variant(numeric).in_features


def test_missing_values_get_an_indicator_and_unseen_categories_encode_without_error():
    frame = _frame(300)
    frame.loc[::7, "size"] = np.nan
    data = _load(frame, target="label")
    names = list(data.table.transformer("standard").get_feature_names_out())
    assert any("missingindicator_size" in n for n in names)
    assert torch.isfinite(data.x_train).all()
    odd = frame.drop(columns=["label"]).head(3).copy()
    odd.loc[0, "shade"] = "never seen"
    assert np.isfinite(data.table.encode("standard", odd)).all()


def test_regression_targets_are_standardized_and_scored_in_their_own_units():
    x, y = load_diabetes(return_X_y=True, as_frame=True)
    data = _load(x.assign(progression=y), target="progression")
    assert data.task == "regression" and data.metric == "r2" and data.n_classes == 1
    restored = data.target.inverse(data.y_train.double().numpy())
    assert np.allclose(
        np.sort(restored), np.sort(y.iloc[data.table.frames["train"].index].to_numpy()), rtol=1e-5
    )


@pytest.mark.parametrize(
    ("change", "spec", "words"),
    [
        (None, dict(target="nope"), "target column 'nope' is not in the table"),
        (
            None,
            dict(target="label", drop=("gone",)),
            "column 'gone' (drop or categorical) is not in the table",
        ),
        (None, dict(target="shade", task="regression"), "is not numeric, so it cannot be regressed"),
        ("single", dict(target="label"), "has 1 row: every class needs at least 2"),
        ("empty", dict(target="label"), "column 'blank' is empty in every row: add it to `drop`"),
    ],
)
def test_bad_tables_are_one_line_errors(change, spec, words):
    frame = _frame()
    if change == "single":
        frame.loc[0, "label"] = "lonely"
    if change == "empty":
        frame["blank"] = np.nan
    with pytest.raises(DataError) as e:
        _load(frame, **spec)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_an_empty_or_non_table_file_is_a_one_line_error(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "one.csv").write_text("a\n1\n2\n")
    (tmp_path / "binary.parquet").write_bytes(b"\x00\x01 not parquet")
    for name in ("empty.csv", "one.csv", "binary.parquet"):
        with pytest.raises(DataError) as e:
            read_table(tmp_path / name, what="--data")
        assert str(tmp_path / name) in str(e.value) and "\n" not in str(e.value)


def test_code_columns_are_whole_numbers_with_three_to_max_codes_values():
    n = 600
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({
        "school": rng.integers(0, 40, n), "grade": rng.integers(0, 300, n).astype(float),
        "flag": rng.integers(0, 2, n), "size": rng.normal(0, 1, n), "wide": rng.integers(0, 600, n),
    })  # fmt: skip
    frame.loc[::9, "school"] = np.nan  # a gap does not make a code a measurement
    assert code_columns(frame, list(frame.columns)) == ["school"]
    assert code_columns(frame.assign(grade=rng.integers(0, MAX_CODES, n).astype(float)), ["grade"]) == [
        "grade"
    ]


def test_with_codes_a_code_column_is_one_hot_beside_its_number_by_value():
    frame = _frame(500)
    frame["school"] = np.random.default_rng(2).integers(1, 8, len(frame))
    data = _load(frame, target="label", drop=("id",))
    plain, coded = data.variant("quantile"), data.variant("quantile+codes")
    # the quantile columns come first, unchanged; then one column per school, as pandas' dummies
    assert coded.numeric_features == plain.numeric_features == 2  # size and school stay numbers
    assert torch.equal(coded.x_train[:, : plain.in_features], plain.x_train)
    dummies = pd.get_dummies(data.table.frames["train"]["school"]).to_numpy(dtype=np.float32)
    assert np.array_equal(coded.x_train[:, plain.in_features :].numpy(), dummies)
    # 3.0 from a file read with a gap is the same code as 3
    rows = frame.drop(columns=["label"]).head(4).copy()
    floats = rows.assign(school=rows["school"].astype(float))
    assert np.array_equal(
        data.table.encode("quantile+codes", rows), data.table.encode("quantile+codes", floats)
    )
    names = data.table.transformer("ple8+codes").get_feature_names_out()
    assert len(names) == data.variant("ple8+codes").in_features and any(
        n.startswith("codes__") for n in names
    )
