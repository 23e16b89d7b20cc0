"""Heartbeats through Optuna's gRPC storage proxy, which forwards none of its own.

Optuna's RDB storage keeps each running trial's heartbeat in a table that only a direct database
connection writes; `GrpcStorageProxy` is a plain storage, the proxy has no heartbeat call, so a
worker killed mid-trial would leave its trial RUNNING for good. `BeatingProxy` is the proxy with
Optuna's heartbeat interface: Optuna's own heartbeat thread (run around every trial for a storage
that has one) calls `record_heartbeat` every interval, and the beat goes through the proxy as a
trial system attr. The serve process, which all beats pass, fails and retries a trial whose beat
stopped changing (search.storage.silent), on its own clock: the workers' clocks
need not agree with it or with each other.

Workers find no stale trials themselves (`_get_stale_trial_ids` is empty): hundreds of workers
each scanning every running trial before each trial would be the very load the proxy removes.
tests/storage/test_beats.py fails, naming the Optuna version, when either internal moves.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError

from search.schema import ATTR_BEAT

try:  # the internal that lets Optuna's own heartbeat thread drive the beats
    from optuna.storages._heartbeat import BaseHeartbeat
except ImportError:  # pragma: no cover - an Optuna that moved it: the public path below
    HAS_BASE_HEARTBEAT = False
else:
    HAS_BASE_HEARTBEAT = True

OPTUNA_INTERNAL = (
    "optuna.storages._heartbeat.BaseHeartbeat, and the heartbeat thread Study.optimize runs for it"
)

_log = logging.getLogger(__name__)


class ProxyBeats(optuna.storages.GrpcStorageProxy):
    """Optuna's gRPC storage client with a heartbeat: `record_heartbeat` writes one beat of a
    running trial. On the public path (search.optuna_versions) search.storage.running's own
    thread calls it; `BeatingProxy` lets Optuna's heartbeat machinery call it too."""

    def __init__(self, *, host: str, port: int, heartbeat_s: int):
        super().__init__(host=host, port=port)
        self.heartbeat_s = int(heartbeat_s)

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, ATTR_BEAT, {"at": time.time(), "every": self.heartbeat_s})
        except UpdateFinishedTrialError:
            pass  # the trial ended (or was failed as silent) between two beats
        except Exception as e:  # noqa: BLE001  # a raise would end the beat thread for good
            # The proxy restarting, a network blip: the next beat may get through, and a trial
            # stays alive for two intervals without one.
            _log.warning("heartbeat of trial id %s not recorded: %s", trial_id, e)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return []

    def get_heartbeat_interval(self) -> int:
        return self.heartbeat_s

    def get_heartbeat_stale_trial_callback(self):
        return None


if HAS_BASE_HEARTBEAT:

    class BeatingProxy(ProxyBeats, BaseHeartbeat):
        """`ProxyBeats` that Optuna's heartbeat thread (`Study.optimize`, or
        search.storage.running on the internals path) beats every `heartbeat_s` seconds."""


def beating_client(*, host: str, port: int, heartbeat_s: int, internals: bool) -> ProxyBeats:
    """The proxy client whose running trials beat: `BeatingProxy` where Optuna's internals may be
    used, else `ProxyBeats`."""
    if internals and HAS_BASE_HEARTBEAT:
        return BeatingProxy(host=host, port=port, heartbeat_s=heartbeat_s)
    return ProxyBeats(host=host, port=port, heartbeat_s=heartbeat_s)


def beat_of(trial: optuna.trial.FrozenTrial) -> tuple[Any, float] | None:
    """(the beat, its interval in seconds) of a trial a `BeatingProxy` worker runs; None if it
    never beat (a worker on a direct connection, or one that has not started beating yet)."""
    beat = trial.system_attrs.get(ATTR_BEAT)
    if not isinstance(beat, dict) or not isinstance(beat.get("every"), (int, float)):
        return None
    return beat.get("at"), float(beat["every"])
