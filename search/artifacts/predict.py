"""Predictions from an exported table model: the library behind `python -m search.predict`.

An export of a table study holds, beside best.json and model.pt, the fitted preprocessing
(`preprocess.pkl`: the ColumnTransformer of the trial's numeric transform, the input columns, the
classes as the target column held them, and the regression target's scale), so a `Predictor`
takes raw rows: a DataFrame (or a CSV or Parquet file) with the training table's columns, matched
by name and in any order; missing values and unseen categories are handled as in training.
The pickle is this project's own artifact: load it only from a results folder you trust.
"""

from __future__ import annotations

import copy
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from search.artifacts.evaluation import load_model, predict_logits, read_best
from search.data.image_files import DataError
from search.data.tables import read_table
from search.data.targets import TargetScale
from search.errors import UserError, first_line
from search.files import atomic_write
from search.schema import BEST_JSON, MODEL_PT, PREDICTIONS_CSV, PREPROCESS_PKL

FORMAT = 1  # preprocess.pkl's layout version


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
        buffer = io.BytesIO()
        pickle.dump({"format": FORMAT, "preprocess": self}, buffer)
        return atomic_write(path, buffer.getvalue())


def load_preprocess(path: Path) -> Preprocess:
    if not path.is_file():
        raise UserError(f"{path} does not exist: the folder holds no table model's export")
    try:
        with open(path, "rb") as fh:
            raw = pickle.load(fh)  # noqa: S301  # the project's own artifact (see the docstring)
    except Exception as e:
        raise UserError(
            f"{path}: not a preprocess file of python -m search.export ({first_line(e)})"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise UserError(f"{path}: written by another version of search; export the study again")
    return raw["preprocess"]


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

    def inputs(self, rows) -> torch.Tensor:
        frame = read_table(rows, what="the rows to predict")
        frame.columns = [str(c) for c in frame.columns]
        missing = [c for c in self.preprocess.columns if c not in frame.columns]
        if missing:
            raise DataError(
                f"the rows lack column(s) {', '.join(missing[:8])} that the model was trained on; "
                f"it takes {', '.join(self.preprocess.columns)}"
            )
        x = self.preprocess.transformer.transform(frame[self.preprocess.columns])
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
    pre = load_preprocess(folder / PREPROCESS_PKL)
    n_inputs = len(pre.transformer.get_feature_names_out())
    n_out = 1 if pre.task == "regression" else len(pre.classes)
    model = load_model(best, folder / MODEL_PT, in_features=n_inputs, n_classes=n_out, device=device)
    return Predictor(model, pre, torch.device(device))


def predict_file(
    *, model: str | Path, data: str | Path, out: str | Path | None = None, device="cpu"
) -> tuple[Path, int]:
    """Predict every row of the table `data`; write a CSV of the predictions (and, for
    classification, one probability column per class) to `out` (default: the model's folder's
    predictions.csv). Returns the path and the number of rows."""
    import pandas as pd

    predictor = load_predictor(model, device=device)
    frame = read_table(data, what="--data")
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
