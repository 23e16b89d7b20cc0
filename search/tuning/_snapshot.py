"""The trial snapshot: TPE and the median pruner read the study's trials once per trial.

They decide exactly as Optuna's TPE sampler and median pruner do, but TPE (with `group` and
`constant_liar`) re-reads the trial list five or more times while it samples one trial, and the
median pruner once per epoch; each read is SQL. `TrialsAtStart` takes one read when a trial
starts sampling and serves it to both. With several workers that read can miss trials that
finished a moment later: a decision against trials at most one trial old, which is what TPE and
the median pruner see anyway while those trials are running.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

# The Optuna internal this module stands on: TPE reads the study's trials through
# `Study._get_trials(deepcopy, states, use_cache)`, which `_StudyView` answers from the snapshot.
# tests/tuning/test_snapshot.py fails, naming the Optuna version, when TPE stops asking it.
OPTUNA_INTERNAL = "optuna.study.Study._get_trials(deepcopy, states, use_cache), as TPESampler calls it"


class TrialsAtStart:
    """The study's trials, read once per (study, trial number) and shared by sampler and pruner.

    `prime` reads them just before Optuna asks for the next trial; the first question about that
    trial adopts the primed read. Optuna's ask refreshes its trial cache too, and after a fresh
    read that refresh finds nothing new, so priming turns two full reads per trial into one.
    """

    def __init__(self) -> None:
        self._key: tuple[str, int] | None = None
        self._trials: list[FrozenTrial] = []
        self._completed: list[FrozenTrial] = []
        self._medians: dict[int, float] = {}  # step -> median of completed trials at that step
        self._primed: tuple[str, list[FrozenTrial]] | None = None  # (study name, trials)
        # The reads of the other trials running in this process since the last prime: a stack's
        # members (search.tuning.stacking) ask their questions in turn, each against its own read.
        self._others: dict[tuple[str, int], tuple[list, list, dict]] = {}

    def prime(self, study: optuna.Study) -> None:
        """Read the trials now, for the trial Optuna is about to start."""
        self._primed = (study.study_name, study.get_trials(deepcopy=False))
        self._others.clear()

    def get(self, study: optuna.Study, number: int) -> list[FrozenTrial]:
        key = (study.study_name, number)
        if key != self._key:
            if self._key is not None:
                self._others[self._key] = (self._trials, self._completed, self._medians)
            if key in self._others:
                self._trials, self._completed, self._medians = self._others.pop(key)
            else:
                primed, self._primed = self._primed, None
                self._trials = (
                    primed[1]
                    if primed is not None and self._fits(primed, key)
                    else study.get_trials(deepcopy=False)
                )
                self._completed = [t for t in self._trials if t.state == TrialState.COMPLETE]
                self._medians = {}
            self._key = key
        return self._trials

    @staticmethod
    def _fits(primed: tuple[str, list[FrozenTrial]] | None, key: tuple[str, int]) -> bool:
        """A primed read serves trial N only if no trial was created between it and N's creation
        (N is then the next number): a retried trial, or another worker's, reads afresh."""
        if primed is None or primed[0] != key[0]:
            return False
        return key[1] == 1 + max((t.number for t in primed[1]), default=-1)

    def completed(self, study: optuna.Study, number: int) -> list[FrozenTrial]:
        self.get(study, number)
        return self._completed

    def median_at(self, study: optuna.Study, number: int, step: int) -> float:
        """Median value at `step` over the completed trials that reported it (NaN if none)."""
        self.get(study, number)
        if step not in self._medians:
            values = [t.intermediate_values[step] for t in self._completed if step in t.intermediate_values]
            self._medians[step] = nan_median(values)
        return self._medians[step]


def nan_median(values: list[float]) -> float:
    """`np.nanpercentile(values, 50)` bit for bit (the same interpolation, the same float
    operations), in plain Python: NumPy's call costs 0.3 ms, ten times a trial's epochs."""
    xs = sorted(v for v in values if not math.isnan(v))
    if not xs:
        return math.nan
    if not (math.isfinite(xs[0]) and math.isfinite(xs[-1])):  # NumPy's inf arithmetic, as is
        return float(np.nanpercentile(np.array(xs, dtype=float), 50))
    h = (len(xs) - 1) * 0.5
    lo = int(h)
    t = h - lo
    a, b = xs[lo], xs[min(lo + 1, len(xs) - 1)]
    d = b - a
    return b - d * (1 - t) if t >= 0.5 else a + d * t


class SnapshotSampler(optuna.samplers.BaseSampler):
    """Samples exactly as `inner` does, against the trials read when the trial started sampling."""

    def __init__(self, inner: optuna.samplers.BaseSampler, snapshot: TrialsAtStart):
        self.inner = inner
        self.snapshot = snapshot

    def _view(self, study: optuna.Study, trial: FrozenTrial) -> _StudyView:
        return _StudyView(study, self.snapshot.get(study, trial.number))

    def infer_relative_search_space(self, study, trial):
        return self.inner.infer_relative_search_space(self._view(study, trial), trial)

    def sample_relative(self, study, trial, search_space):
        return self.inner.sample_relative(self._view(study, trial), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.inner.sample_independent(self._view(study, trial), trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


class SnapshotPruner(optuna.pruners.BasePruner):
    """Optuna's `MedianPruner` for a maximized value, deciding exactly as it does (its startup,
    warm-up and NaN rules; tests/test_strategy.py compares the two), against the completed trials
    read when the trial started, with each step's median computed once per trial, not per epoch.
    """

    def __init__(
        self, *, n_startup_trials: int = 5, n_warmup_steps: int = 0, snapshot: TrialsAtStart | None = None
    ):
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps
        self.snapshot = snapshot or TrialsAtStart()

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.decide(study, trial.number, trial.intermediate_values)

    def decide(
        self,
        study: optuna.Study,
        number: int,
        reported: dict[int, float],
        peers: Sequence[dict[int, float]] = (),
    ) -> bool:
        """Whether trial `number`, having reported `reported` (step -> value), should stop.

        `peers`: what the other trials training beside it (a stack's members) have reported;
        those that reached the same step join the completed trials as its reference, and count
        towards the start-up trials. Without peers, this is Optuna's MedianPruner."""
        if study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise ValueError("SnapshotPruner is written for a maximized objective")
        if not reported:
            return False
        step = max(reported)
        beside = [p[step] for p in peers if step in p]
        n_completed = len(self.snapshot.completed(study, number))
        if n_completed + len(beside) == 0 or n_completed + len(beside) < self.n_startup_trials:
            return False
        if step < self.n_warmup_steps:
            return False
        best = np.nanmax(np.asarray(list(reported.values()), dtype=float))
        if math.isnan(best):
            return True  # every value so far is NaN
        if beside:
            done = self.snapshot.completed(study, number)
            median = nan_median(
                [t.intermediate_values[step] for t in done if step in t.intermediate_values] + beside
            )
        else:
            median = self.snapshot.median_at(study, number, step)
        return not math.isnan(median) and best < median


def should_prune(
    trial: optuna.Trial, reported: dict[int, float], peers: Sequence[dict[int, float]] = ()
) -> bool:
    """`trial.should_prune()`, minus its storage read where the pruner is ours: the objective
    already holds every value this trial reported, so the pruner judges those directly (and
    those its `peers` reported, see `SnapshotPruner.decide`)."""
    pruner = trial.study.pruner
    if isinstance(pruner, SnapshotPruner):
        return pruner.decide(trial.study, trial.number, reported, peers)
    return trial.should_prune()


def snapshot_of(study: optuna.Study) -> TrialsAtStart | None:
    """The `TrialsAtStart` this study's sampler or pruner reads from, if either does."""
    for part in (study.sampler, study.pruner):
        if isinstance(part, (SnapshotSampler, SnapshotPruner)):
            return part.snapshot
    return None


class _StudyView:
    """A study whose trial list is a snapshot; everything else is the study's own."""

    def __init__(self, study: optuna.Study, trials: list[FrozenTrial]):
        self._study = study
        self._snapshot = trials

    def _get_trials(self, deepcopy: bool = True, states=None, use_cache: bool = False) -> list[FrozenTrial]:
        trials = self._snapshot if states is None else [t for t in self._snapshot if t.state in states]
        return copy.deepcopy(trials) if deepcopy else list(trials)

    def get_trials(self, deepcopy: bool = True, states=None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self._get_trials()

    def __getattr__(self, name):
        return getattr(self._study, name)
