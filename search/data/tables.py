"""Tables as datasets: CSV, Parquet, a pandas DataFrame or NumPy arrays, for classification or
regression, preprocessed with scikit-learn and held as tensors on the training device.

The preprocessing is a `ColumnTransformer` fitted on the training split alone: numeric columns
get median imputation, a missing-value indicator (where the training split has gaps) and one of
NUMERICS (a searchable knob: `standard` scaling, `quantile` to a normal distribution, or `robust`
scaling with RealMLP's smooth clipping x / sqrt(1 + (x/3)^2)); categorical columns (text,
categories, booleans, or those named `categorical`) are one-hot, with categories rarer than
MIN_CATEGORY_ROWS rows (or beyond MAX_CATEGORIES) grouped, and unseen ones at prediction time put
in that group. Each numeric transform is a variant of the dataset, built on first use. The fitted
transformer travels with an exported model, so prediction takes raw rows.

Without a test table, one is carved with `train_test_split(test_size=0.2, random_state=0)`,
stratified for classification: the split the reference figures in ../shared/data/tables use.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search.data.dataset import Dataset
from search.data.image_files import HOLDOUT_SEED, DataError
from search.data.numeric import MAX_CODES, NUMERICS, base_of, ple_bins, with_codes
from search.data.table_files import _comma_numbers, _is_number, read_table
from search.data.targets import DEFAULT_METRIC, METRICS, TASKS, TargetScale, infer_task, wants_log

TEST_FRACTION = 0.2
MIN_CATEGORY_ROWS = 5  # a category seen in fewer training rows joins the "infrequent" group
# one-hot columns per categorical column, the infrequent group included: at 64, VietNamI's commune
# (194 values) as a category took a fixed config to 0.24 validation R², at 256 to 0.52
MAX_CATEGORIES = 256


@dataclass(frozen=True)
class TableSpec:
    """What a study says about its table: files, target, and how to read the columns."""

    train: str  # a CSV or Parquet file
    target: str  # the column to predict
    test: str | None = None  # another file; otherwise 20% of `train`, carved with a fixed seed
    task: str | None = None  # classification | regression; otherwise inferred (targets.infer_task)
    drop: tuple[str, ...] = ()  # columns to leave out (ids, leaks)
    categorical: tuple[str, ...] = ()  # columns to one-hot although numeric (codes)
    metric: str | None = None  # a scikit-learn scorer name (targets.METRICS); the task's default

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TableSpec:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**fields)


@dataclass(eq=False)
class Table:
    """A table's split rows and its fitted preprocessing, one per numeric transform."""

    frames: dict[str, Any]  # "train", "val", "test" -> pandas DataFrame of the input columns
    numeric: list[str]
    categorical: list[str]
    target_name: str
    class_values: list = field(default_factory=list)  # each class's value as the target column holds it
    transformers: dict[str, Any] = field(default_factory=dict)  # numeric transform -> fitted
    datasets: dict[str, Any] = field(default_factory=dict)  # numeric transform -> its Dataset

    def transformer(self, numeric: str):
        if numeric not in self.transformers:
            train = self.frames["train"]
            codes = code_columns(train, self.numeric) if with_codes(numeric) else []
            made = make_transformer(numeric, self.numeric, self.categorical, rows=len(train), codes=codes)
            self.transformers[numeric] = made.fit(train)
        return self.transformers[numeric]

    def encoded(self, data: Dataset, numeric: str) -> Dataset:
        """`data` (this table's) encoded with the `numeric` transform: `Dataset.variant`."""
        return encoded(data, numeric)

    def encode(self, numeric: str, frame) -> np.ndarray:
        fitted = self.transformer(numeric)
        if len(frame) == 0:  # scikit-learn refuses to transform no rows
            return np.zeros((0, len(fitted.get_feature_names_out())), dtype=np.float32)
        return np.asarray(fitted.transform(frame), dtype=np.float32)


def table_spec(
    data: str,
    target: str,
    *,
    test: str | None = None,
    task: str | None = None,
    metric: str | None = None,
    drop=(),
    categorical=(),
) -> TableSpec:
    """A TableSpec from a command line's or a notebook's arguments, paths made absolute so the
    study's binding finds the files from any folder."""

    def where(path):
        return None if path is None else str(Path(path).expanduser().resolve())

    return TableSpec(
        train=where(data), target=target, test=where(test), task=task, metric=metric,
        drop=tuple(drop), categorical=tuple(categorical),
    )  # fmt: skip


def smooth_clip(x: np.ndarray) -> np.ndarray:
    """RealMLP's soft bound of robust-scaled values: about x near 0, about +-3 far out."""
    return x / np.sqrt(1.0 + (x / 3.0) ** 2)


def _as_text(x):
    return x.astype(str)


def code_columns(frame, num_cols: list[str]) -> list[str]:
    """The numeric columns of `frame` that look like codes: whole numbers, 3 to MAX_CODES
    distinct values (missing ones aside)."""
    found = []
    for c in num_cols:
        v = np.asarray(frame[c].dropna(), dtype=float)
        if len(v) and np.array_equal(v, np.round(v)) and 3 <= len(np.unique(v)) <= MAX_CODES:
            found.append(c)
    return found


def make_transformer(
    numeric: str, num_cols: list[str], cat_cols: list[str], *, rows: int = 1000, codes: Sequence[str] = ()
):  # fmt: skip
    """The unfitted ColumnTransformer for a numeric transform (one of NUMERICS), for `rows`
    training rows (the quantile transform takes at most one quantile a row); `codes`, numeric
    columns also one-hot (after the categorical columns), by their values."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import MissingIndicator, SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import (
        FunctionTransformer,
        OneHotEncoder,
        QuantileTransformer,
        RobustScaler,
        StandardScaler,
    )  # fmt: skip

    from search.data.piecewise import PiecewiseLinear  # scikit-learn, loaded on first use

    bins = ple_bins(numeric)
    numeric = base_of(numeric)
    scale = (
        PiecewiseLinear(n_bins=bins)
        if bins
        else {
            "standard": lambda: StandardScaler(),
            "quantile": lambda: QuantileTransformer(
                output_distribution="normal", n_quantiles=max(2, min(1000, rows)), random_state=0
            ),
            "robust": lambda: make_pipeline(
                RobustScaler(), FunctionTransformer(smooth_clip, feature_names_out="one-to-one")
            ),
        }[numeric]()
    )
    parts = []
    if num_cols:
        parts.append(("numeric", make_pipeline(SimpleImputer(strategy="median"), scale), num_cols))
        parts.append(("missing", MissingIndicator(features="missing-only", error_on_new=False), num_cols))

    def onehot():
        return OneHotEncoder(
            handle_unknown="infrequent_if_exist", min_frequency=MIN_CATEGORY_ROWS,
            max_categories=MAX_CATEGORIES, sparse_output=False,
        )  # fmt: skip

    if cat_cols:
        text = FunctionTransformer(_as_text, feature_names_out="one-to-one")
        missing = SimpleImputer(strategy="constant", fill_value="(missing)")
        parts.append(("categorical", make_pipeline(text, missing, onehot()), cat_cols))
    if codes:  # by value, so 3 and 3.0 are one code; a missing value is its own
        parts.append(("codes", onehot(), list(codes)))
    return ColumnTransformer(parts, remainder="drop", sparse_threshold=0.0)


def leading_numeric(transformer) -> int:
    """How many columns a fitted `make_transformer` puts first that each hold one numeric column's
    scaled value (`Dataset.numeric_features`): its numeric columns, or 0 where they became bins."""
    from search.data.piecewise import PiecewiseLinear

    for name, pipeline, columns in transformer.transformers_:
        if name == "numeric":
            return 0 if isinstance(pipeline[-1], PiecewiseLinear) else len(columns)
    return 0


def split_table(
    frame, spec: TableSpec, *, test_frame=None, val_fraction: float, split_seed: int, holdout: bool = True
):
    """Checked columns and target, and the rows split: (frames, y per split, task, classes, columns).
    Every bad input is one line naming the column or file and what to do."""
    from sklearn.model_selection import train_test_split

    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if spec.target not in columns:
        raise DataError(f"target column {spec.target!r} is not in the table; its columns: {_names(columns)}")
    for name in (*spec.drop, *spec.categorical):
        if name not in columns:
            raise DataError(f"column {name!r} (drop or categorical) is not in the table: {_names(columns)}")
    what = f"the table {Path(str(spec.train)).name}"
    frame = _with_target(frame, spec.target, what=what, learn=True)
    y_raw = frame[spec.target]
    inputs = [c for c in columns if c != spec.target and c not in spec.drop]
    if not inputs:
        raise DataError("no input column is left once the target and `drop` are taken out")
    numbers = [c for c in inputs if c not in spec.categorical and _is_number(frame[c])]
    frame = numbers_only(frame, numbers, what=what)  # infinities are missing values
    empty = [c for c in inputs if frame[c].isna().all()]
    if empty:
        raise DataError(f"column {empty[0]!r} is empty in every row: add it to `drop`")
    numeric_target = _is_number(y_raw)
    values = y_raw.to_numpy(dtype=float) if numeric_target else None
    task = spec.task or infer_task(values, is_numeric=numeric_target)
    if task not in TASKS:
        raise DataError(f"task {task!r} is not one of {', '.join(TASKS)}")
    metric = spec.metric or DEFAULT_METRIC[task]
    if metric not in METRICS[task]:
        raise DataError(f"metric {metric!r} does not score {task}; use one of {', '.join(METRICS[task])}")
    if task == "regression" and not numeric_target:
        raise DataError(
            f'target {spec.target!r} is not numeric, so it cannot be regressed: set task = "classification"'
        )
    classes: tuple[str, ...] = ()
    class_values: list = []
    if task == "classification":
        labels = y_raw.astype(str)
        counts = labels.value_counts()
        if (counts < 2).any() and holdout:
            raise DataError(
                f"class {counts.idxmin()!r} of {spec.target!r} has {counts.min()} row: every class needs at "
                "least 2 (one to train on, one to score); drop its rows or merge it"
            )
        classes = tuple(sorted(counts.index))
        y_all = labels.map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
        firsts = dict(zip(labels, y_raw, strict=True))  # the label's own value, 1 and not "1"
        class_values = [_plain(firsts[c]) for c in classes]
    else:
        y_all = values
    x_all = frame[inputs]
    # Stratified where every class has two rows; the estimators accept rarer ones, unstratified.
    stratify = y_all if task == "classification" and (counts >= 2).all() else None
    if test_frame is None and not holdout:  # every row trains or validates (the estimators)
        rest = np.arange(len(frame))
        x_test, y_test = x_all.iloc[:0], y_all[:0]
    elif test_frame is None:
        idx = np.arange(len(frame))
        rest, test_idx = train_test_split(
            idx, test_size=TEST_FRACTION, random_state=HOLDOUT_SEED, stratify=stratify
        )
        x_test, y_test = x_all.iloc[test_idx], y_all[test_idx]
    else:
        rest = np.arange(len(frame))
        x_test, y_test = _test_rows(test_frame, spec, inputs, numbers, task, classes)
    n_val = int(np.ceil(val_fraction * len(rest)))
    fits = stratify is not None and min(n_val, len(rest) - n_val) >= len(classes)  # a row a class
    strat_rest = y_all[rest] if fits else None
    train_idx, val_idx = train_test_split(
        rest, test_size=val_fraction, random_state=split_seed, stratify=strat_rest
    )
    frames = {"train": x_all.iloc[train_idx], "val": x_all.iloc[val_idx], "test": x_test}
    ys = {"train": y_all[train_idx], "val": y_all[val_idx], "test": y_test}
    cat = [c for c in inputs if c in spec.categorical or not _is_number(frame[c])]
    num = [c for c in inputs if c not in cat]
    return frames, ys, task, metric, (classes, class_values), num, cat


def _with_target(frame, target: str, *, what: str, learn: bool):
    """`frame`'s rows that have a target: missing and infinite ones left out (the latter counted in
    a warning). For the rows to `learn` from, none left or one value in all is nothing to learn:
    one line."""
    import pandas as pd

    column = frame[target]
    infinite = column.isin([np.inf, -np.inf]) if _is_number(column) else pd.Series(False, index=frame.index)
    if infinite.any():
        warnings.warn(
            f"{what}: target {target!r} is infinite in {int(infinite.sum())} of {len(frame)} rows; "
            "they are left out, as rows without a target are",
            stacklevel=3,
        )
    kept = frame[column.notna() & ~infinite].reset_index(drop=True)
    if learn and len(kept) == 0:
        how = "missing or infinite" if infinite.any() else "missing"
        raise DataError(
            f"target {target!r} is {how} in every one of the {len(frame)} rows: nothing to learn "
            "(is it the right column?)"
        )
    y = kept[target]
    if learn and (y.nunique() if _is_number(y) else y.astype(str).nunique()) < 2:
        raise DataError(
            f"target {target!r} holds one value ({_plain(y.iloc[0])!r}) in all {len(kept)} rows that "
            "have one: nothing to learn"
        )
    return kept


def numbers_only(frame, columns, *, what: str):
    """`frame` with `columns` (numeric inputs) as numbers: a value that is not one (text such as
    "n/a" or "abc", or "12,5" unless the file was read with decimal commas) or is infinite becomes
    missing, as a missing value is imputed; one warning names the columns and counts. `frame`
    itself is not changed."""
    import pandas as pd

    comma = frame.attrs.get("decimal") == ","  # set by _read_text
    changed, counts = {}, []
    # A column of numbers can only hold infinities to mend, and a column of whole numbers none:
    # one NumPy check a float column instead of a few pandas calls a column, which were most of
    # a single row's prediction time (docs/benchmarks.md, "Prediction speed").
    dtypes = frame.dtypes
    typed = [c for c in columns if _is_number(dtypes[c])]
    floats = [c for c in typed if pd.api.types.is_float_dtype(dtypes[c])]  # whole numbers are finite
    # (column by column: selecting several columns at once copies the text columns beside them)
    infinite = {c for c in floats if np.isinf(frame[c].to_numpy(dtype=np.float64, na_value=np.nan)).any()}
    clean = set(typed) - infinite
    columns = [c for c in columns if c not in clean]
    for c in columns:
        column = frame[c]
        if pd.api.types.is_bool_dtype(column):
            continue
        values = column
        if not _is_number(column):
            values = pd.to_numeric(column.astype(object), errors="coerce")
            if comma:
                values = values.fillna(_comma_numbers(column))
        wrong = values.isna() & column.notna()
        infinite = values.isin([np.inf, -np.inf])
        if wrong.any() or infinite.any():
            values = values.astype(float).mask(infinite)
            said = []
            if wrong.any():
                said.append(f"{int(wrong.sum())} not a number (e.g. {column[wrong].iloc[0]!r})")
            if infinite.any():
                said.append(f"{int(infinite.sum())} infinite")
            counts.append(f"{c!r} {' and '.join(said)}")
        if values is not column:
            changed[c] = values
    if changed:
        frame = frame.copy(deep=False)
        for c, values in changed.items():
            frame[c] = values
    if counts:
        warnings.warn(
            f"{what}: values of numeric column(s) taken as missing: {'; '.join(counts[:12])}"
            + (f"; ... ({len(counts)} columns in all)" if len(counts) > 12 else ""),
            stacklevel=3,
        )
    return frame


def _plain(value):
    """A NumPy scalar as the Python value it holds (JSON and scikit-learn's checks want these)."""
    return value.item() if isinstance(value, np.generic) else value


def _test_rows(
    test_frame, spec: TableSpec, inputs: list[str], numbers: list[str], task: str, classes: tuple[str, ...]
):
    test_frame.columns = [str(c) for c in test_frame.columns]
    missing = [c for c in (*inputs, spec.target) if c not in test_frame.columns]
    if missing:
        raise DataError(f"the test table lacks column(s) {_names(missing)} that the training table has")
    test_frame = _with_target(test_frame, spec.target, what="the test table", learn=False)
    test_frame = numbers_only(test_frame, numbers, what="the test table")
    if task == "classification":
        labels = test_frame[spec.target].astype(str)
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            raise DataError(
                f"the test table's target has class(es) the training table lacks: {_names(unknown)}"
            )
        y = labels.map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
    else:
        y = test_frame[spec.target].to_numpy(dtype=float)
    return test_frame[inputs], y


def _names(names) -> str:
    names = list(names)
    return ", ".join(map(str, names[:12])) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")


def y_tensor(y: np.ndarray, task: str, target: TargetScale | None, device) -> torch.Tensor:
    if task == "classification":  # a copy: pandas may hand out read-only arrays, which torch warns about
        return torch.tensor(np.asarray(y, dtype=np.int64), device=device)
    assert target is not None  # load_table fits a regression target's scale
    return torch.as_tensor(target.forward(y.astype(np.float64)), dtype=torch.float32, device=device)


def load_table(
    spec: TableSpec,
    *,
    device,
    val_fraction: float,
    split_seed: int,
    frame=None,
    test_frame=None,
    holdout: bool = True,
) -> Dataset:
    """The table `spec` names (or `frame`, a DataFrame standing for spec.train) as a Dataset on
    `device`, its inputs encoded with the `standard` numeric transform; `Dataset.variant` gives
    the others. Without `holdout` no test split is carved: the test split is empty."""
    frame = read_table(spec.train, what="train") if frame is None else read_table(frame)
    if test_frame is None and spec.test is not None:
        test_frame = read_table(spec.test, what="test")
    frames, ys, task, metric, (classes, class_values), num, cat = split_table(
        frame, spec, test_frame=test_frame, val_fraction=val_fraction, split_seed=split_seed,
        holdout=holdout,
    )  # fmt: skip
    target = None
    if task == "regression":
        every = np.concatenate([ys["train"], ys["val"], ys["test"]])
        target = TargetScale.fit(ys["train"], log=wants_log(every))
    table = Table(frames, num, cat, spec.target, class_values)
    name = Path(spec.train).stem if isinstance(spec.train, str) else "table"
    y = {k: y_tensor(v, task, target, device) for k, v in ys.items()}
    empty = torch.empty(0, device=device)
    data = Dataset(
        name=name, classes=classes, image_shape=None, mean=(), std=(),
        x_train=empty, y_train=y["train"], x_val=empty, y_val=y["val"], x_test=empty, y_test=y["test"],
        split_seed=int(split_seed), val_fraction=float(val_fraction), task=task, metric=metric,
        target=target, table=table, numeric="",
    )  # fmt: skip
    return encoded(data, "standard")


def encoded(data: Dataset, numeric: str) -> Dataset:
    """`data` with its inputs encoded by the `numeric` transform, fitted on its training rows."""
    table: Table = data.table
    if numeric not in NUMERICS:
        raise DataError(f"numeric transform {numeric!r} is not one of {', '.join(NUMERICS)}")
    cache = table.datasets
    if numeric not in cache:
        x = {
            k: torch.as_tensor(table.encode(numeric, f), device=data.device) for k, f in table.frames.items()
        }
        cache[numeric] = dataclasses.replace(
            data, x_train=x["train"], x_val=x["val"], x_test=x["test"], numeric=numeric,
            numeric_features=leading_numeric(table.transformer(numeric)),
        )  # fmt: skip
    return cache[numeric]
