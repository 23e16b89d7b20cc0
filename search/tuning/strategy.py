"""How the search explores and when it gives up on a trial: the sampler and the pruner.

TPE and the median pruner read the study's trials through one snapshot per trial
(search.tuning._snapshot); TPE's log Φ runs on SciPy's compiled code (search.tuning._tpe_log_ndtr).
Where Optuna's internals are off (search.optuna_versions) TPE is Optuna's own, unwrapped; the
median pruner's snapshot uses only the public API and stays.
"""

from __future__ import annotations

import warnings

import optuna

from search.optuna_versions import internals_allowed
from search.tuning._snapshot import SnapshotPruner, SnapshotSampler, TrialsAtStart, should_prune, snapshot_of
from search.tuning._tpe_log_ndtr import use_compiled_log_ndtr
from search.tuning.pareto import ParetoPruner

__all__ = [
    "ParetoPruner", "SnapshotPruner", "SnapshotSampler", "TrialsAtStart", "make_pruner", "make_sampler",
    "should_prune", "snapshot_of", "use_compiled_log_ndtr",
]  # fmt: skip


def make_sampler(
    name: str, seed: int, *, snapshot: TrialsAtStart | None = None, startup_trials: int = 10
) -> optuna.samplers.BaseSampler:
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    use_compiled_log_ndtr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Optuna 5's defaults (multivariate, constant liar) plus `group`, which lets multivariate
        # TPE model a conditional space (widths per layer, momentum only for sgd/rmsprop).
        tpe = optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=startup_trials
        )
    if not internals_allowed():  # the snapshot answers TPE's private reads: Optuna's own TPE then
        return tpe
    return SnapshotSampler(tpe, snapshot or TrialsAtStart())


def make_pruner(
    name: str, epochs: int, *, snapshot: TrialsAtStart | None = None, min_epochs: int = 0,
    cost: str | None = None,
) -> optuna.pruners.BasePruner:  # fmt: skip
    """`min_epochs` (0 = the default): the median pruner's first epoch to judge (a fifth of the
    budget by default); successive halving's and Hyperband's first rung (1 epoch by default).
    `halving` is Optuna's asynchronous successive halving (ASHA): a trial reaching a rung goes on
    only if it is in the top third of the trials that reached it, so rungs at min_epochs x 3^k.
    A `min_epochs` beyond the budget (an `--epochs` override) is cut to it.

    With a `cost` (a two-objective study) every pruner but `none` is MO-ASHA
    (search.tuning.pareto): Optuna's pruners judge one value. Its first rung is `min_epochs`
    (1 by default) and its reduction factor 3, as `halving`'s."""
    min_epochs = min(min_epochs, epochs)
    if cost is not None:
        if name == "none":
            return optuna.pruners.NopPruner()
        first = max(1, min_epochs)
        return ParetoPruner(cost=cost, max_resource=epochs, min_resource=first, reduction_factor=3)
    if name == "median":
        warmup = min_epochs or max(1, epochs // 5)
        return SnapshotPruner(n_startup_trials=5, n_warmup_steps=warmup, snapshot=snapshot)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, min_epochs), reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, min_epochs), max_resource=epochs, reduction_factor=3
        )
    return optuna.pruners.NopPruner()
