"""How the search explores and when it gives up on a trial: the sampler and the pruner.

The pruner is asked after every epoch of every trial. Optuna's median pruner re-reads all
completed trials from the storage on each call (a query per epoch); ours reads them once per
trial and reuses that snapshot for the trial's later epochs. With several workers the snapshot
can miss trials that completed during this one: a pruning decision against a median at most one
trial old, which is what the median pruner sees anyway while those trials are running.
"""

from __future__ import annotations

import warnings

import optuna
from optuna.trial import FrozenTrial, TrialState


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Optuna 5's defaults (multivariate, constant liar) plus `group`, which lets multivariate
        # TPE model a conditional space (widths per layer, momentum only for sgd/rmsprop).
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        inner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 5))
        return SnapshotPruner(inner)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


class SnapshotPruner(optuna.pruners.BasePruner):
    """Prunes exactly as `inner` does, against completed trials read once per trial."""

    def __init__(self, inner: optuna.pruners.BasePruner):
        self.inner = inner
        self._trial_number: int | None = None
        self._completed: list[FrozenTrial] = []

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if trial.number != self._trial_number:
            self._completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            self._trial_number = trial.number
        return self.inner.prune(_CompletedSnapshot(study, self._completed), trial)


def should_prune(trial: optuna.Trial, reported: dict[int, float]) -> bool:
    """`trial.should_prune()`, minus its storage read where the pruner is ours: the objective
    already holds every value this trial reported, so the pruner judges those directly."""
    pruner = trial.study.pruner
    if not isinstance(pruner, SnapshotPruner):
        return trial.should_prune()
    running = FrozenTrial(
        number=trial.number, state=TrialState.RUNNING, value=None, datetime_start=None,
        datetime_complete=None, params={}, distributions={}, user_attrs={}, system_attrs={},
        intermediate_values=dict(reported), trial_id=trial._trial_id,
    )  # fmt: skip
    return pruner.prune(trial.study, running)


class _CompletedSnapshot:
    """A study whose completed trials come from a snapshot; everything else is the study's."""

    def __init__(self, study: optuna.Study, completed: list[FrozenTrial]):
        self._study = study
        self._completed = completed

    def get_trials(self, deepcopy: bool = True, states=None) -> list[FrozenTrial]:
        if states is not None and tuple(states) == (TrialState.COMPLETE,):
            return list(self._completed)
        return self._study.get_trials(deepcopy=deepcopy, states=states)

    def __getattr__(self, name):
        return getattr(self._study, name)
