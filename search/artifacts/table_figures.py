"""A table model's pictures and its permutation importance, for an export of a table study.

Where an image study's export shows test images captioned with predictions, a table study's shows
what a table's reader wants: the confusion matrix on the test split (classification) or the
predictions against the truth (regression), both drawn by scikit-learn's own displays, and the
permutation importance of every input column (`sklearn.inspection.permutation_importance`: how
much the study's metric drops on the test split when a column's values are shuffled, the mean and
spread over `REPEATS` shuffles), drawn as bars and written into the test report. Drawn on a
matplotlib `Figure` with the Agg canvas, never pyplot: no global state, no display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from search.artifacts.evaluation import Evaluation
from search.data.targets import SCORERS, score
from search.files import atomic_write
from search.schema import ACTUAL_PNG, CONFUSION_PNG, IMPORTANCE_PNG

REPEATS = 5  # shuffles per column
MAX_ROWS = 5000  # test rows the importance is measured on (a fixed-seed sample beyond that)
MAX_POINTS = 5000  # points drawn in the predicted-against-actual picture


def permutation_importance(predictor, rows, truth: np.ndarray, metric: str, seed: int = 0) -> list[dict]:
    """Each input column's importance on `rows` (raw), most important first:
    [{column, mean, std}], in the study metric's units."""
    from sklearn.inspection import permutation_importance as sk_importance

    if len(rows) > MAX_ROWS:
        pick = np.random.default_rng(seed).choice(len(rows), MAX_ROWS, replace=False)
        rows, truth = rows.iloc[pick], truth[pick]

    def scorer(estimator: _Fitted, x, y: np.ndarray) -> float:  # as scikit-learn's scorer of that name
        return score(metric, y, getattr(estimator, SCORERS[metric].response)(x))

    result = sk_importance(
        _Fitted(predictor), rows, truth, scoring=scorer, n_repeats=REPEATS, random_state=seed
    )
    found = [
        {"column": str(c), "mean": float(m), "std": float(s)}
        for c, m, s in zip(rows.columns, result.importances_mean, result.importances_std, strict=True)
    ]
    return sorted(found, key=lambda r: -r["mean"])


class _Fitted:
    """The predictor as the estimator permutation_importance expects (already fitted), answering
    in the truth's terms: class indices (argmax of the outputs), or values in the target's units."""

    def __init__(self, predictor):
        self.predictor = predictor

    def fit(self, *args, **kwargs):
        return self

    def predict(self, rows) -> np.ndarray:
        if self.predictor.preprocess.task == "regression":
            return self.predictor.predict(rows)
        return self.predictor.outputs(rows).argmax(1).cpu().numpy()

    def predict_proba(self, rows) -> np.ndarray:
        return self.predictor.predict_proba(rows)


def write_table_figures(ev: Evaluation, importance: list[dict], out_dir: str | Path) -> list[Path]:
    """confusion.png or predicted_vs_actual.png, and importance.png, into `out_dir`."""
    out_dir = Path(out_dir)
    return [_save(_errors_figure(ev), out_dir / (ACTUAL_PNG if ev.task == "regression" else CONFUSION_PNG)),
            _save(_importance_figure(importance, ev.metric), out_dir / IMPORTANCE_PNG)]  # fmt: skip


def _errors_figure(ev: Evaluation) -> Figure:
    from sklearn.metrics import ConfusionMatrixDisplay, PredictionErrorDisplay

    if ev.task == "regression":
        fig = Figure(figsize=(5.5, 5), dpi=100)
        ax = fig.add_subplot()
        PredictionErrorDisplay.from_predictions(
            ev.targets, ev.predictions, kind="actual_vs_predicted", ax=ax,
            subsample=min(MAX_POINTS, len(ev.targets)), random_state=0,
        )  # fmt: skip
        ax.set_title(f"test split: R² {ev.report['r2']:.4f}, RMSE {ev.report['rmse']:.4g}")
        fig.tight_layout()
        return fig
    side = min(12.0, 3 + 0.6 * len(ev.classes))
    fig = Figure(figsize=(side, side), dpi=100)
    ax = fig.add_subplot()
    ConfusionMatrixDisplay(ev.confusion, display_labels=list(ev.classes)).plot(
        ax=ax, colorbar=False, xticks_rotation=45 if len(ev.classes) > 4 else "horizontal"
    )
    ax.set_title(f"test split: accuracy {ev.accuracy:.4f}")
    fig.tight_layout()
    return fig


def _importance_figure(importance: list[dict], metric: str) -> Figure:
    shown = importance[:30][::-1]  # the most important on top
    fig = Figure(figsize=(7, 1 + 0.3 * max(1, len(shown))), dpi=100)
    ax = fig.add_subplot()
    ax.barh([r["column"] for r in shown], [r["mean"] for r in shown], xerr=[r["std"] for r in shown])
    ax.set_xlabel(f"drop in test {metric} when the column is shuffled")
    ax.set_title("permutation importance")
    fig.tight_layout()
    return fig


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png"))


def importance_lines(importance: list[dict[str, Any]]) -> list[str]:
    """The importance as text lines for the test report."""
    width = max([len(r["column"]) for r in importance] + [6])
    return [f"{r['column']:<{width}}  {r['mean']:+.4f} ± {r['std']:.4f}" for r in importance]
