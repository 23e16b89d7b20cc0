"""Every row used: a table study's chosen model, trained again on its training and validation rows.

The search chose the config (and the ensemble's members and weights) on validation; the export
then trains the same configs, seeds and epoch budgets on training + validation rows, with the
preprocessing fitted afresh on them (search.data.merged), so the model a user takes away has
learnt from every row but the test rows. Nothing is chosen after this: the refit model is what
the export evaluates on the test split, once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from torch import nn

from search.artifacts.ensemble import Ensemble, Selection
from search.data.dataset import Dataset
from search.data.merged import with_validation_rows
from search.errors import UserError
from search.training.config import TrainConfig
from search.training.fit import EpochCallback, fit


@dataclass
class Refit:
    single: nn.Module  # the best trial's config, refit
    ensemble: Ensemble | None  # the selection's members refit with the selection's weights, or None
    data: Dataset  # training = training + validation rows; its preprocessing is what gets saved
    rows: int  # training rows the refit learnt from
    seconds: float

    def record(self, searched_rows: int) -> dict:
        return {
            "rows": self.rows,
            "searched_rows": searched_rows,
            "seconds": round(self.seconds, 2),
            "note": "trained again on the training and validation rows, preprocessing refitted on them; "
            "the validation figures are the search's, the test figures this model's",
        }


def _one(config: TrainConfig, data: Dataset, on_epoch: EpochCallback | None) -> nn.Module:
    result = fit(config, data, on_epoch=on_epoch)
    if result.diverged or result.model is None:
        raise UserError(
            f"refitting {config.numeric} config with seed {config.seed} diverged: {result.diverged}"
        )
    return result.model.eval()


def refit(
    config: TrainConfig,
    selection: Selection | None,
    data: Dataset,
    *,
    with_ensemble: bool,
    on_epoch: EpochCallback | None = None,
) -> Refit:
    """The best config, and with `with_ensemble` the selection's members, refit on every row."""
    started = time.perf_counter()
    merged = with_validation_rows(data)
    single = _one(config, merged, on_epoch)
    ens = None
    if with_ensemble and selection is not None:
        models = [
            single if n == selection.single and selection.configs[n] == config else _one(c, merged, on_epoch)
            for n, c in ((n, selection.configs[n]) for n in selection.weights)
        ]
        weights = list(selection.weights.values())
        ens = Ensemble(models, weights, regression=data.task == "regression").to(data.device).eval()
    return Refit(single, ens, merged, len(merged.y_train), time.perf_counter() - started)
