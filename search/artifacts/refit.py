"""Every row used: a table study's chosen model, trained again on its training and validation rows.

The search chose the config (and the ensemble's members and weights) on validation; the export
then trains the same configs, seeds and epoch budgets on training + validation rows, with the
preprocessing fitted afresh on them (search.data.merged), so the model a user takes away has
learnt from every row but the test rows. Nothing is chosen after this: the refit model is what
the export evaluates on the test split, once.

With `folds` K >= 2 (k-fold cross-fitting, AutoGluon's bagging without its stacking), each
chosen config is instead trained K times, the k-th time on every training + validation row but
those of fold k (stratified for a classification) and with seed + k, and the K models are
averaged with the config's weight split evenly among them. The preprocessing is the one fitted
on all those rows, so the K models share one input. The best config is still refit once on
every row as the single model (model.pt).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
from sklearn.model_selection import KFold, StratifiedKFold
from torch import nn

from search.artifacts.ensemble import Ensemble, Selection
from search.data.dataset import Dataset
from search.data.merged import with_validation_rows
from search.errors import UserError
from search.training.config import TrainConfig
from search.training.fit import EpochCallback, fit

# The export cross-fits by default where that was measured to pay: on five suite tables of 3,400
# to 7,600 rows (python -m search.bench --every-row, docs/benchmarks.md) 5 folds beat one refit
# on 4 of 5 by a mean of +0.94 test points, at 4 to 6 times the refit's training time. On four
# of 17,000 to 22,000 rows they were level with it (mean -0.00, 2 wins, 2 losses) at 3 to 5
# times the training, so bigger tables are refit once.
AUTO_FOLDS = 5
AUTO_MAX_ROWS = 10_000  # training + validation rows


def default_folds(rows: int) -> int:
    """The export's cross-fitting folds for a table of `rows` training + validation rows when the
    user names none: AUTO_FOLDS up to AUTO_MAX_ROWS, else 0 (one refit)."""
    return AUTO_FOLDS if rows <= AUTO_MAX_ROWS else 0


@dataclass
class Refit:
    single: nn.Module  # the best trial's config, refit
    ensemble: Ensemble | None  # the selection's members refit with the selection's weights, or None
    data: Dataset  # training = training + validation rows; its preprocessing is what gets saved
    rows: int  # training rows the refit learnt from
    seconds: float
    folds: int = 0  # cross-fitting's K; 0: each config refit once on every row
    # the ensemble's members, (trial number, config) each, in its order
    members: list[tuple[int, TrainConfig]] = dataclasses.field(default_factory=list)

    def record(self, searched_rows: int) -> dict:
        how = (
            f"each chosen config trained {self.folds} times, each time leaving one fold of the training and "
            "validation rows out, and the models averaged"
            if self.folds
            else "trained again on the training and validation rows"
        )
        return {
            "rows": self.rows,
            "searched_rows": searched_rows,
            "folds": self.folds,
            "models": len(self.members) or 1,  # networks trained and exported together
            "seconds": round(self.seconds, 2),
            "note": f"{how}, preprocessing refitted on them; "
            "the validation figures are the search's, the test figures this model's",
        }


def _one(config: TrainConfig, data: Dataset, on_epoch: EpochCallback | None) -> nn.Module:
    result = fit(config, data, on_epoch=on_epoch)
    if result.diverged or result.model is None:
        raise UserError(
            f"refitting {config.numeric} config with seed {config.seed} diverged: {result.diverged}"
        )
    return result.model.eval()


def fold_rows(data: Dataset, folds: int, seed: int) -> list[torch.Tensor]:
    """The training rows each of `folds` models learns from: all but one fold's, the folds
    stratified by class for a classification (no more folds than the rarest class has rows, nor
    than there are rows)."""
    y = data.y_train.cpu().numpy()
    n = len(y)
    classes = [] if data.task == "regression" else torch.bincount(data.y_train.cpu()).tolist()
    counts = [c for c in classes if c]
    splitter: KFold = KFold(max(2, min(folds, n)), shuffle=True, random_state=seed)  # no more folds than rows
    if counts and min(counts) >= 2:  # a class of one row cannot be stratified
        splitter = StratifiedKFold(min(folds, min(counts)), shuffle=True, random_state=seed)
    return [torch.as_tensor(kept, device=data.device) for kept, _ in splitter.split(torch.zeros(n), y)]


def _fold_models(config: TrainConfig, data: Dataset, folds: int, on_epoch) -> list[nn.Module]:
    """`config` trained on each fold's rows (the others'), with seed + k for the k-th."""
    source = data.variant(config.numeric)
    models = []
    for k, rows in enumerate(fold_rows(source, folds, config.seed)):
        part = dataclasses.replace(source, x_train=source.x_train[rows], y_train=source.y_train[rows])
        models.append(_one(dataclasses.replace(config, seed=config.seed + k), part, on_epoch))
    return models


def refit(
    config: TrainConfig,
    selection: Selection | None,
    data: Dataset,
    *,
    with_ensemble: bool,
    trial_number: int = -1,
    folds: int = 0,
    on_epoch: EpochCallback | None = None,
) -> Refit:
    """The best config (trial `trial_number`'s), and with `with_ensemble` the selection's members,
    refit on every row; with `folds` >= 2, cross-fitted into one averaged ensemble (the module
    says how)."""
    started = time.perf_counter()
    merged = with_validation_rows(data)
    single = _one(config, merged, on_epoch)
    regression = data.task == "regression"
    chosen: list[tuple[int, TrainConfig, float]] = (
        [(n, selection.configs[n], w) for n, w in selection.weights.items()]
        if with_ensemble and selection is not None
        else []
    )
    ens, members = None, []
    if folds >= 2:
        chosen = chosen or [(trial_number, config, 1.0)]
        models, weights = [], []
        for n, c, w in chosen:
            fitted = _fold_models(c, merged, folds, on_epoch)
            models += fitted
            weights += [w / len(fitted)] * len(fitted)
            members += [(n, dataclasses.replace(c, seed=c.seed + k)) for k in range(len(fitted))]
        ens = Ensemble(models, weights, regression=regression).to(data.device).eval()
    elif chosen:
        assert selection is not None
        models = [single if n == selection.single and c == config else _one(c, merged, on_epoch)
                  for n, c, _ in chosen]  # fmt: skip
        ens = Ensemble(models, [w for *_, w in chosen], regression=regression).to(data.device).eval()
        members = [(n, c) for n, c, _ in chosen]
    took = time.perf_counter() - started
    return Refit(single, ens, merged, len(merged.y_train), took, folds if folds >= 2 else 0, members)
