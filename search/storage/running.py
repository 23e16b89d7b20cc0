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

Where `search.optuna_versions.internals_allowed()` says no, every function takes Optuna's public
API instead: the storage a study was opened with (`bind`), a trial's storage id asked from that
storage by study name and number, `study.tell` to fail a trial, and a plain thread calling the
storage's public `record_heartbeat` for each trial's heartbeat.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
import weakref
from collections.abc import Iterator
from typing import Any, Protocol, cast

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.optuna_versions import internals_allowed

OPTUNA_INTERNAL = (
    "optuna.Study._storage (set_trial_user_attr, set_trial_state_values), FrozenTrial._trial_id, "
    "Trial._trial_id and optuna.storages._heartbeat.get_heartbeat_thread / is_heartbeat_enabled"
)

# The storage each study was opened with, for the public path (a Study does not expose it).
_BOUND: weakref.WeakKeyDictionary[optuna.Study, optuna.storages.BaseStorage] = weakref.WeakKeyDictionary()


class _Beating(Protocol):
    """A storage with Optuna's heartbeat interface (an RDBStorage, search.storage._beats')."""

    def record_heartbeat(self, trial_id: int) -> None: ...


def bind(study: optuna.Study, storage: Any) -> optuna.Study:
    """Remember the storage `study` was opened with (a BaseStorage, or a URL left unknown)."""
    if isinstance(storage, optuna.storages.BaseStorage):
        _BOUND[study] = storage
    return study


def _storage(study: optuna.Study) -> optuna.storages.BaseStorage | None:
    if internals_allowed():
        return study._storage
    return _BOUND.get(study)


def _trial_id(storage: optuna.storages.BaseStorage, study: optuna.Study, trial: Any) -> int:
    if internals_allowed():
        return trial._trial_id
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)


def set_user_attr(study: optuna.Study, trial: FrozenTrial, key: str, value: Any) -> None:
    """`trial.set_user_attr(key, value)` for a RUNNING trial known only as a FrozenTrial (nothing
    on the public path when the study was not opened through `bind`)."""
    storage = _storage(study)
    if storage is not None:
        storage.set_trial_user_attr(_trial_id(storage, study, trial), key, value)


def fail_stale(study: optuna.Study) -> None:
    """What `study.optimize` does before each ask: fail (and retry) dead workers' trials."""
    if internals_allowed():
        from optuna.storages._heartbeat import is_heartbeat_enabled

        if not is_heartbeat_enabled(study._storage):
            return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # public; it checks for heartbeats itself


@contextlib.contextmanager
def heartbeats(study: optuna.Study, trials: list[optuna.Trial]) -> Iterator[None]:
    """Each trial's heartbeat, as `study.optimize` keeps one, while the block runs."""
    if internals_allowed():
        from optuna.storages._heartbeat import get_heartbeat_thread

        with contextlib.ExitStack() as stack:
            for t in trials:
                # Optuna annotates BaseHeartbeatThread.__exit__'s exc_type as type[Exception], narrower
                # than the context-manager protocol's type[BaseException]: it is one all the same.
                stack.enter_context(get_heartbeat_thread(t._trial_id, study._storage))  # type: ignore[arg-type]
            yield
        return
    storage = _BOUND.get(study)
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if storage is None or not interval or not trials:
        yield
        return
    ids = [_trial_id(storage, study, t) for t in trials]
    beating = cast(_Beating, storage)  # a storage with a heartbeat interval records heartbeats
    stop = threading.Event()

    def beat() -> None:
        while True:
            for trial_id in ids:
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    beating.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="search-heartbeats", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail(study: optuna.Study, trial: FrozenTrial) -> bool:
    """End a RUNNING trial FAIL as Optuna's heartbeat does: True only if this call ended it, so
    of several processes failing the same trial exactly one queues its retry. (On the public
    path without a bound storage, the state check and `study.tell` are two steps.)"""
    storage = _storage(study)
    try:
        if storage is not None:
            return storage.set_trial_state_values(_trial_id(storage, study, trial), state=TrialState.FAIL)
        now = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not any(t.number == trial.number for t in now):
            return False
        study.tell(trial.number, state=TrialState.FAIL)
        return True
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError):
        return False


def publish(trial: optuna.Trial) -> None:
    """Make the trial's writes so far visible to every process (its params, after sampling)."""
    flush = getattr(trial.storage, "flush", None)  # only BatchedStorage holds writes back
    if flush is not None:
        flush(trial._trial_id)
