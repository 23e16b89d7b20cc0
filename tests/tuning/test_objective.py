"""A trial turns fit's epochs into reports and prunes, and records what a person needs."""

import dataclasses

import optuna
import pytest
from optuna.trial import TrialState

from search.data.datasets import load_dataset
from search.tuning.objective import Objective
from search.tuning.runner import run_trials
from search.tuning.study_file import load_study


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0)


def _spec(**space):
    spec = load_study("digits").with_overrides(epochs=3)
    if space:
        from search.tuning.space import parse_space

        spec = spec.with_overrides(space=parse_space(space, where="test"))
    return spec


def test_complete_trial_reports_every_epoch_and_stores_user_attrs(digits):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    run_trials(study, Objective(spec=_spec(), data=digits, worker="host:1:0"), n_trials=1)
    t = study.trials[0]
    assert t.state == TrialState.COMPLETE
    assert sorted(t.intermediate_values) == [1, 2, 3]
    assert t.value == t.intermediate_values[3]
    assert {"lr", "optimizer", "n_layers"} <= set(t.params)
    attrs = t.user_attrs
    assert attrs["n_params"] > 0 and attrs["epochs_run"] == 3 and attrs["device"] == "cpu"
    assert attrs["train_seconds"] > 0 and attrs["architecture"].startswith("64-")
    assert attrs["worker"] == "host:1:0"


def test_pruning_fires_and_says_why(digits):
    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    run_trials(study, Objective(spec=_spec(), data=digits), n_trials=1)
    t = study.trials[0]
    assert t.state == TrialState.PRUNED
    assert sorted(t.intermediate_values) == [1]
    assert "pruned after epoch 1" in t.user_attrs["reason"]


def test_nan_loss_prunes_the_trial_and_the_search_goes_on(digits):
    poisoned = digits.x_train.clone()
    poisoned[0] = float("nan")  # one bad sample makes every epoch's loss NaN
    data = dataclasses.replace(digits, x_train=poisoned)
    study = optuna.create_study(direction="maximize")
    run_trials(study, Objective(spec=_spec(), data=data), n_trials=2)
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.PRUNED]
    assert all("loss became" in t.user_attrs["reason"] for t in study.trials)


def test_best_weights_are_kept_only_when_a_trial_beats_the_best(digits, tmp_path):
    from search.tuning import best_weights as checkpoint

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    run_trials(study, Objective(spec=_spec(), data=digits, checkpoint_dir=tmp_path), n_trials=4)
    saved = checkpoint.load_best(tmp_path)
    assert saved["trial_number"] == study.best_trial.number
    assert saved["value"] == study.best_value
