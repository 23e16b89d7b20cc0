"""A worker's trial writes, sent to the database a few at a time instead of one transaction each.

Optuna's RDB storage commits every `suggest_*`, `trial.report` and `set_user_attr` on its own
(about 30 transactions for a 14-epoch trial of the digits study, 55 ms of a 350 ms trial on a
2-core machine, mostly ORM work per statement) and reads a trial back from the database several
times while it runs. `BatchedStorage` holds the writes to the trials *this process created and is
running*, keeps a copy of each such trial as the database will hold it, and writes in bulk, into
Optuna's own tables through Optuna's own table definitions:

- at `publish(trial)`, which the objective calls after sampling: other workers' samplers (TPE's
  constant liar) and the retry of a crashed trial see its params before training starts;
- at the next write once `FLUSH_EVERY_S` has passed, so optuna-dashboard follows a long trial;
- when the trial ends: held writes, values and state in one transaction, as Optuna writes them;
- before any read of trials other than its own, so this process always reads its own writes.

A worker killed outright (SIGKILL, power loss) loses at most `FLUSH_EVERY_S` of reports of a
trial the heartbeat then fails and re-queues anyway. Optuna's checks keep their moment: a param's
distribution against the study's at suggest time, the trial still running in the flush's
transaction. Writes to other trials, to studies, and heartbeats go straight to the database.

Reads: a running trial of this process is answered from its copy, also when the study's trials
are read (a stack's K running trials are not fetched at each ask), and a trial it finished is
not fetched again (it was cached exactly as written, and a finished trial cannot change). A read
of the study's trials within `REREAD_S` of the last one shares it (Optuna's ask reads again right
after the sampler's read), and the search for dead workers' trials runs every few seconds rather
than before every trial. `tests/storage/test_batched.py` holds this to what Optuna's storage
records and reads, for one worker and for two.
"""

from __future__ import annotations

import copy
import json
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy
import sqlalchemy.exc
import sqlalchemy.orm
from optuna import distributions
from optuna.trial import FrozenTrial, TrialState

from search.optuna_versions import internals_allowed

try:  # Optuna's private pieces this builds on; without them the runner uses plain storage.
    from optuna.storages._cached_storage import _CachedStorage, _StudyInfo
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
except ImportError:  # pragma: no cover - a future Optuna that moved them
    _INTERNALS_IMPORTED = False
else:
    _INTERNALS_IMPORTED = True

FLUSH_EVERY_S = 2.0  # a running trial's writes reach the database at least this often
REREAD_S = 0.1  # reads of a study's trials this close together share one database read
STALE_CHECK_S = 5.0  # look for dead workers' trials at most this often (or each heartbeat)


def available() -> bool:
    """Whether this Optuna has the storage internals `BatchedStorage` writes through, and they may
    be used (search.optuna_versions)."""
    return _INTERNALS_IMPORTED and internals_allowed()


@dataclass
class _Pending:
    """One trial's writes not yet in the database, newest value per key."""

    since: float  # monotonic time of the oldest of them
    params: dict[str, tuple[float, distributions.BaseDistribution]] = field(default_factory=dict)
    steps: dict[int, float] = field(default_factory=dict)
    user: dict[str, Any] = field(default_factory=dict)
    system: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Own:
    """A trial this process runs: what the database holds of it, and what it will hold."""

    mirror: FrozenTrial  # the trial as a read would return it once every write is flushed
    params: set[str] = field(default_factory=set)  # keys already in the database: writing one
    steps: set[int] = field(default_factory=set)  # again must replace its row
    user: set[str] = field(default_factory=set)
    system: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, trial: FrozenTrial) -> _Own:
        """Owning `trial` as read now: all it holds is in the database already."""
        return cls(
            mirror=copy.deepcopy(trial),
            params=set(trial.params),
            steps=set(trial.intermediate_values),
            user=set(trial.user_attrs),
            system=set(trial.system_attrs),
        )


if TYPE_CHECKING:  # the base class `available()` requires, when BatchedStorage is used at all
    _Base = _CachedStorage
else:  # an Optuna without it: a class that is never instantiated (available() is False)
    _Base = _CachedStorage if _INTERNALS_IMPORTED else object


class BatchedStorage(_Base):
    """Optuna's cached RDB storage, holding back the writes to this process's running trials,
    and answering reads of them from memory."""

    def __init__(
        self,
        backend: optuna.storages.RDBStorage,
        *,
        flush_every_s: float = FLUSH_EVERY_S,
        reread_s: float = REREAD_S,
    ):
        super().__init__(backend)
        self.flush_every_s, self.reread_s = flush_every_s, reread_s
        self._pending: dict[int, _Pending] = {}
        self._own: dict[int, _Own] = {}  # running trials this process created or popped
        self._finished_here: dict[int, set[int]] = {}  # study id -> trials ended by `_finish`
        self._read_at: dict[int, float] = {}  # study id -> monotonic time of its last read
        self._stale_checked_at: dict[int, float] = {}
        self._holding = True  # False once `stop_holding` ran: every write goes out at once
        # The heartbeat thread shares this storage; behind the gRPC proxy, every server thread
        # does. A running trial's copy changes and is read only under this lock.
        self._buffer_lock = threading.RLock()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        del state["_buffer_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._buffer_lock = threading.RLock()

    # -- trials this process owns --------------------------------------------------------

    def create_new_trial(self, study_id: int, template_trial=None) -> int:
        trial_id = super().create_new_trial(study_id, template_trial)
        with self._lock:
            _, number = self._trial_id_to_study_id_and_number[trial_id]
            created = self._studies[study_id].trials[number]
        if created.state == TrialState.RUNNING:  # a WAITING template is owned once popped
            with self._buffer_lock:
                self._own[trial_id] = _Own.of(created)
        else:  # an enqueued trial: the next read must fetch it like any trial not ours
            self._read_at.clear()
        return trial_id

    def _owned(self, trial_id: int) -> _Own | None:
        """This process's running trial, or None: a write to any other goes straight to the
        database, and the next read of the study must fetch it afresh."""
        own = self._own.get(trial_id)
        if own is None:
            self._read_at.clear()
        return own

    def set_trial_param(self, trial_id, param_name, param_value_internal, distribution) -> None:
        own = self._owned(trial_id)
        if own is None:
            return super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
        self._check_distribution(trial_id, param_name, distribution)
        with self._buffer_lock:
            if param_name in own.mirror.params:
                return  # Optuna ignores a param set twice (the row exists); so do we
            own.mirror.params[param_name] = distribution.to_external_repr(param_value_internal)
            own.mirror.distributions[param_name] = distribution
        self._hold(trial_id, "params", param_name, (param_value_internal, distribution))

    def set_trial_intermediate_value(self, trial_id, step, intermediate_value) -> None:
        own = self._owned(trial_id)
        if own is None:
            return super().set_trial_intermediate_value(trial_id, step, intermediate_value)
        with self._buffer_lock:
            own.mirror.intermediate_values[step] = float(intermediate_value)
        self._hold(trial_id, "steps", step, intermediate_value)

    def set_trial_user_attr(self, trial_id, key, value) -> None:
        self._set_attr(trial_id, "user", key, value, super().set_trial_user_attr)

    def set_trial_system_attr(self, trial_id, key, value) -> None:
        self._set_attr(trial_id, "system", key, value, super().set_trial_system_attr)

    def _set_attr(self, trial_id, kind: str, key, value, unowned) -> None:
        own = self._owned(trial_id)
        if own is None:
            return unowned(trial_id, key, value)
        copied = _json_copy(value)  # not JSON: fails here, as in Optuna
        with self._buffer_lock:
            (own.mirror.user_attrs if kind == "user" else own.mirror.system_attrs)[key] = copied
        self._hold(trial_id, kind, key, value)

    def set_trial_state_values(self, trial_id, state, values=None) -> bool:
        own = self._own.get(trial_id)
        if own is not None and state.is_finished():
            return self._finish(trial_id, own, state, values)
        self.flush(trial_id)
        self._read_at.clear()
        changed = super().set_trial_state_values(trial_id, state=state, values=values)
        if changed and state == TrialState.RUNNING:  # popped a WAITING trial: it is ours now
            with self._buffer_lock:
                self._own[trial_id] = _Own.of(self._backend.get_trial(trial_id))
        return changed

    def _finish(self, trial_id: int, own: _Own, state: TrialState, values) -> bool:
        """One of our trials ends: its held writes, its values and its state in one transaction,
        written as Optuna's `set_trial_state_values` writes them. Optuna's trial cache then gets
        the finished trial, so the read after the tell (callbacks, the summary) needs no query;
        the study's next read of its trials replaces it with the database's copy."""
        stored = [models.TrialValueModel.value_to_stored_repr(float(v)) for v in values or ()]
        completed_utc = datetime.now().astimezone(timezone.utc).replace(tzinfo=None)  # as the model stores it

        def end(session) -> None:
            trials, rows = models.TrialModel.__table__, models.TrialValueModel.__table__
            if values is not None:
                session.execute(sqlalchemy.delete(rows).where(rows.c.trial_id == trial_id))
                _insert(
                    session,
                    models.TrialValueModel,
                    [
                        dict(trial_id=trial_id, objective=i, value=value, value_type=kind)
                        for i, (value, kind) in enumerate(stored)
                    ],
                )
            session.execute(
                sqlalchemy.update(trials)
                .where(trials.c.trial_id == trial_id)
                .values(state=state, datetime_complete=completed_utc)
            )

        try:
            self._flush([trial_id], then=end)
        except sqlalchemy.exc.IntegrityError:  # Optuna's answer to a conflicting write, too
            return False
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another worker failed it (this one's heartbeat lapsed, a suspended laptop): Optuna
            # would have refused each held write; the database's copy stands, and the run goes on.
            with self._buffer_lock:
                self._pending.pop(trial_id, None)
                self._own.pop(trial_id, None)
            return False
        with self._buffer_lock:
            self._own.pop(trial_id, None)
            finished = copy.deepcopy(own.mirror)
        finished.state = state
        finished.values = (
            None if values is None else [models.TrialValueModel.stored_repr_to_value(*v) for v in stored]
        )
        # Read back, the model turns stored UTC into naive local time; so does this.
        finished.datetime_complete = (
            completed_utc.replace(tzinfo=timezone.utc).astimezone().replace(tzinfo=None)
        )
        with self._lock:
            study_id, number = self._trial_id_to_study_id_and_number[trial_id]
            self._studies[study_id].trials[number] = finished
            self._finished_here.setdefault(study_id, set()).add(trial_id)
        return True

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        # Optuna's ask reads the study's trials again right after the sampler's read (to find
        # WAITING trials); nothing this process wrote since (a write clears `_read_at`) and at
        # most REREAD_S of other workers' progress can be missing from the first read.
        if time.monotonic() - self._read_at.get(study_id, -math.inf) < self.reread_s:
            return
        self._pass_own_finished(study_id)
        with self._buffer_lock:  # a trial `_finish` ends is in `_own` or in the database
            own = [o.mirror for tid, o in self._own.items() if self._study_of(tid) == study_id]
            if own:
                with self._lock:
                    self._read_others(study_id, own)
            else:
                super()._read_trials_from_remote_storage(study_id)
        self._read_at[study_id] = time.monotonic()

    def _study_of(self, trial_id: int) -> int | None:
        known = self._trial_id_to_study_id_and_number.get(trial_id)
        return None if known is None else known[0]

    def _read_others(self, study_id: int, own: list[FrozenTrial]) -> None:
        """Optuna's cache refresh, without fetching the running trials this process holds copies
        of: a stack's K running trials would be read back from the database at every ask (10 ms
        each time for a stack of 16), to find what this process wrote itself."""
        study = self._studies.setdefault(study_id, _StudyInfo())
        mark = study.last_finished_trial_id
        skip = [t._trial_id for t in own]
        again = [i for i in study.unfinished_trial_ids if i <= mark and i not in skip]
        trial, backend = models.TrialModel, self._backend
        with _create_scoped_session(backend.scoped_session) as session:
            query = session.query(trial).filter(trial.study_id == study_id, trial.trial_id.not_in(skip))
            for relation in (trial.params, trial.values, trial.user_attributes, trial.system_attributes):
                query = query.options(sqlalchemy.orm.selectinload(relation))
            query = query.options(sqlalchemy.orm.selectinload(trial.intermediate_values))
            newer = trial.trial_id > mark
            query = query.filter(sqlalchemy.or_(trial.trial_id.in_(again), newer) if again else newer)
            fetched = [
                backend._build_frozen_trial_from_trial_model(t) for t in query.order_by(trial.trial_id)
            ]
        self._add_trials_to_cache(study_id, [*fetched, *(copy.deepcopy(t) for t in own)])
        study.unfinished_trial_ids.update(skip)
        for t in fetched:  # as Optuna's refresh: the mark moves only over what this read saw
            if not t.state.is_finished():
                study.unfinished_trial_ids.add(t._trial_id)
                continue
            study.last_finished_trial_id = max(study.last_finished_trial_id, t._trial_id)
            study.unfinished_trial_ids.discard(t._trial_id)

    def _pass_own_finished(self, study_id: int) -> None:
        """Optuna's cache re-reads every trial above its mark "all trials up to here are
        finished and cached". A trial `_finish` ended is cached as written and can no longer
        change, so move the mark past it when every id in between is one the cache already
        re-reads (an unfinished trial it knows); an id it has not seen stops the move."""
        with self._lock:
            mine = self._finished_here.get(study_id)
            info = self._studies.get(study_id)
            if not mine or info is None:
                return
            mark = info.last_finished_trial_id
            for tid in sorted(mine):
                if tid > mark and not all(i in info.unfinished_trial_ids for i in range(mark + 1, tid)):
                    break
                mark = max(mark, tid)
                mine.discard(tid)
            info.last_finished_trial_id = mark

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna asks before every trial; a dead worker's trial only turns stale a grace period
        (two heartbeats) after its last heartbeat, so asking every few seconds finds it just as
        well, without a write-locked query per trial."""
        every = min(STALE_CHECK_S, self._backend.get_heartbeat_interval() or STALE_CHECK_S)
        now = time.monotonic()
        if now - self._stale_checked_at.get(study_id, -math.inf) < every:
            return []
        self._stale_checked_at[study_id] = now
        return super()._get_stale_trial_ids(study_id)

    # -- reads see every write of this process -------------------------------------------

    def get_trial(self, trial_id):
        with self._buffer_lock:
            own = self._own.get(trial_id)
            if own is not None:
                return copy.deepcopy(own.mirror)
        self.flush()
        return super().get_trial(trial_id)

    def get_all_trials(self, study_id, deepcopy=True, states=None):
        self.flush()
        return super().get_all_trials(study_id, deepcopy=deepcopy, states=states)

    def get_best_trial(self, study_id):
        self.flush()
        return super().get_best_trial(study_id)

    # -- writing ------------------------------------------------------------------------

    def _hold(self, trial_id: int, kind: str, key, value) -> None:
        """Hold one write (`kind` names a `_Pending` field); flush the trial's if they are due."""
        with self._buffer_lock:
            pending = self._pending.get(trial_id)
            if pending is None:
                pending = self._pending[trial_id] = _Pending(since=time.monotonic())
            getattr(pending, kind)[key] = value
            if not self._holding or time.monotonic() - pending.since >= self.flush_every_s:
                self.flush(trial_id)

    def _check_distribution(self, trial_id: int, name: str, distribution) -> None:
        """Optuna's check that a param keeps one kind of distribution across the study, at
        suggest time; the study's first distribution for each name is read once per process."""
        with self._lock:
            study_id, _ = self._trial_id_to_study_id_and_number[trial_id]
            known = self._studies[study_id].param_distribution.get(name)
        if known is None:
            known = self._first_distribution(study_id, name)
        if known is not None:
            distributions.check_distribution_compatibility(known, distribution)
        with self._lock:
            self._studies[study_id].param_distribution.setdefault(name, known or distribution)

    def _first_distribution(self, study_id: int, name: str):
        with _create_scoped_session(self._backend.scoped_session) as session:
            row = (
                session.query(models.TrialParamModel.distribution_json)
                .join(models.TrialModel)
                .filter(models.TrialModel.study_id == study_id)
                .filter(models.TrialParamModel.param_name == name)
                .first()
            )
        return distributions.json_to_distribution(row[0]) if row is not None else None

    def stop_holding(self) -> None:
        """Write every held write now and hold none from here on, so that nothing a caller was
        told is stored waits in memory: for a process about to stop while others still call in
        (the serve process, whose proxy threads run until it exits)."""
        with self._buffer_lock:
            self._holding = False
            self.flush()

    def flush(self, trial_id: int | None = None) -> None:
        """Write the held writes (of one trial, or of all) in one transaction."""
        self._flush(None if trial_id is None else [trial_id])

    def _flush(self, trial_ids: list[int] | None, then=None) -> None:
        """Write the held writes of `trial_ids` (None: all), then `then(session)`, as one
        transaction. On failure nothing is lost: the writes stay held for the next flush."""
        with self._buffer_lock:
            if trial_ids is None:
                batch, self._pending = self._pending, {}
            else:
                batch = {tid: self._pending.pop(tid) for tid in trial_ids if tid in self._pending}
            if not batch and then is None:
                return
            if then is None:
                checked = list(batch)
            else:
                assert trial_ids is not None  # `then` ends the trials it comes with (`_finish`)
                checked = list(dict.fromkeys([*batch, *trial_ids]))
            try:
                with _create_scoped_session(self._backend.scoped_session) as session:
                    for tid in checked:
                        self._write(session, tid, batch.get(tid) or _Pending(since=0.0))
                    if then is not None:
                        then(session)
            except BaseException:
                for tid, pending in batch.items():
                    self._pending.setdefault(tid, pending)
                raise
            self._read_at.clear()  # the next read must see what was just written
            for tid, pending in batch.items():
                own = self._own.get(tid)
                if own is not None:
                    own.params |= pending.params.keys()
                    own.steps |= pending.steps.keys()
                    own.user |= pending.user.keys()
                    own.system |= pending.system.keys()

    def _write(self, session, trial_id: int, p: _Pending) -> None:
        state = session.execute(
            sqlalchemy.select(models.TrialModel.state).where(models.TrialModel.trial_id == trial_id)
        ).scalar_one_or_none()
        if state is None:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        self._backend.check_trial_is_updatable(trial_id, state)  # another worker may have failed it
        written = self._own.get(trial_id) or _Own(mirror=None)  # type: ignore[arg-type]  # not ours: none
        params = [
            dict(
                trial_id=trial_id,
                param_name=name,
                param_value=value,
                distribution_json=distributions.distribution_to_json(dist),
            )
            for name, (value, dist) in p.params.items()
            if name not in written.params
        ]
        _insert(session, models.TrialParamModel, params)
        steps = []
        for step, value in p.steps.items():
            stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
            steps.append(
                dict(trial_id=trial_id, step=step, intermediate_value=stored, intermediate_value_type=kind)
            )
        _upsert(session, models.TrialIntermediateValueModel, "step", steps, written.steps)
        for model, attrs, done in (
            (models.TrialUserAttributeModel, p.user, written.user),
            (models.TrialSystemAttributeModel, p.system, written.system),
        ):
            rows = [dict(trial_id=trial_id, key=k, value_json=json.dumps(v)) for k, v in attrs.items()]
            _upsert(session, model, "key", rows, done)


def _json_copy(value: Any) -> Any:
    """The value as the database gives it back (tuples become lists, and so on)."""
    return json.loads(json.dumps(value))


def _insert(session, model, rows: list[dict]) -> None:
    """One executemany for all rows: the driver runs a prepared INSERT per row, no ORM per row."""
    if rows:
        session.execute(sqlalchemy.insert(model.__table__), rows)


def _upsert(session, model, key: str, rows: list[dict], existing: set) -> None:
    """Insert the new keys, update the rows of keys already written (rare: a key set again
    after a flush). An update keeps the row where it was, as Optuna's own upsert does."""
    _insert(session, model, [r for r in rows if r[key] not in existing])
    again = [r for r in rows if r[key] in existing]
    if again:
        table = model.__table__
        values = [c for c in again[0] if c not in ("trial_id", key)]
        statement = (
            sqlalchemy.update(table)
            .where(
                table.c.trial_id == sqlalchemy.bindparam("_trial"),
                table.c[key] == sqlalchemy.bindparam("_key"),
            )
            .values({c: sqlalchemy.bindparam(c) for c in values})
        )
        session.execute(
            statement, [{"_trial": r["trial_id"], "_key": r[key], **{c: r[c] for c in values}} for r in again]
        )
