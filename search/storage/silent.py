"""Trials whose worker went silent behind the gRPC proxy: failed with their reason and retried.

Optuna's proxy forwards none of its heartbeats, so workers beat through a system attr
(search.storage._beats) and the serve process, which every beat passes through, watches them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from search.schema import ATTR_REASON, ATTR_WORKER
from search.storage import running
from search.storage._beats import beat_of
from search.storage.connect import make_retry_callback


@dataclass(frozen=True)
class Silent:
    study: str
    number: int
    worker: str
    silent_s: float  # how long its beat had not changed, on the checking process's clock


class SilentTrials:
    """RUNNING trials whose worker stopped beating through the gRPC proxy (search.storage._beats):
    each is failed with its reason and retried once its beat has not changed for two of its
    worker's intervals. Staleness is judged by when *this* process saw the beat change, not by the
    time written in it, so no two machines' clocks need agree; a fresh checker waits the two
    intervals before failing anything."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._seen: dict[tuple[str, int], tuple[Any, float]] = {}  # (study, number) -> (beat, since)

    def check(self, storage: optuna.storages.BaseStorage) -> list[Silent]:
        """Fail and retry every silent trial in the storage; what was failed."""
        now, beating, failed = self._clock(), set(), []
        for name in optuna.get_all_study_names(storage):
            try:
                study = running.bind(optuna.load_study(study_name=name, storage=storage), storage)
                trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            except KeyError:  # deleted since it was listed
                continue
            for t in trials:
                found = beat_of(t)
                if found is None:  # not beating through the proxy: Optuna's heartbeat, or none
                    continue
                key, (beat, every) = (name, t.number), found
                beating.add(key)
                seen = self._seen.get(key)
                if seen is None or seen[0] != beat:
                    self._seen[key] = (beat, now)
                elif now - seen[1] > 2 * every:
                    silent = Silent(name, t.number, str(t.user_attrs.get(ATTR_WORKER, "?")), now - seen[1])
                    if _fail_silent(study, t, silent):
                        failed.append(silent)
        self._seen = {k: v for k, v in self._seen.items() if k in beating}
        return failed


def _fail_silent(study: optuna.Study, trial, silent: Silent) -> bool:
    reason = f"no heartbeat from its worker {silent.worker} for {silent.silent_s:.0f} s"
    try:
        running.set_user_attr(study, trial, ATTR_REASON, reason)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # it ended just now: its worker was slow, not gone
    if not running.fail(study, trial):
        return False  # another checker failed it first and queued the retry
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    make_retry_callback()(study, next(t for t in failed if t.number == trial.number))
    return True
