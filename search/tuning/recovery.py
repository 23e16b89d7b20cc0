"""What becomes of trials whose worker stopped (interrupted, killed, out of memory), and how
they carry on: resuming a trial lives here.

An interrupted worker (Ctrl-C, SIGTERM) ends its trial FAIL with the reason `interrupted`; a worker
that died leaves its trial RUNNING, which Optuna's heartbeat fails after two missed beats (through
the gRPC proxy, which forwards no heartbeat, the serve process does: `SilentTrials`), or which the
next run on the same host fails at once when the worker's process is gone. Either way a retry
is queued: a WAITING copy with the same params and user attrs (Optuna's own retry callback), which
the next trial to start picks up and resumes from its saved epoch.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.schema import ATTR_REASON, ATTR_WORKER
from search.storage import running
from search.storage.connect import make_retry_callback
from search.training.state import TrainState, load_state, save_state


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
            running.set_user_attr(study, t, ATTR_REASON, f"worker process {pid} died")
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            dead.add(t.number)
    return retry_trials(study, dead)


def _alive(pid: int) -> bool:
    if sys.platform == "win32":
        # Windows' os.kill(pid, 0) terminates the process; leave a dead worker's trial to the
        # heartbeat, which fails it after two missed beats.
        return True
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
            running.set_user_attr(study, t, ATTR_REASON, reason)
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            n += 1
    return n


class StateKeeper:
    """Takes a fit's per-epoch states; writes them as often as `every` seconds allow."""

    def __init__(self, path: Path, every: float):
        self.path, self.every = path, every
        self.latest: TrainState | None = None
        self.written_epoch = 0
        self.written_at = time.monotonic()

    def load(self, config: dict) -> TrainState | None:
        """The state a previous attempt left, if it belongs to this config."""
        state = load_state(self.path)
        if state is None or state.config != config:
            return None
        self.written_epoch = state.epoch
        return state

    def offer(self, state: TrainState) -> None:
        self.latest = state
        if self.every == 0 or time.monotonic() - self.written_at >= self.every:
            self.flush()

    def flush(self) -> None:
        """Write the newest state not yet on disk (on an interrupt, say)."""
        if self.latest is not None and self.latest.epoch > self.written_epoch:
            save_state(self.path, self.latest)
            self.written_epoch, self.written_at = self.latest.epoch, time.monotonic()

    def discard(self) -> None:
        """The trial ended: its state has nothing left to resume."""
        self.path.unlink(missing_ok=True)
        self.latest = None
