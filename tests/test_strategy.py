"""Sampler and pruner: the snapshot pruner decides exactly as Optuna's median pruner, cheaper."""

import random

import optuna
from optuna.trial import TrialState

from search.strategy import SnapshotPruner, make_pruner, make_sampler


def _fill(study, rng, n=12, steps=10):
    for _ in range(n):
        t = study.ask()
        for step in range(1, steps + 1):
            t.report(rng.random() * step / steps, step)
        study.tell(t, rng.random())


def test_snapshot_pruner_makes_the_median_pruners_decisions():
    rng = random.Random(0)
    plain = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    snap = SnapshotPruner(optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2))
    study = optuna.create_study(direction="maximize", pruner=plain)
    _fill(study, rng)
    decisions = []
    for _ in range(20):
        t = study.ask()
        for step in range(1, 11):
            t.report(rng.random() * step / 10, step)
            frozen = study._storage.get_trial(t._trial_id)
            decisions.append((plain.prune(study, frozen), snap.prune(study, frozen)))
        study.tell(t, rng.random())
    assert all(a == b for a, b in decisions) and any(a for a, _ in decisions)


def test_snapshot_pruner_reads_completed_trials_once_per_trial():
    study = optuna.create_study(direction="maximize")
    _fill(study, random.Random(1))
    reads = []
    real = study.get_trials

    def counting(*args, **kwargs):
        reads.append(kwargs.get("states"))
        return real(*args, **kwargs)

    study.get_trials = counting
    pruner = make_pruner("median", epochs=10)
    t = study.ask()
    for step in range(1, 11):
        t.report(0.5, step)
        pruner.prune(study, study._storage.get_trial(t._trial_id))
    assert reads.count((TrialState.COMPLETE,)) == 1


def test_samplers_and_pruners_by_name():
    assert isinstance(make_sampler("tpe", 0), optuna.samplers.TPESampler)
    assert isinstance(make_sampler("random", 0), optuna.samplers.RandomSampler)
    assert isinstance(make_pruner("hyperband", 9), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner("none", 9), optuna.pruners.NopPruner)


def test_pruning_from_the_reported_values_agrees_with_trial_should_prune():
    from search.strategy import should_prune

    rng = random.Random(2)
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", epochs=10))
    _fill(study, rng)
    agree = []
    for _ in range(10):
        t, reported = study.ask(), {}
        for step in range(1, 11):
            value = rng.random() * step / 10
            t.report(value, step)
            reported[step] = value
            agree.append(should_prune(t, reported) == t.should_prune())
        study.tell(t, rng.random())
    assert all(agree)
