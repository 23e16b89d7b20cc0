"""What a good prediction is: the task, the study's metric, and the target's scale.

A trial's value is its validation score under the study's `metric`, and higher is always better,
so the sampler, the pruner and every output read one number one way. Metrics are scikit-learn's
scorers by name, and `SCORERS` is the one place that says how each is computed: the public
`sklearn.metrics` function its scorer calls, what it asks the model for (`predict`: labels or
values; `predict_proba`: class probabilities) and its sign (the `neg_` names negate an error).
`accuracy` (the default), `balanced_accuracy`, `roc_auc` and `neg_log_loss` score classification;
`r2` (the default) and `neg_root_mean_squared_error` regression. A regression target trains
standardized, or standardized after a log where its values are positive and skewed
(`TargetScale`), and is scored in its own units. Accuracy, log loss, R² and RMSE are computed for
all K members of a stack at once on the device (`Scorer.stacked`, checked against scikit-learn's
scorers in the tests); the others through scikit-learn, member by member (`score`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

TASKS = ("classification", "regression")


# ------------------------------------------------------------------ K members at once, on the device
# Each takes the stack's outputs [K, N, C] (logits) or [K, N] (values in the target's own units)
# and the truth [N] (class indices, or values), and gives the function's figure for each member.


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # a count over N in float64: the same float as Python's correct / N, bit for bit
    return (logits.argmax(2) == y).sum(1).to(torch.float64) / len(y)


def _log_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy: classification's training loss, and scikit-learn's `log_loss`."""
    return F.cross_entropy(logits.transpose(1, 2), y.expand(len(logits), len(y)), reduction="none").mean(1)


def _sse(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    return (pred - truth).pow(2).sum(-1)


def _r2(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    return 1.0 - _sse(pred, truth) / (truth - truth.mean()).pow(2).sum().clamp(min=1e-300)


def _rmse(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    return (_sse(pred, truth) / len(truth)).sqrt()


def _mae(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    return (pred - truth).abs().mean(-1)


@dataclass(frozen=True)
class Scorer:
    """How scikit-learn's scorer of a name scores a model, from its public parts: `sign *
    sklearn.metrics.<function>(truth, <the model's response>)`, as `make_scorer(function,
    response_method=response, greater_is_better=sign > 0)` builds it."""

    task: str
    function: str  # the public sklearn.metrics function the scorer calls
    response: str  # what the scorer asks the model for: "predict" (labels, values) or "predict_proba"
    sign: int = 1  # -1: an error, negated (the `neg_` names), so that higher is better
    # ROC AUC ranks: two classes by the positive class's probability (the scorer "roc_auc"; it asks
    # for decision_function first, which these models lack), more one-vs-rest (the scorer
    # "roc_auc_ovr"); a split that holds one class has no ranking, and scores NaN.
    ranks: bool = False
    stacked: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # the function, K at once


SCORERS: dict[str, Scorer] = {  # the metrics a study may name: scorer names (get_scorer_names())
    "accuracy": Scorer("classification", "accuracy_score", "predict", stacked=_accuracy),
    "balanced_accuracy": Scorer("classification", "balanced_accuracy_score", "predict"),
    "roc_auc": Scorer("classification", "roc_auc_score", "predict_proba", ranks=True),
    "neg_log_loss": Scorer("classification", "log_loss", "predict_proba", -1, stacked=_log_loss),
    "r2": Scorer("regression", "r2_score", "predict", stacked=_r2),
    "neg_root_mean_squared_error": Scorer(
        "regression", "root_mean_squared_error", "predict", -1, stacked=_rmse
    ),
}
METRICS = {task: tuple(name for name, s in SCORERS.items() if s.task == task) for task in TASKS}
DEFAULT_METRIC = {"classification": "accuracy", "regression": "r2"}
MAX_INFERRED_CLASSES = 20  # a whole-number target with at most this many values is a class label


def infer_task(values: np.ndarray | None, *, is_numeric: bool) -> str:
    """The rule the README states: a target that is not numeric (text, categories, booleans) is a
    class label; a numeric one is too when every value is a whole number and there are at most
    MAX_INFERRED_CLASSES distinct values; any other numeric target is regressed."""
    if not is_numeric:
        return "classification"
    assert values is not None, "a numeric target has values"
    finite = values[np.isfinite(values)]
    whole = bool(np.all(np.equal(np.mod(finite, 1), 0)))
    return "classification" if whole and len(np.unique(finite)) <= MAX_INFERRED_CLASSES else "regression"


@dataclass(frozen=True)
class TargetScale:
    """y -> (f(y) - mean) / std, with f = log for `log`, else the identity; fitted on train only.

    `inverse` answers within the training targets' range, as a tree does: an input far outside
    the training rows (a data error such as a diamond measured 0 x 0 x 0 mm) would otherwise
    extrapolate, and through the log to several times the largest target ever seen."""

    mean: float
    std: float
    log: bool = False
    low: float = -math.inf  # the training targets' range, in standardized units
    high: float = math.inf

    @classmethod
    def fit(cls, y: np.ndarray, *, log: bool) -> TargetScale:
        f = np.log(y) if log else y
        mean, std = float(f.mean()), float(f.std()) or 1.0
        return cls(mean, std, log, float((f.min() - mean) / std), float((f.max() - mean) / std))

    def forward(self, y):
        f = (np.log(y) if isinstance(y, np.ndarray) else torch.log(y)) if self.log else y
        return (f - self.mean) / self.std

    def inverse(self, z, *, clip: bool = True):
        """Back to the target's units; `clip`: a prediction, kept within the training range (a
        true value is mapped back as it is)."""
        if clip:
            z = np.clip(z, self.low, self.high) if isinstance(z, np.ndarray) else z.clamp(self.low, self.high)
        f = z * self.std + self.mean
        return (np.exp(f) if isinstance(f, np.ndarray) else torch.exp(f)) if self.log else f


def wants_log(y: np.ndarray) -> bool:
    """A positive target whose values span more than a factor of 10 and lean right trains on its
    log: prices, counts, durations. The log turns relative errors into the squared loss's units."""
    if len(y) == 0 or np.any(y <= 0):
        return False
    return float(y.max() / y.min()) > 10 and float(np.mean(y)) > float(np.median(y))


@torch.no_grad()
def losses_and_scores(
    outputs: torch.Tensor, y: torch.Tensor, *, task: str, metric: str, target: TargetScale | None
) -> tuple[list[float], list[float]]:
    """Each member's (validation loss, score): outputs [K, N, C], y [N] (class indices, or the
    standardized target). The loss is what training minimizes (cross-entropy, or the squared error
    of the standardized target); the score is the metric, higher better."""
    scorer = SCORERS[metric]
    if task == "regression":
        pred, truth = outputs[..., 0].to(torch.float64), y.to(torch.float64)
        loss = (pred - truth).pow(2).mean(1)
        if target is not None:  # scored in the target's own units
            pred, truth = target.inverse(pred), target.inverse(truth, clip=False)
    else:
        pred, truth = outputs.to(torch.float64 if outputs.dtype == torch.float64 else torch.float32), y
        loss = _log_loss(pred, truth)
    losses = _finite(loss.tolist())
    if scorer.stacked is not None:
        return losses, [scorer.sign * v for v in _finite(scorer.stacked(pred, truth).tolist())]
    # The others through scikit-learn, member by member, from what its scorer asks the model for.
    truth_np = truth.cpu().numpy()

    def member(m: np.ndarray) -> float:  # its probabilities [N, C] or values [N]
        if not np.all(np.isfinite(m)):
            return math.nan
        return score(metric, truth_np, m.argmax(1) if m.ndim == 2 and scorer.response == "predict" else m)

    return losses, [member(m) for m in (pred.softmax(2) if task == "classification" else pred).cpu().numpy()]


def score(metric: str, truth: np.ndarray, response: np.ndarray) -> float:
    """One model's `metric`, as scikit-learn's scorer of that name computes it: `truth` holds the
    class indices or the true values, `response` what `SCORERS[metric].response` names: the
    predicted class indices or values (`predict`), or the class probabilities [N, C], columns in
    class-index order (`predict_proba`), where every class counts, even one absent from `truth`."""
    from sklearn import metrics  # imported here: it takes seconds, and --help should not

    scorer = SCORERS[metric]
    kwargs: dict[str, Any] = {}
    if scorer.response == "predict_proba":
        if scorer.ranks and len(np.unique(truth)) < 2:
            return math.nan  # a split with one class has no ranking to score
        if scorer.ranks and response.shape[1] == 2:
            response = response[:, 1]  # the positive class's probability
        else:
            kwargs["labels"] = np.arange(response.shape[1])
            if scorer.ranks:
                kwargs["multi_class"] = "ovr"
    try:
        return scorer.sign * float(getattr(metrics, scorer.function)(truth, response, **kwargs))
    except ValueError:  # a class absent from the split: one-vs-rest has nothing to rank for it
        if scorer.ranks:
            return math.nan
        raise


def regression_figures(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """R², RMSE and MAE of one model's predictions, by the code that scores the metrics `r2` and
    `neg_root_mean_squared_error` (float64, in the units given)."""
    p, t = torch.as_tensor(pred, dtype=torch.float64)[None], torch.as_tensor(truth, dtype=torch.float64)
    return {"r2": _r2(p, t).item(), "rmse": _rmse(p, t).item(), "mae": _mae(p, t).item()}


def _finite(values: list[float]) -> list[float]:
    return [v if math.isfinite(v) else math.nan for v in values]
