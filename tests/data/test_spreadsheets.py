"""Tables as spreadsheets write them: semicolons or tabs and decimal commas, Windows-1252 or UTF-16
text, spreadsheet error values and infinities, wrong kinds of values at prediction, and targets
with nothing to learn; each read as meant or refused in one line."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from search.artifacts.predict import Predictor, Preprocess
from search.data.image_files import DataError
from search.data.tables import TableSpec, load_table, read_table

SEMICOLONS = "edad;peso;ciudad;precio\n41,5;1.234,5;Cádiz;162,25\n38;76,75;León;-0,5\n"


def _load(frame, **spec):
    return load_table(
        TableSpec(train="t.csv", **spec), device="cpu", val_fraction=0.2, split_seed=0, frame=frame
    )


def _rows(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "size": rng.normal(10, 3, n), "shade": rng.choice(["a", "b"], n), "y": rng.normal(0, 1, n),
    })  # fmt: skip


def test_semicolons_and_decimal_commas_read_as_numbers(tmp_path):
    (tmp_path / "es.csv").write_text(SEMICOLONS, encoding="utf-8")
    frame = read_table(tmp_path / "es.csv")
    assert list(frame.columns) == ["edad", "peso", "ciudad", "precio"]
    assert frame["edad"].tolist() == [41.5, 38.0] and frame["peso"].tolist() == [1234.5, 76.75]
    assert frame["precio"].tolist() == [162.25, -0.5] and frame["ciudad"].tolist() == ["Cádiz", "León"]


@pytest.mark.parametrize("name", ["de.tsv", "de.csv", "de.txt"])
def test_tabs_read_as_columns_whatever_the_suffix(tmp_path, name):
    (tmp_path / name).write_text("a\tb\tc\n1,5\t2\tx,y\n2,25\t3\tz\n")
    frame = read_table(tmp_path / name)
    assert frame["a"].tolist() == [1.5, 2.25] and frame["b"].tolist() == [2, 3]
    assert frame["c"].tolist() == ["x,y", "z"]  # text with a comma stays text


def test_excels_sep_line_trailing_delimiters_and_dot_decimals_after_semicolons(tmp_path):
    (tmp_path / "sep.csv").write_text("sep=;\na;b;;\n1.5;x;;\n2.5;y;;\n")
    frame = read_table(tmp_path / "sep.csv")
    assert list(frame.columns) == ["a", "b"] and frame["a"].tolist() == [1.5, 2.5]
    (tmp_path / "mixed.csv").write_text("a;b\n1,5;x\nabc;y\n")  # not all numbers: text
    assert read_table(tmp_path / "mixed.csv")["a"].tolist() == ["1,5", "abc"]


def test_a_windows_1252_file_reads_its_accents(tmp_path):
    text = "año;niño;€\n1,5;sí;2\n2,5;no;3\n"
    (tmp_path / "cp.csv").write_bytes(text.encode("cp1252"))
    frame = read_table(tmp_path / "cp.csv")
    assert list(frame.columns) == ["año", "niño", "€"] and frame["niño"].tolist() == ["sí", "no"]
    assert frame["año"].tolist() == [1.5, 2.5]


def test_utf8_with_a_byte_order_mark_and_excels_unicode_text(tmp_path):
    (tmp_path / "bom.csv").write_bytes("año,b\n1,2\n".encode("utf-8-sig"))
    assert list(read_table(tmp_path / "bom.csv").columns) == ["año", "b"]
    (tmp_path / "u16.txt").write_bytes("año\tb\n1,5\tñ\n".encode("utf-16"))  # Excel's "Unicode Text"
    frame = read_table(tmp_path / "u16.txt")
    assert list(frame.columns) == ["año", "b"] and frame["año"].tolist() == [1.5]


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("u16.csv", "a,b\n1,2\n".encode("utf-16-le"), "NUL bytes"),  # UTF-16 without its mark
        ("book.xlsx", b"PK\x03\x04 a workbook", "save the sheet as CSV or Parquet"),
        ("one.csv", b"a b\n1 2\n", "no comma, semicolon, tab or | separates its columns"),
    ],
)
def test_a_file_that_cannot_be_read_is_one_line_naming_it(tmp_path, name, data, words):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(DataError) as e:
        read_table(tmp_path / name, what="--data")
    assert str(tmp_path / name) in str(e.value) and words in str(e.value) and "\n" not in str(e.value)


def test_infinities_and_spreadsheet_errors_in_inputs_are_missing_values(tmp_path):
    frame = _rows()
    frame["size"] = frame["size"].astype(object)
    frame.loc[3, "size"], frame.loc[5, "size"], frame.loc[7, "size"] = "inf", "-Infinity", "#DIV/0!"
    frame.to_csv(tmp_path / "t.csv", index=False)
    read = read_table(tmp_path / "t.csv")
    assert read["size"].dtype == float and np.isnan(read.loc[7, "size"])
    with pytest.warns(UserWarning, match=r"'size' 2 infinite"):
        data = _load(read, target="y")
    names = list(data.table.transformer("standard").get_feature_names_out())
    assert any("missingindicator_size" in n for n in names)
    for x in (data.x_train, data.x_val, data.x_test):
        assert torch.isfinite(x).all()


def test_rows_with_an_infinite_regression_target_are_left_out_and_counted():
    frame = _rows()
    frame.loc[[2, 4, 6], "y"] = [np.inf, -np.inf, np.nan]
    with pytest.warns(UserWarning, match="target 'y' is infinite in 2 of 60 rows") as caught:
        data = _load(frame, target="y")
    assert len(caught) == 1
    assert data.task == "regression" and sum(len(f) for f in data.table.frames.values()) == 57
    assert np.isfinite(data.target.mean) and np.isfinite(data.target.std)


@pytest.mark.parametrize(
    ("fill", "words"),
    [
        (np.nan, "target 'y' is missing in every one of the 60 rows: nothing to learn"),
        (np.inf, "target 'y' is missing or infinite in every one of the 60 rows"),
        (2.5, "target 'y' holds one value (2.5) in all 60 rows that have one: nothing to learn"),
        (3, "target 'y' holds one value (3) in all 60 rows"),  # one class
        ("yes", "target 'y' holds one value ('yes') in all 60 rows"),
    ],
)
def test_a_target_with_nothing_to_learn_is_one_line(fill, words):
    frame = _rows().assign(y=fill)
    with pytest.raises(DataError) as e, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _load(frame, target="y")
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_class_with_one_row_is_fine_where_nothing_is_held_out():
    frame = _rows().assign(y=["a", "b"] * 29 + ["a", "lonely"])
    data = load_table(TableSpec(train="t.csv", target="y"), device="cpu", val_fraction=0.2, split_seed=0,
                      frame=frame, holdout=False)  # fmt: skip
    assert data.classes == ("a", "b", "lonely")


@pytest.fixture
def predictor():
    data = _load(_rows(), target="y")
    model = nn.Sequential(nn.Linear(data.in_features, 1))
    return Predictor(model, Preprocess.of(data, "standard"))


def test_prediction_takes_values_of_the_wrong_kind_as_missing_in_one_warning(predictor):
    rows = pd.DataFrame({"size": ["n/a", "12,5", "abc", 4.0, np.inf, 3], "shade": ["a"] * 6})
    with pytest.warns(UserWarning) as caught:
        out = predictor.predict(rows)
    assert len(caught) == 1
    said = str(caught[0].message)
    assert "'size' 3 not a number (e.g. 'n/a')" in said and "1 infinite" in said, said
    assert out.shape == (6,) and np.isfinite(out).all()
    assert out[0] == out[1] == out[2] == out[4]  # each imputed the same way
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predictor.predict(rows.iloc[3:4])  # a good row: no warning


def test_an_infinity_in_a_float_column_is_missing_and_whole_numbers_pass_as_they_are(predictor):
    rows = pd.DataFrame({"shade": ["a", "b", "a"], "size": [np.inf, 2.5, -np.inf]})
    with pytest.warns(UserWarning, match=r"'size' 2 infinite"):
        frame = predictor.rows(rows)
    assert np.isnan(frame["size"].iloc[0]) and np.isnan(frame["size"].iloc[2])
    assert frame["size"].iloc[1] == 2.5 and np.isinf(rows["size"].iloc[0])  # the caller's rows kept
    whole = pd.DataFrame({"size": np.array([3, 4], dtype=np.int64), "shade": ["a", "b"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = predictor.rows(whole)
    assert frame["size"].tolist() == [3, 4]


def test_prediction_reads_decimal_commas_where_the_file_has_them(predictor, tmp_path):
    (tmp_path / "new.csv").write_text("shade;size\na;12,5\nb;abc\n")
    with pytest.warns(UserWarning, match=r"'size' 1 not a number \(e.g. 'abc'\)"):
        frame = predictor.rows(tmp_path / "new.csv")
    assert frame["size"].iloc[0] == 12.5 and np.isnan(frame["size"].iloc[1])


def test_prediction_without_a_column_the_model_takes_is_one_line(predictor):
    with pytest.raises(DataError) as e:
        predictor.predict(pd.DataFrame({"shade": ["a"]}))
    assert "lack column(s) 'size'" in str(e.value) and "\n" not in str(e.value)
