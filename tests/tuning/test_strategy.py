"""Samplers and pruners by the names a study file gives them."""

import optuna

from search.optuna_versions import internals_allowed
from search.tuning._snapshot import SnapshotPruner, SnapshotSampler
from search.tuning.strategy import make_pruner, make_sampler


def test_samplers_and_pruners_by_name():
    tpe = make_sampler("tpe", 0)
    if internals_allowed():  # the snapshot answers TPE's private reads
        assert isinstance(tpe, SnapshotSampler) and isinstance(tpe.inner, optuna.samplers.TPESampler)
    else:  # the public path: Optuna's own TPE
        assert type(tpe) is optuna.samplers.TPESampler
    assert isinstance(make_sampler("random", 0), optuna.samplers.RandomSampler)
    assert isinstance(make_pruner("hyperband", 9), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner("none", 9), optuna.pruners.NopPruner)
    assert isinstance(make_pruner("median", 9), SnapshotPruner)


def test_min_epochs_sets_the_pruners_first_judged_epoch_and_first_rung():
    assert make_pruner("median", 20).n_warmup_steps == 4  # a fifth of the budget
    assert make_pruner("median", 20, min_epochs=7).n_warmup_steps == 7
    halving = make_pruner("halving", 18, min_epochs=2)
    assert isinstance(halving, optuna.pruners.SuccessiveHalvingPruner) and halving._min_resource == 2
    assert make_pruner("halving", 1, min_epochs=2)._min_resource == 1  # cut to an --epochs override


def test_successive_halving_stops_a_trial_outside_the_top_third_at_a_rung():
    study = optuna.create_study(direction="maximize", pruner=make_pruner("halving", 9, min_epochs=1))
    for value in (0.9, 0.8, 0.7, 0.6, 0.5, 0.4):
        t = study.ask()
        t.report(value, 1)
        (study.tell(t, state=optuna.trial.TrialState.PRUNED) if t.should_prune() else study.tell(t, value))
    late = study.ask()
    late.report(0.45, 1)  # below the top third of the seven values at epoch 1
    assert late.should_prune()
    best = study.ask()
    best.report(0.95, 1)
    assert not best.should_prune()
