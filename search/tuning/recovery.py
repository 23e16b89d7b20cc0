"""What becomes of trials whose worker stopped: interrupted, killed, or out of memory.

An interrupted worker (Ctrl-C, SIGTERM) ends its trial FAIL with the reason `interrupted`; a worker
that died leaves its trial RUNNING, which Optuna's heartbeat fails after two missed beats (through
the gRPC proxy, which forwards no heartbeat, the serve process does: `SilentTrials`), or which the
next run on the same host fails at once when the worker's process is gone. Either way a retry
is queued: a WAITING copy with the same params and user attrs (Optuna's own retry callback), which
the next trial to start picks up and resumes from its saved epoch (search.tuning.resuming).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from search.storage._beats import beat_of
from search.storage.connect import make_retry_callback
from search.tuning import _running_trials
from search.tuning.objective import ATTR_REASON, ATTR_WORKER


def retry_trials(study: optuna.Study, numbers: set[int]) -> int:
    """Queue a retry of each of these FAIL trials (same params and user attrs, so the same seed),
    as Optuna's heartbeat does for a dead worker's trial; returns how many were queued."""
    retry = make_retry_callback()
    queued = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.number in numbers:
            retry(study, t)
            queued += 1
    return queued


def retry_dead_local_workers(study: optuna.Study) -> int:
    """FAIL and retry the RUNNING trials of workers on this host whose process is gone (killed,
    out of memory), at once rather than after two missed heartbeats."""
    host, dead = socket.gethostname(), set()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tag_host, _, rest = str(t.user_attrs.get(ATTR_WORKER, "")).partition(":")
        pid = rest.partition(":")[0]
        if tag_host == host and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            _running_trials.set_user_attr(study, t, ATTR_REASON, f"worker process {pid} died")
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            dead.add(t.number)
    return retry_trials(study, dead)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def fail_orphans(study: optuna.Study, tags: set[str], reason: str = "interrupted") -> int:
    """Mark FAIL the RUNNING trials these workers left behind (stopped between Optuna's
    ask and tell); a crashed worker on another machine is the heartbeat's job instead."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get(ATTR_WORKER) in tags:
            _running_trials.set_user_attr(study, t, ATTR_REASON, reason)
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            n += 1
    return n


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
        now, running, failed = self._clock(), set(), []
        for name in optuna.get_all_study_names(storage):
            try:
                study = optuna.load_study(study_name=name, storage=storage)
                trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            except KeyError:  # deleted since it was listed
                continue
            for t in trials:
                found = beat_of(t)
                if found is None:  # not beating through the proxy: Optuna's heartbeat, or none
                    continue
                key, (beat, every) = (name, t.number), found
                running.add(key)
                seen = self._seen.get(key)
                if seen is None or seen[0] != beat:
                    self._seen[key] = (beat, now)
                elif now - seen[1] > 2 * every:
                    silent = Silent(name, t.number, str(t.user_attrs.get(ATTR_WORKER, "?")), now - seen[1])
                    if _fail_silent(study, t, silent):
                        failed.append(silent)
        self._seen = {k: v for k, v in self._seen.items() if k in running}
        return failed


def _fail_silent(study: optuna.Study, trial, silent: Silent) -> bool:
    reason = f"no heartbeat from its worker {silent.worker} for {silent.silent_s:.0f} s"
    try:
        _running_trials.set_user_attr(study, trial, ATTR_REASON, reason)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # it ended just now: its worker was slow, not gone
    if not _running_trials.fail(study, trial):
        return False  # another checker failed it first and queued the retry
    retry_trials(study, {trial.number})
    return True
