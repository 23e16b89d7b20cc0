"""A finished model: read back from best.json and model.pt, scored on the held-out test split.

Export and retraining both end here, so a test figure means the same thing wherever it came from:
the study's metric (`score`), and for classification scikit-learn's `classification_report`
(per-class precision, recall, F1), the confusion matrix and the accuracy; for regression R²,
RMSE and MAE in the target's own units. The per-sample predictions and confidences come back too,
for pictures of the model's mistakes. Nothing in the search itself may call this: the test split
is touched once, after the search is over.

`read_best` and `load_model` are how every consumer of an export (retraining, pictures) reads
it back, with one-line errors for a missing or malformed best.json and a model.pt that does not
fit the config.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from search.data.datasets import Dataset
from search.data.targets import TargetScale, losses_and_scores, regression_figures
from search.errors import UserError
from search.files import atomic_write
from search.schema import BEST_JSON, REPORT_JSON, REPORT_TXT
from search.training.config import TrainConfig
from search.training.model import build_mlp, predict_logits

# What a consumer of best.json needs: the config, and the data it was scored on, and whence.
BEST_KEYS: dict[str, tuple[type, ...]] = {
    "study": (str,),
    "trial_number": (int,),
    "value": (int, float),
    "params": (dict,),
    "config": (dict,),
    "dataset": (str,),
    "val_fraction": (int, float),
    "split_seed": (int,),
}


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of a portable `model` (search.training.model) on (x, y)."""
    if len(x) == 0:
        return float("nan"), float("nan")
    logits = predict_logits(model, x)
    loss = F.cross_entropy(logits, y, reduction="sum")
    correct = (logits.argmax(1) == y).sum()
    stats = torch.stack([loss, correct.float()]).tolist()  # one host sync
    return stats[0] / len(x), stats[1] / len(x)


@dataclass(frozen=True, eq=False)
class Evaluation:
    """One model scored on one split; arrays are on the host, one entry per sample."""

    classes: tuple[str, ...]  # () for regression
    targets: np.ndarray  # int64 [N] true class indices, or float64 [N] true values (own units)
    predictions: np.ndarray  # int64 [N] argmax of the logits, or float64 [N] predicted values
    confidences: np.ndarray  # float32 [N]: softmax probability of the predicted class (zeros: regression)
    report: dict[str, Any]  # classification_report(..., output_dict=True), or {r2, rmse, mae}
    report_text: str  # the same, as text
    confusion: np.ndarray  # int64 [C, C]: rows are true classes, columns predicted ones
    task: str = "classification"
    metric: str = "accuracy"
    score: float = float("nan")  # the study's metric on this split, higher better

    @property
    def n(self) -> int:
        return int(len(self.targets))

    @property
    def n_correct(self) -> int:
        return int((self.predictions == self.targets).sum())

    @property
    def accuracy(self) -> float:
        # int / int, like `evaluate`'s count / len: the same float, bit for bit.
        return self.n_correct / self.n if self.n else float("nan")


def evaluate_split(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: Sequence[str], *,
    task: str = "classification", metric: str = "accuracy", target: TargetScale | None = None,
) -> Evaluation:  # fmt: skip
    """Score `model` on (x, y) in eval mode; `classes` names the label indices 0..C-1. For
    regression y is the standardized target and `target` maps it back to its own units."""
    # Imported here: sklearn.metrics takes seconds to import, and --help or a bad flag should not.
    from sklearn.metrics import classification_report, confusion_matrix

    logits = predict_logits(model, x)
    _, (score,) = losses_and_scores(logits[None], y, task=task, metric=metric, target=target)
    if task == "regression":
        return _regression(logits[:, 0], y, target, metric, score)
    # argmax of the logits, not of the probabilities: softmax can round two logits to one
    # probability, and the accuracy must agree with `evaluate`'s.
    predictions = logits.argmax(dim=1)
    confidences = torch.softmax(logits, dim=1).gather(1, predictions[:, None]).squeeze(1)
    targets = y.detach().cpu().numpy().astype(np.int64)
    preds = predictions.cpu().numpy().astype(np.int64)
    labels = list(range(len(classes)))  # every class, even one never predicted or absent
    kwargs = dict(labels=labels, target_names=list(classes), zero_division=0)
    return Evaluation(
        classes=tuple(classes),
        targets=targets,
        predictions=preds,
        confidences=confidences.float().cpu().numpy(),
        report=classification_report(targets, preds, output_dict=True, **kwargs),
        report_text=classification_report(targets, preds, digits=4, **kwargs),
        confusion=confusion_matrix(targets, preds, labels=labels).astype(np.int64),
        metric=metric,
        score=score,
    )


def _regression(pred: torch.Tensor, y: torch.Tensor, target: TargetScale | None, metric: str, score: float):
    def own_units(z: torch.Tensor, *, clip: bool) -> np.ndarray:
        z = z.detach().to("cpu", torch.float64)
        return (target.inverse(z, clip=clip) if target is not None else z).numpy()

    truth, values = own_units(y, clip=False), own_units(pred, clip=True)
    report = regression_figures(values, truth)
    text = "\n".join(f"{k:>4}  {v:.6g}" for k, v in report.items()) + "\n"
    empty = np.zeros((0, 0), dtype=np.int64)
    return Evaluation(
        (), truth, values, np.zeros(len(truth), np.float32), report, text, empty, "regression", metric, score
    )


def evaluate_test(model: nn.Module, data: Dataset, numeric: str = "standard") -> Evaluation:
    """The one touch of the test split; a table's rows encoded with the model's `numeric`
    transform (its config's: the one it was trained on)."""
    data = data.variant(numeric)
    return evaluate_split(
        model, data.x_test, data.y_test, data.classes, task=data.task, metric=data.metric, target=data.target
    )


def score_split(model: nn.Module, data: Dataset, split: str = "val", numeric: str = "standard") -> float:
    """The study's metric for `model` on one of `data`'s splits ("val" or "test"), a table's rows
    encoded with the model's `numeric` transform."""
    data = data.variant(numeric)
    x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    logits = predict_logits(model, x)
    _, (score,) = losses_and_scores(logits[None], y, task=data.task, metric=data.metric, target=data.target)
    return score


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the std of a single value is 0."""
    values = [float(v) for v in values]
    if not values:
        return float("nan"), float("nan")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std


def format_confusion(confusion: np.ndarray, classes: Sequence[str]) -> str:
    """A text table: one row per true class, one column per predicted class."""
    names = [str(c) for c in classes]
    width = max([len(n) for n in names] + [len(str(int(confusion.max(initial=0))))])
    corner = "true \\ predicted"
    label_w = max(len(n) for n in [*names, corner])
    lines = [corner.ljust(label_w) + " " + " ".join(n.rjust(width) for n in names)]
    for name, row in zip(names, confusion, strict=True):
        lines.append(name.ljust(label_w) + " " + " ".join(str(int(v)).rjust(width) for v in row))
    return "\n".join(lines)


def score_line(ev: Evaluation) -> str:
    """`test accuracy 0.6649 (6649 of 10000 test rows)`, or `test r2 0.9812 (RMSE 546, MAE 271, ...)`."""
    if ev.task == "regression":
        r = ev.report
        errors = f"R² {r['r2']:.4f}, RMSE {r['rmse']:.4g}, MAE {r['mae']:.4g}"
        return f"test {ev.metric} {ev.score:.4f} ({errors}; {ev.n} test rows)"
    also = "" if ev.metric == "accuracy" else f", accuracy {ev.accuracy:.4f}"
    return f"test {ev.metric} {ev.score:.4f} ({ev.n_correct} of {ev.n} test rows right{also})"


def format_report(ev: Evaluation, *, header: Sequence[str] = ()) -> str:
    lines = [*header]
    if header:
        lines.append("")
    if ev.task == "regression":
        return "\n".join([*lines, score_line(ev), "", ev.report_text.rstrip()]) + "\n"
    lines += [
        score_line(ev),
        "",
        ev.report_text.rstrip(),
        "",
        "confusion matrix (rows: true class, columns: predicted class):",
        format_confusion(ev.confusion, ev.classes),
    ]
    return "\n".join(lines) + "\n"


def report_dict(ev: Evaluation) -> dict[str, Any]:
    if ev.task == "regression":
        return {"split": "test", "metric": ev.metric, "test_score": ev.score, "n_test": ev.n, **ev.report}
    return {
        "split": "test",
        "metric": ev.metric,
        "test_score": ev.score,
        "test_accuracy": ev.accuracy,
        "n_test": ev.n,
        "n_correct": ev.n_correct,
        "classes": list(ev.classes),
        "classification_report": ev.report,
        "confusion_matrix": ev.confusion.tolist(),
        "confusion_matrix_axes": "rows: true class, columns: predicted class",
        "mean_confidence": float(ev.confidences.mean()) if ev.n else None,
    }


def _jsonable(value: Any) -> Any:
    # JSON has no NaN: a figure that does not exist (no validation split with --full) is null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_reports(
    out_dir: str | Path,
    ev: Evaluation,
    *,
    header: Sequence[str] = (),
    meta: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write test_report.txt (for people) and test_report.json (for programs) into `out_dir`.

    `header` lines open the text file; `meta` adds keys (provenance, the config) to the JSON.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    txt, js = out / REPORT_TXT, out / REPORT_JSON
    atomic_write(txt, format_report(ev, header=header))
    payload = {**report_dict(ev), **(meta or {})}
    write_json(js, payload)
    return txt, js


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(_jsonable(payload), indent=2) + "\n")


def save_model(path: str | Path, model: nn.Module) -> None:
    """The model's state_dict on the CPU, as PyTorch's `torch.save` writes it: `model.pt`."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda fh: torch.save(state, fh))


# ---------------------------------------------------------------------------- reading an export


def read_best(path: str | Path) -> dict[str, Any]:
    """best.json as a dict whose required keys exist and have the right types."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise UserError(f"{path} {what}; write it with python -m search.export")
    try:
        best = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file, so not a best.json") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(best, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(best).__name__}")
    missing = [k for k in BEST_KEYS if k not in best]
    if missing:
        raise UserError(
            f"{path}: missing key(s) {', '.join(missing)}; not a best.json from python -m search.export"
        )
    for key, types in BEST_KEYS.items():
        if not isinstance(best[key], types) or isinstance(best[key], bool):
            names = " or ".join(t.__name__ for t in types)
            raise UserError(f"{path}: {key} must be {names}, got {best[key]!r}")
    return best


def best_config(best: dict[str, Any], *, where: str | Path = BEST_JSON) -> TrainConfig:
    try:
        return TrainConfig.from_dict(best["config"])
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def load_state(model: nn.Module, state: Any, *, source: str) -> None:
    """`model.load_state_dict(state)`, but a mismatch is one line naming what differs."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{source}: not a state_dict (a mapping of names to tensors)")
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        problems.append("missing " + ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else ""))
    if unexpected:
        problems.append("unexpected " + ", ".join(unexpected[:4]) + (" ..." if len(unexpected) > 4 else ""))
    shapes = [
        f"{k} {list(state[k].shape)} vs {list(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if shapes:
        problems.append("shape of " + ", ".join(shapes[:3]) + (" ..." if len(shapes) > 3 else ""))
    if problems:
        raise UserError(f"{source} does not match the config's model: {'; '.join(problems)}")
    model.load_state_dict(state)


def load_model(
    best: dict[str, Any],
    model_path: str | Path,
    *,
    in_features: int,
    n_classes: int,
    image_shape: tuple[int, ...] | None = None,
    device: str | torch.device = "cpu",
    numeric_features: int = 0,
) -> nn.Module:
    """The model best.json describes, with model.pt's weights, in eval mode on `device`; its
    inputs' first `numeric_features` columns are a table's numeric ones."""
    model_path = Path(model_path)
    model = build_mlp(
        best_config(best), in_features=in_features, n_classes=n_classes, image_shape=image_shape,
        numeric_features=numeric_features,
    )  # fmt: skip
    if not model_path.is_file():
        raise UserError(f"{model_path} does not exist; write it with python -m search.export")
    try:
        state = torch.load(model_path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged or foreign file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"{model_path}: not a PyTorch weights file ({first})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # the search's own checkpoint format works too
    load_state(model, state, source=str(model_path))
    return model.to(device).eval()
