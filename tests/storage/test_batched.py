"""BatchedStorage writes what Optuna's RDB storage writes, in a few transactions per trial, and
every read (its own, another worker's, a fresh process's) sees the same trials."""

import math
import pickle
import warnings

import optuna
import pytest
import sqlalchemy
from helpers import needs_internals
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from search.storage import _batched as batched_module
from search.storage._batched import BatchedStorage
from search.storage.running import publish

SPACE = {
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "width": IntDistribution(8, 512),
    "activation": CategoricalDistribution(["relu", "tanh", "gelu"]),
    "dropout": FloatDistribution(0.0, 0.5),
}


def _plain(path) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(f"sqlite:///{path}")


def _batched(path, **kwargs) -> BatchedStorage:
    return BatchedStorage(_plain(path), **kwargs)


def _one_trial(study: optuna.Study, n: int, *, end: str, publish_after_sampling: bool = True):
    """A trial as the objective runs one: sample, publish, report, attributes, tell."""
    trial = study.ask(SPACE)
    trial.set_user_attr("shape", (64, trial.params["width"], 10))  # a tuple comes back a list
    if publish_after_sampling:
        publish(trial)
    for step in range(1, 8):
        value = [0.1 * step, math.nan, math.inf][step % 3] if n % 2 else 0.1 * step
        trial.report(value, step)
    trial.set_user_attr("epochs", 7)
    trial.set_user_attr("shape", "replaced after the publish")
    trial.storage.set_trial_system_attr(trial._trial_id, "note", {"n": n})
    if end == "complete":
        study.tell(trial, 0.5 + n / 100)
    elif end == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)


def _run_script(storage) -> None:
    sampler = optuna.samplers.RandomSampler(seed=0)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize", sampler=sampler)
    for n, end in enumerate(["complete", "pruned", "fail", "complete", "complete", "pruned"]):
        _one_trial(study, n, end=end, publish_after_sampling=n != 4)


def _content(trial: optuna.trial.FrozenTrial) -> tuple:
    """Everything a trial holds but its clock times and its id."""
    return (
        trial.number,
        trial.state,
        trial.values,
        trial.params,
        trial.distributions,
        trial.user_attrs,
        trial.system_attrs,
        {k: (None if math.isnan(v) else v) for k, v in trial.intermediate_values.items()},
    )


def _exact(trial: optuna.trial.FrozenTrial) -> str:
    """All of a trial, clock times and id included, NaN equal to NaN; the order of keys aside
    (a database returns attribute rows in index order, not in the order they were set)."""
    fields = {k: sorted(v.items()) if isinstance(v, dict) else v for k, v in vars(trial).items()}
    return repr(sorted(fields.items()))


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def test_batched_storage_records_what_optunas_storage_records(tmp_path):
    """The rule: batching changes when rows are written, never which rows."""
    _run_script(_plain(tmp_path / "plain.db"))
    _run_script(_batched(tmp_path / "batched.db"))
    plain = optuna.load_study(study_name="s", storage=_plain(tmp_path / "plain.db")).get_trials()
    batched = optuna.load_study(study_name="s", storage=_plain(tmp_path / "batched.db")).get_trials()
    assert [_content(t) for t in batched] == [_content(t) for t in plain]
    assert batched[1].user_attrs["shape"] == "replaced after the publish"


def test_what_a_worker_reads_of_its_own_trials_equals_the_database(tmp_path):
    """Its finished trials are served from memory; they must match a fresh read to the
    microsecond, or TPE and the callbacks would see other trials than the dashboard."""
    storage = _batched(tmp_path / "b.db")
    _run_script(storage)
    study_id = storage.get_study_id_from_name("s")
    fresh = _plain(tmp_path / "b.db").get_all_trials(study_id)
    assert [_exact(t) for t in storage.get_all_trials(study_id)] == [_exact(t) for t in fresh]
    assert [_exact(storage.get_trial(t._trial_id)) for t in fresh] == [_exact(t) for t in fresh]


def _write_transactions(storage) -> list:
    """Committed transactions that wrote something (reads commit too, and don't count)."""
    engine = storage._backend.engine if isinstance(storage, BatchedStorage) else storage.engine
    wrote, commits = [False], []

    def on_execute(conn, cursor, statement, *args):
        if statement.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            wrote[0] = True

    def on_commit(conn):
        if wrote[0]:
            commits.append(1)
        wrote[0] = False

    sqlalchemy.event.listen(engine, "before_cursor_execute", on_execute)
    sqlalchemy.event.listen(engine, "commit", on_commit)
    return commits


def test_a_trial_costs_three_write_transactions_instead_of_one_per_write(tmp_path):
    plain, batched = _plain(tmp_path / "p.db"), _batched(tmp_path / "b.db")
    counts = []
    for storage in (plain, batched):
        study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
        _one_trial(study, 0, end="complete")  # the first trial reads each param's history once
        commits = _write_transactions(storage)
        _one_trial(study, 1, end="complete")
        counts.append(len(commits))
    # Optuna: create, 4 params, 7 reports, 4 attributes, state: 17. Batched: create, publish, end.
    assert counts[0] >= 17
    assert counts[1] <= 3


def test_other_workers_see_the_params_at_publish_and_the_rest_at_the_tell(tmp_path):
    storage = _batched(tmp_path / "b.db")
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    other = _plain(tmp_path / "b.db")
    trial = study.ask(SPACE)
    trial.report(0.3, 1)
    assert other.get_trial(trial._trial_id).params == {}
    publish(trial)
    seen = other.get_trial(trial._trial_id)
    assert seen.params == trial.params and seen.intermediate_values == {1: 0.3}
    trial.report(0.4, 2)
    assert 2 not in other.get_trial(trial._trial_id).intermediate_values
    study.tell(trial, 0.4)
    seen = other.get_trial(trial._trial_id)
    assert seen.state == TrialState.COMPLETE and seen.intermediate_values == {1: 0.3, 2: 0.4}


def test_a_long_trials_reports_are_written_every_flush_interval(tmp_path):
    """What keeps optuna-dashboard live, and bounds what a killed worker loses."""
    storage = _batched(tmp_path / "b.db", flush_every_s=0.0)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    trial = study.ask()
    trial.report(0.25, 1)
    assert _plain(tmp_path / "b.db").get_trial(trial._trial_id).intermediate_values == {1: 0.25}


def test_a_trial_another_worker_failed_ends_failed_and_its_held_writes_are_dropped(tmp_path):
    """A worker whose heartbeat lapsed (a suspended machine) finds its trial failed by another;
    Optuna would refuse each write, so the held ones are dropped and the run goes on."""
    storage = _batched(tmp_path / "b.db")
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    trial = study.ask(SPACE)
    publish(trial)
    trial.report(0.9, 1)
    _plain(tmp_path / "b.db").set_trial_state_values(trial._trial_id, TrialState.FAIL)
    study.tell(trial, 0.9)
    final = _plain(tmp_path / "b.db").get_trial(trial._trial_id)
    assert final.state == TrialState.FAIL and final.intermediate_values == {} and final.values is None
    assert study.trials[0].state == TrialState.FAIL
    study.tell(study.ask(), 0.1)  # the next trial runs as usual
    assert study.trials[1].state == TrialState.COMPLETE


def test_two_workers_reading_each_others_trials_see_what_the_database_holds(tmp_path):
    """Skipping the re-read of a worker's own finished trials must never hide another's."""
    a, b = _batched(tmp_path / "b.db", reread_s=0.0), _batched(tmp_path / "b.db", reread_s=0.0)
    sa = optuna.create_study(storage=a, study_name="s", direction="maximize")
    sb = optuna.load_study(storage=b, study_name="s")
    fresh = _plain(tmp_path / "b.db")
    ta = sa.ask(SPACE)
    tb = sb.ask(SPACE)  # a's trial is older and still running
    publish(ta)
    publish(tb)
    sb.tell(tb, 0.2)
    tb2 = sb.ask(SPACE)
    sa.tell(ta, 0.1)
    for study in (sa, sb):
        assert study.get_trials() == fresh.get_all_trials(study._study_id)
    sb.tell(tb2, 0.3)
    ta2 = sa.ask(SPACE)
    sa.tell(ta2, 0.4)
    for study in (sa, sb):
        assert study.get_trials() == fresh.get_all_trials(study._study_id)
        assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 4


def test_a_trial_another_worker_created_unseen_is_not_skipped(tmp_path):
    """Worker b creates a trial a has never read; a then finishes a newer trial of its own.
    a's next read must still fetch b's trial (it is not below any mark a could trust)."""
    a, b = _batched(tmp_path / "b.db", reread_s=0.0), _batched(tmp_path / "b.db", reread_s=0.0)
    study = optuna.create_study(storage=a, study_name="s", direction="maximize")
    study.tell(study.ask(), 0.1)
    assert len(a.get_all_trials(study._study_id)) == 1  # a has read everything so far
    unseen = b.create_new_trial(study._study_id)
    mine = a.create_new_trial(study._study_id)
    a.set_trial_state_values(mine, TrialState.COMPLETE, [0.2])
    fresh = _plain(tmp_path / "b.db").get_all_trials(study._study_id)
    assert [t._trial_id for t in fresh] == [1, unseen, mine]
    assert [_exact(t) for t in a.get_all_trials(study._study_id)] == [_exact(t) for t in fresh]


def test_a_stacks_running_trials_are_read_from_memory_and_equal_the_database(tmp_path):
    """A worker running K trials at once (a stack) reads the study at every ask: its own running
    trials come from its copies, not the database, and what it reads is what the database holds
    once its writes are flushed; another worker's trials are still fetched."""
    a, b = _batched(tmp_path / "b.db", reread_s=0.0), _batched(tmp_path / "b.db", reread_s=0.0)
    sa = optuna.create_study(storage=a, study_name="s", direction="maximize")
    sb = optuna.load_study(storage=b, study_name="s")
    sa.tell(sa.ask(SPACE), 0.1)
    stack = [sa.ask(SPACE) for _ in range(4)]
    for step, t in enumerate(stack, start=1):
        t.report(0.1 * step, step)
        t.set_user_attr("stack_id", stack[0].number)
    other = sb.ask(SPACE)
    publish(other)
    built = []
    build = a._backend._build_frozen_trial_from_trial_model
    a._backend._build_frozen_trial_from_trial_model = lambda m: built.append(m.trial_id) or build(m)
    read = a.get_all_trials(sa._study_id)
    assert other._trial_id in built
    assert not {t._trial_id for t in stack} & set(built)
    a.flush()
    fresh = _plain(tmp_path / "b.db").get_all_trials(sa._study_id)
    assert [_exact(t) for t in read] == [_exact(t) for t in fresh]
    sb.tell(other, 0.5)
    for t in stack:
        sa.tell(t, 0.2)
    fresh = _plain(tmp_path / "b.db").get_all_trials(sa._study_id)
    assert [_exact(t) for t in a.get_all_trials(sa._study_id)] == [_exact(t) for t in fresh]
    assert [t.state for t in fresh] == [TrialState.COMPLETE] * 6


def test_a_param_must_keep_its_distribution_across_the_study(tmp_path):
    """Optuna's check, at suggest time as in Optuna, against trials written by any worker."""
    _run_script(_plain(tmp_path / "b.db"))
    study = optuna.load_study(study_name="s", storage=_batched(tmp_path / "b.db"))
    trial = study.ask()
    with pytest.raises(ValueError):
        trial.suggest_categorical("lr", ["high", "low"])


def test_a_user_attr_that_is_not_json_fails_when_set(tmp_path):
    study = optuna.create_study(storage=_batched(tmp_path / "b.db"), study_name="s")
    trial = study.ask()
    with pytest.raises(TypeError):
        trial.set_user_attr("model", object())
    study.tell(trial, 1.0)  # and nothing held breaks the trial's end
    assert study.trials[0].state == TrialState.COMPLETE


def test_a_batched_storage_survives_pickling_with_its_held_writes(tmp_path):
    """Optuna pickles storages (a study sent to another process); the locks are remade."""
    storage = _batched(tmp_path / "b.db")
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    trial.report(0.5, 1)
    copy = pickle.loads(pickle.dumps(storage))
    copy.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [0.5])
    assert _plain(tmp_path / "b.db").get_trial(trial._trial_id).intermediate_values == {1: 0.5}


@needs_internals
def test_the_optuna_internals_batched_storage_writes_through_are_still_there():
    from optuna.storages import _cached_storage

    assert batched_module.available(), (
        f"Optuna {optuna.__version__} moved optuna.storages._cached_storage._CachedStorage, "
        "optuna.storages._rdb.models or _rdb.storage._create_scoped_session: "
        "search/storage/_batched.py must follow it (the runner now falls back to plain storage)"
    )
    cached = _cached_storage._CachedStorage.__init__.__code__.co_varnames
    assert "backend" in cached, f"Optuna {optuna.__version__} changed _CachedStorage's constructor"
    names = {c.name for c in batched_module.models.TrialModel.__table__.columns}
    assert {"trial_id", "number", "study_id", "state"} <= names, (
        f"Optuna {optuna.__version__} changed the trials table that search/storage/_batched.py writes"
    )


def test_after_stop_holding_no_write_waits_in_memory(tmp_path):
    """The serve process stops while its proxy threads still answer: what they were told is
    stored, before and after, is in the database."""
    storage = _batched(tmp_path / "b.db")
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    trial = study.ask(SPACE)
    trial.report(0.1, 1)
    storage.stop_holding()
    trial.report(0.2, 2)
    trial.set_user_attr("after", True)
    seen = _plain(tmp_path / "b.db").get_trial(trial._trial_id)
    assert seen.params == trial.params
    assert seen.intermediate_values == {1: 0.1, 2: 0.2} and seen.user_attrs == {"after": True}


def test_many_threads_sharing_one_batched_storage_record_every_trial_exactly(tmp_path):
    """Behind the gRPC proxy every server thread writes to one BatchedStorage: each thread runs its
    trials while a beat thread adds attrs to the same running trial and reads of it go on."""
    import sys
    import threading

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave between nearly every bytecode
    storage = _batched(tmp_path / "b.db", reread_s=0.0)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    errors = []

    def worker(n: int) -> None:
        try:
            for k in range(3):
                trial = study.ask(SPACE)
                stop = threading.Event()

                def beat(trial_id=trial._trial_id, stop=stop):
                    i = 0
                    while not stop.is_set() and i < 2000:
                        storage.set_trial_system_attr(trial_id, f"beat-{i}", i)
                        i += 1

                beating = threading.Thread(target=beat)
                beating.start()
                for step in range(1, 11):
                    trial.report(step / 10, step)
                    for _ in range(20):
                        storage.get_trial(trial._trial_id)
                stop.set()
                beating.join()
                study.tell(trial, n + k / 10)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    try:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    trials = _plain(tmp_path / "b.db").get_all_trials(study._study_id)
    assert sorted(t.number for t in trials) == list(range(12))
    assert all(t.state == TrialState.COMPLETE and len(t.intermediate_values) == 10 for t in trials)
    assert all(set(t.params) == set(SPACE) and "beat-0" in t.system_attrs for t in trials)
