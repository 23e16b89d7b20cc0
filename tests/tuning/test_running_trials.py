"""An interrupted worker's RUNNING trials end FAIL with their reason, through the one private door."""

import optuna
from optuna.trial import TrialState

from search.tuning import _running_trials
from search.tuning.runner import fail_orphans


def test_fail_orphans_ends_only_this_workers_running_trials_with_a_reason():
    study = optuna.create_study(direction="maximize")
    mine, other, done = study.ask(), study.ask(), study.ask()
    mine.set_user_attr("worker", "host:1:0")
    other.set_user_attr("worker", "host:2:0")
    done.set_user_attr("worker", "host:1:0")
    study.tell(done, 0.5)
    assert fail_orphans(study, {"host:1:0"}) == 1
    by_number = {t.number: t for t in study.trials}
    assert by_number[mine.number].state == TrialState.FAIL
    assert by_number[mine.number].user_attrs["reason"] == "interrupted"
    assert by_number[other.number].state == TrialState.RUNNING
    assert (
        by_number[done.number].state == TrialState.COMPLETE
        and "reason" not in by_number[done.number].user_attrs
    )


def test_the_private_door_still_opens():
    study = optuna.create_study()
    trial = study.ask()
    frozen = study.trials[0]
    try:
        _running_trials.set_user_attr(study, frozen, "k", 1)
    except AttributeError as e:
        raise AssertionError(
            f"Optuna {optuna.__version__} moved {_running_trials.OPTUNA_INTERNAL}: "
            f"search/tuning/_running_trials.py must follow it ({e})"
        ) from None
    assert study.trials[0].user_attrs["k"] == 1 and trial.number == frozen.number
