"""The snapshot's sampler and pruner decide exactly as Optuna's TPE and median pruner, reading less."""

import random
import warnings

import numpy as np
import optuna
from helpers import needs_internals
from optuna.trial import TrialState

from search.tuning import _snapshot
from search.tuning._snapshot import SnapshotPruner, TrialsAtStart, nan_median, should_prune
from search.tuning.strategy import make_pruner, make_sampler


def _fill(study, rng, n=12, steps=10):
    for _ in range(n):
        t = study.ask()
        for step in range(1, steps + 1):
            t.report(rng.random() * step / steps, step)
        study.tell(t, rng.random())


def test_snapshot_pruner_makes_the_median_pruners_decisions():
    rng = random.Random(0)
    plain = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    snap = SnapshotPruner(n_startup_trials=5, n_warmup_steps=2)
    study = optuna.create_study(direction="maximize", pruner=plain)
    decisions = []
    for n in range(40):  # from an empty study on: startup, warm-up, short trials, NaN values
        t = study.ask()
        for step in range(1, 1 + (10 if n % 3 else rng.randint(1, 10))):
            t.report(float("nan") if rng.random() < 0.05 else rng.random() * step / 10, step)
            frozen = study._storage.get_trial(t._trial_id)
            decisions.append((plain.prune(study, frozen), snap.prune(study, frozen)))
        if n % 4 == 3:
            study.tell(t, state=TrialState.PRUNED)
        else:
            study.tell(t, rng.random())
    assert all(a == b for a, b in decisions)
    assert sum(a for a, _ in decisions) > 10 and sum(not a for a, _ in decisions) > 10


def _count_reads(study) -> list:
    reads = []
    real = study._get_trials

    def counting(*args, **kwargs):
        reads.append(kwargs.get("states"))
        return real(*args, **kwargs)

    study._get_trials = counting
    return reads


def test_snapshot_pruner_reads_the_trials_once_per_trial():
    study = optuna.create_study(direction="maximize")
    _fill(study, random.Random(1))
    reads = _count_reads(study)
    pruner = make_pruner("median", epochs=10)
    t = study.ask()
    for step in range(1, 11):
        t.report(0.5, step)
        pruner.prune(study, study._storage.get_trial(t._trial_id))
    assert len(reads) == 1


@needs_internals
def test_sampler_and_pruner_share_one_read_of_the_trials_per_trial():
    snapshot = TrialsAtStart()
    study = optuna.create_study(
        direction="maximize",
        sampler=make_sampler("tpe", 0, snapshot=snapshot),
        pruner=make_pruner("median", epochs=10, snapshot=snapshot),
    )
    _fill(study, random.Random(3), n=15)
    reads = _count_reads(study)
    t = study.ask()
    for name in "abcdef":  # the params _fill never sampled: each is sampled independently
        t.suggest_float(name, 0, 1)
    reported = {}
    for step in range(1, 11):
        t.report(0.5, step)
        reported[step] = 0.5
        should_prune(t, reported)
    assert len(reads) == 1


def test_a_read_primed_before_ask_serves_the_new_trial_and_nothing_else():
    snapshot = TrialsAtStart()
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", 10, snapshot=snapshot))
    _fill(study, random.Random(5))
    reads = _count_reads(study)
    snapshot.prime(study)
    t = study.ask()
    for step in range(1, 11):
        should_prune(t, {s: 0.5 for s in range(1, step + 1)})
    assert len(reads) == 1  # the primed read, adopted by the trial asked right after it
    study.tell(t, 0.5)
    snapshot.prime(study)
    study.enqueue_trial({})  # a trial created after the read: the read no longer fits
    study.ask()
    t = study.ask()
    should_prune(t, {1: 0.5})
    assert len(reads) == 3


def test_snapshot_sampler_samples_exactly_what_tpe_samples():
    def run(sampler):
        study = optuna.create_study(direction="maximize", sampler=sampler)
        rng = random.Random(4)

        def objective(trial):
            n = trial.suggest_int("n", 1, 3)
            widths = [trial.suggest_int(f"w{i}", 4, 64, log=True) for i in range(n)]
            kind = trial.suggest_categorical("kind", ["a", "b"])
            lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
            extra = trial.suggest_float("m", 0, 1) if kind == "a" else 0.0
            return sum(widths) / 100 + lr + extra + rng.random() * 0.01

        study.optimize(objective, n_trials=30)
        return [t.params for t in study.trials]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        tpe = optuna.samplers.TPESampler(seed=7, multivariate=True, group=True, constant_liar=True)
    assert run(make_sampler("tpe", 7)) == run(tpe)


def test_pruning_from_the_reported_values_agrees_with_trial_should_prune():
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


def test_nan_median_is_numpys_nanpercentile_bit_for_bit():
    """The pruner's median in plain Python must equal NumPy's to the last bit, or a trial at
    the median could be pruned by one and kept by the other."""
    rng = random.Random(7)
    for _ in range(3000):
        values = [rng.random() * rng.choice([1.0, 1e-3, 1e6]) for _ in range(rng.randint(0, 30))]
        values += [0.5] * rng.randint(0, 3) + [float("nan")] * rng.randint(0, 2)
        rng.shuffle(values)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN input
            expected = float(np.nanpercentile(np.array(values, dtype=float), 50)) if values else float("nan")
        got = nan_median(values)
        assert got == expected or (np.isnan(got) and np.isnan(expected)), values
    for odd in ([1.0, float("inf")], [float("-inf"), 0.5, 2.0]):  # NumPy's inf arithmetic, kept
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            assert repr(nan_median(odd)) == repr(float(np.nanpercentile(odd, 50)))


@needs_internals
def test_tpe_still_reads_its_trials_through_the_internal_the_snapshot_answers(monkeypatch):
    """The snapshot works only while TPE asks `Study._get_trials`: if an Optuna release reads the
    trials another way, the search would silently go back to one SQL read per question."""
    calls = []
    real = _snapshot._StudyView._get_trials
    monkeypatch.setattr(
        _snapshot._StudyView, "_get_trials", lambda self, *a, **k: calls.append(1) or real(self, *a, **k)
    )
    study = optuna.create_study(direction="maximize", sampler=make_sampler("tpe", 0, startup_trials=2))
    _fill(study, random.Random(6), n=4)
    study.ask().suggest_float("x", 0, 1)
    assert calls, (
        f"Optuna {optuna.__version__}'s TPESampler no longer reads trials through "
        f"{_snapshot.OPTUNA_INTERNAL}: search/tuning/_snapshot.py must follow it"
    )


def test_a_stacks_peers_weigh_as_if_they_had_completed_before_it():
    """With peers (the members training beside a trial), the pruner decides as Optuna's median
    pruner does in a study where those peers were completed trials with the same values."""
    rng, outcomes = random.Random(3), set()
    for case in range(30):
        done = [[rng.random() for _ in range(6)] for _ in range(rng.randint(0, 6))]
        peers = [[rng.random() for _ in range(6)] for _ in range(rng.randint(0, 6))]
        mine = [rng.random() for _ in range(rng.randint(1, 6))]
        step = len(mine)

        def study_with(curves):
            study = optuna.create_study(direction="maximize")
            for curve in curves:
                t = study.ask()
                for s, v in enumerate(curve, 1):
                    t.report(v, s)
                study.tell(t, curve[-1])
            return study

        plain = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
        reference = study_with(done + [p[:step] for p in peers])
        t = reference.ask()
        for s, v in enumerate(mine, 1):
            t.report(v, s)
        expected = plain.prune(reference, reference._storage.get_trial(t._trial_id))

        ours = study_with(done)
        t = ours.ask()
        pruner = SnapshotPruner(n_startup_trials=5, n_warmup_steps=2)
        reported = dict(enumerate(mine, 1))
        peer_values = [dict(enumerate(p[:step], 1)) for p in peers]
        assert pruner.decide(ours, t.number, reported, peer_values) == expected, case
        outcomes.add(expected)
    assert outcomes == {True, False}
