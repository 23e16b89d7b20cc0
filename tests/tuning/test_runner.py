"""The run's bookkeeping: slots count finished trials, overhead is measured from trial records."""

import multiprocessing as mp
import signal
import time

import optuna
from optuna.trial import TrialState

from search.tuning.runner import RunOptions, _Slots, run_search, stop_workers
from search.tuning.study_file import load_study
from search.tuning.summary import RunSummary, WorkerReport


def test_overhead_is_the_share_of_worker_time_outside_training():
    summary = RunSummary(
        "s",
        "sqlite://",
        10.0,
        workers=[
            WorkerReport(worker=0, wall_seconds=10.0, train_seconds=9.0, finished=5),
            WorkerReport(worker=1, wall_seconds=10.0, train_seconds=8.0, finished=5),
        ],
    )
    assert abs(summary.overhead - 0.15) < 1e-12
    assert RunSummary("s", "sqlite://", 0.0).overhead is None  # nothing ran: no figure, not 0%


def test_overhead_comes_from_the_trials_recorded_train_seconds(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    opts = RunOptions(
        spec=load_study("digits").with_overrides(epochs=2),
        storage_url=url,
        study_name="digits",
        trials=3,
        device="cpu",
        results_dir=tmp_path,
        heartbeat_s=None,
    )
    summary = run_search(opts)
    trials = optuna.load_study(study_name="digits", storage=url).trials
    recorded = sum(t.user_attrs["train_seconds"] for t in trials)
    (worker,) = summary.workers
    assert abs(worker.train_seconds - recorded) < 1e-9
    assert 0.0 < worker.train_seconds < worker.wall_seconds
    assert summary.overhead == 1 - worker.train_seconds / worker.wall_seconds


def test_slots_count_finished_trials_and_return_failed_ones():
    slots = _Slots(target=2, jobs=2)
    assert slots.claim(0) and slots.claim(1) and not slots.claim(0)
    slots.done(1, counted=False)  # worker 1's trial failed: its slot is free again
    assert slots.left == 1 and slots.claim(1)
    slots.done(0, counted=True)
    slots.done(0, counted=False)  # nothing held any more: a second release changes nothing
    assert slots.left == 0


def test_a_study_keeps_what_it_was_created_with(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    opts = RunOptions(
        spec=load_study("digits").with_overrides(epochs=1),
        storage_url=url,
        study_name="d",
        trials=1,
        device="cpu",
        results_dir=tmp_path,
        heartbeat_s=None,
    )
    run_search(opts)
    attrs = optuna.load_study(study_name="d", storage=url).user_attrs
    assert attrs["dataset"] == "digits" and attrs["epochs"] == 1 and attrs["split_seed"] == 0
    assert attrs["space"]["lr"] == {"low": 1e-4, "high": 1e-1, "log": True}
    assert [t.state for t in optuna.load_study(study_name="d", storage=url).trials] in (
        [TrialState.COMPLETE],
        [TrialState.PRUNED],
    )


def test_a_new_study_starts_with_its_baseline_trained_to_the_end(tmp_path):
    from test_study_file import BASELINE_STUDY

    from search.tuning.trials import baseline_trial

    path = tmp_path / "b.toml"
    path.write_text(BASELINE_STUDY)
    url = f"sqlite:///{tmp_path}/s.db"
    opts = RunOptions(spec=load_study(str(path)), storage_url=url, study_name="b", trials=6, device="cpu",
                      results_dir=tmp_path, heartbeat_s=None)  # fmt: skip
    summary = run_search(opts)
    study = optuna.load_study(study_name="b", storage=url)
    first = study.trials[0]
    assert first.params == {"n_layers": 1, "width_0": 32, "optimizer": "sgd", "lr_sgd": 0.05}
    assert first.user_attrs["baseline"] is True and first.state == TrialState.COMPLETE
    assert len(first.intermediate_values) == 4  # never pruned
    assert baseline_trial(study.trials).number == 0
    assert sum(bool(t.user_attrs.get("baseline")) for t in study.trials) == 1
    points = 100 * (summary.best_value - first.value)
    assert summary.baseline_gain.startswith(
        f"best {summary.best_value:.4f} vs the baseline {first.value:.4f}"
    )
    assert f"{points:+.1f} points" in summary.baseline_gain
    # resuming adds trials, not a second baseline
    run_search(opts)
    assert (
        sum(bool(t.user_attrs.get("baseline")) for t in optuna.load_study(study_name="b", storage=url).trials)
        == 1
    )


def test_a_new_study_tries_its_start_configs_right_after_the_baseline(tmp_path):
    from test_study_file import BASELINE_STUDY, START

    path = tmp_path / "w.toml"
    path.write_text(BASELINE_STUDY + START)
    url = f"sqlite:///{tmp_path}/s.db"
    opts = RunOptions(spec=load_study(str(path)), storage_url=url, study_name="w", trials=4, device="cpu",
                      results_dir=tmp_path, heartbeat_s=None)  # fmt: skip
    run_search(opts)
    trials = optuna.load_study(study_name="w", storage=url).trials
    assert [t.params for t in trials[1:3]] == opts.spec.start_params()
    assert [bool(t.user_attrs.get("warm_start")) for t in trials] == [False, True, True, False]
    run_search(opts)  # resuming enqueues them no more
    trials = optuna.load_study(study_name="w", storage=url).trials
    assert len(trials) == 8 and sum(bool(t.user_attrs.get("warm_start")) for t in trials) == 2


def test_the_timeout_stops_the_running_trial_after_the_epoch_it_passes_in(tmp_path):
    from search.tuning.space import parse_space

    url = f"sqlite:///{tmp_path}/s.db"
    slow = {"n_layers": 1, "width": 256, "batch_size": 2, "lr": 0.01}  # about a second an epoch
    spec = load_study("digits").with_overrides(epochs=200, pruner="none", space=parse_space(slow, where="t"))
    opts = RunOptions(spec=spec, storage_url=url, study_name="d", trials=50, timeout=2.0, device="cpu",
                      results_dir=tmp_path, heartbeat_s=None)  # fmt: skip
    run_search(opts)
    (trial,) = optuna.load_study(study_name="d", storage=url).trials
    # stopped after the epoch the 2 s ran out in, not the 200 it would have taken (counted in
    # epochs, not seconds: a busy machine slows every epoch alike)
    assert trial.state == TrialState.PRUNED and 1 <= len(trial.intermediate_values) < 20
    assert trial.user_attrs["reason"].startswith("stopped when the run's time ran out after epoch")


def _sleep(on_sigterm, ready):
    signal.signal(signal.SIGTERM, on_sigterm)  # not whatever handler this test process holds
    ready.release()
    time.sleep(60)


def test_stop_workers_kills_a_worker_that_ignores_sigterm_and_spares_one_that_stops():
    ctx = mp.get_context("fork")  # the targets need not be importable
    ready = ctx.Semaphore(0)
    procs = {
        i: ctx.Process(target=_sleep, args=(h, ready)) for i, h in enumerate((signal.SIG_DFL, signal.SIG_IGN))
    }
    for p in procs.values():
        p.start()
    assert ready.acquire(timeout=30) and ready.acquire(timeout=30)
    try:
        assert stop_workers(procs, grace=1.0) == [1]
        assert procs[0].exitcode == -signal.SIGTERM and procs[1].exitcode == -signal.SIGKILL
    finally:
        for p in procs.values():
            p.kill()
