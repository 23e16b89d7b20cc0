"""What a good prediction is: the task, the study's metric, and the target's scale.

A trial's value is its validation score under the study's `metric`, and higher is always better,
so the sampler, the pruner and every output read one number one way. Metrics carry scikit-learn's
scorer names: `accuracy` (the default), `balanced_accuracy`, `roc_auc` and `neg_log_loss` for
classification; `r2` (the default) and `neg_root_mean_squared_error` for regression. A regression
target trains standardized, or standardized after a log where its values are positive and skewed
(`TargetScale`), and is scored in its own units. Accuracy, R² and RMSE are computed for all K
members of a stack at once on the device; the others through scikit-learn, member by member.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

TASKS = ("classification", "regression")
METRICS = {
    "classification": ("accuracy", "balanced_accuracy", "roc_auc", "neg_log_loss"),
    "regression": ("r2", "neg_root_mean_squared_error"),
}
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
    k = len(outputs)
    if task == "regression":
        pred = outputs[..., 0].to(torch.float64)
        yy = y.to(torch.float64)
        loss = (pred - yy).pow(2).mean(1)
        raw_pred, raw = (target.inverse(pred), target.inverse(yy, clip=False)) if target else (pred, yy)
        sse = (raw_pred - raw).pow(2).sum(1)
        if metric == "r2":
            score = 1.0 - sse / (raw - raw.mean()).pow(2).sum().clamp(min=1e-300)
        else:
            score = -(sse / len(raw)).sqrt()
        return _finite(loss.tolist()), _finite(score.tolist())
    logits = outputs.to(torch.float64 if outputs.dtype == torch.float64 else torch.float32)
    target_k = y.expand(k, len(y))
    loss = F.cross_entropy(logits.transpose(1, 2), target_k, reduction="none").mean(1)
    if metric == "accuracy":
        # a count over N in float64: the same float as Python's correct / N, bit for bit
        score = (logits.argmax(2) == target_k).sum(1).to(torch.float64) / len(y)
        return _finite(loss.tolist()), score.tolist()
    losses = _finite(loss.tolist())
    if metric == "neg_log_loss":
        return losses, [-v for v in losses]
    probs = logits.softmax(2).cpu().numpy()
    truth = y.cpu().numpy()
    return losses, [_sklearn_score(metric, truth, p) for p in probs]


def _sklearn_score(metric: str, truth: np.ndarray, probs: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    if not np.all(np.isfinite(probs)):
        return math.nan
    if metric == "balanced_accuracy":
        return float(balanced_accuracy_score(truth, probs.argmax(1)))
    labels = np.arange(probs.shape[1])
    if len(np.unique(truth)) < 2:
        return math.nan  # a split with one class has no ranking to score
    try:
        if probs.shape[1] == 2:
            return float(roc_auc_score(truth, probs[:, 1]))
        return float(roc_auc_score(truth, probs, multi_class="ovr", labels=labels))
    except ValueError:  # a class absent from the split: one-vs-rest has nothing to rank for it
        return math.nan


def _finite(values: list[float]) -> list[float]:
    return [v if math.isfinite(v) else math.nan for v in values]
