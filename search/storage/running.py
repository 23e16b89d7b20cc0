"""Running trials outside `study.optimize`: what Optuna's public API leaves out.

Every trial runs through ask and tell (search.tuning.stacking), so this module is where the
project touches the storage of a running trial.

A worker interrupted between Optuna's ask and tell leaves its trial RUNNING. The public API ends
it (`study.tell(number, state=FAIL)`), but has no way to set a user attr on a trial the caller
holds only as a `FrozenTrial`, nor a way to fail one that says whether this call or another
process ended it: both take the study's storage and the trial's storage id, both private. And a
stack of trials (search.tuning.stacking) runs through ask and tell, which start no heartbeat:
`study.optimize` starts one per trial with a private helper, which `heartbeats` starts for each
trial, so a dead worker's trials are failed and retried. `publish` flushes a trial's batched
writes (search.storage._batched) so other workers see its params before it trains.
tests/tuning/test_recovery.py and test_stacking.py fail, naming the Optuna version, if any moves.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

OPTUNA_INTERNAL = (
    "optuna.Study._storage (set_trial_user_attr, set_trial_state_values), FrozenTrial._trial_id, "
    "Trial._trial_id, Trial.storage and optuna.storages._heartbeat.get_heartbeat_thread / "
    "is_heartbeat_enabled"
)


def set_user_attr(study: optuna.Study, trial: FrozenTrial, key: str, value: Any) -> None:
    """`trial.set_user_attr(key, value)` for a RUNNING trial known only as a FrozenTrial."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def fail_stale(study: optuna.Study) -> None:
    """What `study.optimize` does before each ask: fail (and retry) dead workers' trials."""
    if is_heartbeat_enabled(study._storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


@contextlib.contextmanager
def heartbeats(study: optuna.Study, trials: list[optuna.Trial]) -> Iterator[None]:
    """Each trial's heartbeat, as `study.optimize` keeps one, while the block runs."""
    with contextlib.ExitStack() as stack:
        for t in trials:
            stack.enter_context(get_heartbeat_thread(t._trial_id, study._storage))
        yield


def fail(study: optuna.Study, trial: FrozenTrial) -> bool:
    """End a RUNNING trial FAIL as Optuna's heartbeat does: True only if this call ended it, so
    of several processes failing the same trial exactly one queues its retry."""
    try:
        return study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def publish(trial: optuna.Trial) -> None:
    """Make the trial's writes so far visible to every process (its params, after sampling)."""
    flush = getattr(trial.storage, "flush", None)
    if flush is not None:
        flush(trial._trial_id)
