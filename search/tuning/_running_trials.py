"""Writing to a RUNNING trial from outside its objective: the one thing Optuna's API leaves out.

A worker interrupted between Optuna's ask and tell leaves its trial RUNNING. The public API ends
it (`study.tell(number, state=FAIL)`), but has no way to set a user attr on a trial the caller
holds only as a `FrozenTrial`: that takes the study's storage and the trial's storage id, both
private. tests/tuning/test_running_trials.py fails, naming the Optuna version, if either moves.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial

OPTUNA_INTERNAL = "optuna.Study._storage.set_trial_user_attr and FrozenTrial._trial_id"


def set_user_attr(study: optuna.Study, trial: FrozenTrial, key: str, value: Any) -> None:
    """`trial.set_user_attr(key, value)` for a RUNNING trial known only as a FrozenTrial."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)
