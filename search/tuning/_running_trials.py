"""Writing to a RUNNING trial from outside its objective: the one thing Optuna's API leaves out.

A worker interrupted between Optuna's ask and tell leaves its trial RUNNING. The public API ends
it (`study.tell(number, state=FAIL)`), but has no way to set a user attr on a trial the caller
holds only as a `FrozenTrial`, nor a way to fail one that says whether this call or another
process ended it: both take the study's storage and the trial's storage id, both private.
tests/tuning/test_recovery.py fails, naming the Optuna version, if either moves.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

OPTUNA_INTERNAL = (
    "optuna.Study._storage (set_trial_user_attr, set_trial_state_values) and FrozenTrial._trial_id"
)


def set_user_attr(study: optuna.Study, trial: FrozenTrial, key: str, value: Any) -> None:
    """`trial.set_user_attr(key, value)` for a RUNNING trial known only as a FrozenTrial."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def fail(study: optuna.Study, trial: FrozenTrial) -> bool:
    """End a RUNNING trial FAIL as Optuna's heartbeat does: True only if this call ended it, so
    of several processes failing the same trial exactly one queues its retry."""
    try:
        return study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
