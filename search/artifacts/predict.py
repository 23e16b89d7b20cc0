"""Predictions from an exported table model: the library behind `python -m search.predict`.

An export of a table study holds, beside best.json and model.pt, the fitted preprocessing
(`preprocess.skops`: the ColumnTransformer of the trial's numeric transform, in skops' format,
and as JSON text the input columns, the classes as the target column held them, and the
regression target's scale), so a `Predictor` takes raw rows: a DataFrame (or a CSV or Parquet
file) with the training table's columns, matched by name and in any order; missing values and
unseen categories are handled as in training.

Loading the file runs no code from it: skops builds only scikit-learn's and NumPy's types it
trusts and the few names in TRUSTED_TYPES, and a file that names any other type is refused
before anything in it is built. An export from before this format (a `preprocess.pkl`, a
pickle, which could run anything when loaded) is never opened: export the study again.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from search.artifacts import ensemble
from search.artifacts.evaluation import load_model, predict_logits, read_best
from search.data.image_files import DataError
from search.data.tables import leading_numeric, numbers_only, read_table
from search.data.targets import TargetScale
from search.errors import UserError, first_line
from search.files import atomic_write
from search.schema import BEST_JSON, ENSEMBLE_PT, MODEL_PT, PREDICTIONS_CSV, PREPROCESS_PKL, PREPROCESS_SKOPS

FORMAT = 2  # preprocess.skops's layout version (1 was preprocess.pkl, a pickle: never read now)

# The types beyond skops' defaults (scikit-learn's estimators, builtins, NumPy arrays) that an
# export's ColumnTransformer holds, as skops.io.get_untrusted_types reports them for an export of
# every numeric transform in search.data.numeric (numeric, categorical, boolean and missing
# columns): NumPy's dtype objects, and the two module-level functions search.data.tables hands
# to FunctionTransformer. Loading builds nothing else; never pass trusted=True.
TRUSTED_TYPES = (
    "numpy.dtype",
    "search.data.tables._as_text",  # the categorical columns' cast to text
    "search.data.tables.smooth_clip",  # the `robust` transform's soft clip
    "search.data.piecewise.PiecewiseLinear",  # the pleN transforms: its state is plain arrays
)


@dataclass
class Preprocess:
    """What turns raw rows into a table model's inputs, and its outputs back into answers."""

    transformer: Any  # the fitted sklearn ColumnTransformer
    columns: list[str]  # the input columns, in training order
    task: str
    classes: list = field(default_factory=list)  # class values as the target column held them
    target: TargetScale | None = None  # regression: the target's scale
    target_name: str = ""

    @classmethod
    def of(cls, data, numeric: str) -> Preprocess:
        table = data.table
        return cls(
            table.transformer(numeric), list(table.frames["train"].columns), data.task,
            list(table.class_values), data.target, table.target_name,
        )  # fmt: skip

    def save(self, path: Path) -> Path:
        """`path` (preprocess.skops): the transformer in skops' format, the rest as JSON text."""
        import skops.io

        meta = {
            "columns": list(self.columns), "task": self.task,
            "classes": [_class_to_json(c) for c in self.classes],
            "target": None if self.target is None else dataclasses.asdict(self.target),
            "target_name": self.target_name,
        }  # fmt: skip
        state = {"format": FORMAT, "meta": json.dumps(meta), "transformer": self.transformer}
        return atomic_write(path, skops.io.dumps(state))


def _class_to_json(value) -> Any:
    """A class value as JSON that gives the same value back (type included): Python's str, int,
    float and bool as themselves; NumPy's scalars, pandas' Timestamps and Timedeltas tagged; any
    other type as its text (the label the model was trained on)."""
    if type(value) in (str, int, float, bool):
        return value
    if isinstance(value, np.generic) and value.dtype.kind in "biufU":
        return {"numpy": value.dtype.str, "value": value.item()}
    import pandas as pd

    if isinstance(value, pd.Timestamp):
        return {"timestamp": value.isoformat(), "tz": None if value.tz is None else str(value.tz)}
    if isinstance(value, pd.Timedelta):
        return {"timedelta": value.isoformat()}
    return {"text": str(value)}


def _class_from_json(value) -> Any:
    if not isinstance(value, dict):
        return value
    if "numpy" in value:
        dtype = np.dtype(value["numpy"])
        if dtype.kind not in "biufU":
            raise ValueError(f"a class of NumPy type {dtype} is not one an export writes")
        return dtype.type(value["value"])
    import pandas as pd

    if "timestamp" in value:
        stamp = pd.Timestamp(value["timestamp"])
        return stamp.tz_convert(value["tz"]) if value["tz"] and stamp.tz is not None else stamp
    if "timedelta" in value:
        return pd.Timedelta(value["timedelta"])
    return str(value["text"])


def load_preprocess(path: Path) -> Preprocess:
    """The preprocessing in `path` (an export's preprocess.skops), built only from trusted types:
    a file that names any other type is refused, one line, before anything in it is built."""
    old = path.parent / PREPROCESS_PKL
    if not path.is_file() and old.is_file():
        raise UserError(
            f"{path.parent}: the export predates safe loading (its {PREPROCESS_PKL} is a pickle, "
            "which could run code, and is not opened); run python -m search.export again"
        )
    if not path.is_file():
        raise UserError(f"{path} does not exist: the folder holds no table model's export")
    import skops.io

    not_ours = f"{path}: not a preprocess file of python -m search.export"
    try:
        untrusted = skops.io.get_untrusted_types(file=path)  # reads the schema, builds nothing
    except Exception as e:
        raise UserError(f"{not_ours} ({first_line(e)})") from None
    refused = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if refused:
        raise UserError(
            f"{path}: refused, it names type(s) an export never holds ({', '.join(refused[:8])}"
            f"{', ...' if len(refused) > 8 else ''}); nothing in it was loaded or run"
        )
    try:
        state = skops.io.load(path, trusted=list(TRUSTED_TYPES))
    except Exception as e:
        raise UserError(f"{not_ours} ({first_line(e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: written by another version of search; export the study again")
    try:
        meta = json.loads(state["meta"])
        target = meta["target"]
        return Preprocess(
            transformer=state["transformer"], columns=[str(c) for c in meta["columns"]],
            task=str(meta["task"]), classes=[_class_from_json(c) for c in meta["classes"]],
            target=None if target is None else TargetScale(**target),
            target_name=str(meta["target_name"]),
        )  # fmt: skip
    except Exception as e:
        raise UserError(f"{not_ours} ({first_line(e)})") from None


@dataclass
class Predictor:
    """A table model that takes raw rows: `predict` gives labels or values, `predict_proba` the
    class probabilities (columns in `classes` order)."""

    model: nn.Module  # the portable MLP, eval mode
    preprocess: Preprocess
    device: torch.device = torch.device("cpu")
    exact: nn.Module | None = field(default=None, repr=False)  # the model in float64

    @property
    def classes(self) -> list:
        return self.preprocess.classes

    def rows(self, rows, *, what: str = "the rows to predict"):
        """`rows` as a DataFrame of the model's input columns, each numeric one as numbers: a value
        of another kind ("n/a", "12,5", "abc") or an infinite one is missing, and one warning
        counts them by column. A column the model takes that the rows lack is one line."""
        frame = read_table(rows, what=what)
        frame.columns = [str(c) for c in frame.columns]
        missing = [c for c in self.preprocess.columns if c not in frame.columns]
        if missing:
            raise DataError(
                f"{what}: the rows lack column(s) {', '.join(map(repr, missing[:8]))} that the model was "
                f"trained on; it takes {', '.join(self.preprocess.columns)}"
            )
        if list(frame.columns) != list(self.preprocess.columns):  # a selection costs ~2 ms a call
            frame = frame[self.preprocess.columns]
        return numbers_only(frame, self.numeric_columns, what=what)

    @property
    def numeric_columns(self) -> list[str]:
        """The input columns the preprocessing reads as numbers (the others are categories)."""
        fitted = self.preprocess.transformer.transformers_
        return [str(c) for name, _, columns in fitted if name == "numeric" for c in columns]

    def inputs(self, rows) -> torch.Tensor:
        x = self.preprocess.transformer.transform(self.rows(rows))
        return torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.device)

    def outputs(self, rows) -> torch.Tensor:
        """In float64, on a float64 copy of the model: a row's answer must not depend on which
        other rows share its batch (float32 sums block differently with the row count)."""
        if self.exact is None:
            self.exact = copy.deepcopy(self.model).double()
        return predict_logits(self.exact, self.inputs(rows).double())

    def predict(self, rows) -> np.ndarray:
        out = self.outputs(rows)
        if self.preprocess.task == "regression":
            assert self.preprocess.target is not None  # a regression model saves its target's scale
            return self.preprocess.target.inverse(out[:, 0].double().cpu().numpy())
        return np.asarray(self.classes, dtype=object)[out.argmax(1).cpu().numpy()]

    def predict_proba(self, rows) -> np.ndarray:
        if self.preprocess.task == "regression":
            raise UserError("a regression model has no class probabilities: use predict")
        return self.outputs(rows).softmax(1).double().cpu().numpy()


def load_predictor(folder: str | Path, *, device: str | torch.device = "cpu") -> Predictor:
    """The exported table model in `folder` (results/<study>/)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--model {folder}: no such folder; export the study with python -m search.export")
    best = read_best(folder / BEST_JSON)
    if best.get("dataset") != "table":
        raise UserError(f"--model {folder}: a {best.get('dataset')} model takes images, not table rows")
    pre = load_preprocess(folder / PREPROCESS_SKOPS)
    n_inputs, numeric = len(pre.transformer.get_feature_names_out()), leading_numeric(pre.transformer)
    n_out = 1 if pre.task == "regression" else len(pre.classes)
    if ensemble.is_the_model(best) and (folder / ENSEMBLE_PT).is_file():
        # the export's model is the ensemble, and the preprocessing is its members'
        model: nn.Module = ensemble.load(
            folder / ENSEMBLE_PT,
            in_features=n_inputs,
            n_classes=n_out,
            numeric_features=numeric,
            device=device,
        )
    else:
        model = load_model(
            best,
            folder / MODEL_PT,
            in_features=n_inputs,
            n_classes=n_out,
            numeric_features=numeric,
            device=device,
        )
    return Predictor(model, pre, torch.device(device))


def predict_file(
    *, model: str | Path, data: str | Path, out: str | Path | None = None, device="cpu"
) -> tuple[Path, int]:
    """Predict every row of the table `data`; write a CSV of the predictions (and, for
    classification, one probability column per class) to `out` (default: the model's folder's
    predictions.csv). Returns the path and the number of rows."""
    import pandas as pd

    predictor = load_predictor(model, device=device)
    frame = predictor.rows(data, what=f"--data {data}")  # checked once: one warning at most
    result = pd.DataFrame({"prediction": predictor.predict(frame)}, index=frame.index)
    if predictor.preprocess.task == "classification":
        probs = predictor.predict_proba(frame)
        for i, c in enumerate(predictor.classes):
            result[f"proba_{c}"] = probs[:, i]
    path = Path(out) if out is not None else Path(model) / PREDICTIONS_CSV
    if path.is_dir():
        raise UserError(f"--out {path} is a folder; name a file")
    atomic_write(path, result.to_csv(index=False))
    return path, len(result)
