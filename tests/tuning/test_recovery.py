"""An interrupted worker's RUNNING trials end FAIL with their reason, through the one private door;
a worker that stopped beating through the gRPC proxy has its trial failed and retried."""

import optuna
from optuna.trial import TrialState

from search.storage._beats import ATTR_BEAT
from search.tuning import _running_trials
from search.tuning.recovery import SilentTrials, fail_orphans


def test_fail_orphans_ends_only_this_workers_running_trials_with_a_reason():
    study = optuna.create_study(direction="maximize")
    mine, other, done = study.ask(), study.ask(), study.ask()
    mine.set_user_attr("worker", "host:1:0")
    other.set_user_attr("worker", "host:2:0")
    done.set_user_attr("worker", "host:1:0")
    study.tell(done, 0.5)
    assert fail_orphans(study, {"host:1:0"}) == 1
    by_number = {t.number: t for t in study.trials}
    assert by_number[mine.number].state == TrialState.FAIL
    assert by_number[mine.number].user_attrs["reason"] == "interrupted"
    assert by_number[other.number].state == TrialState.RUNNING
    assert (
        by_number[done.number].state == TrialState.COMPLETE
        and "reason" not in by_number[done.number].user_attrs
    )


def test_the_private_door_still_opens():
    study = optuna.create_study()
    trial = study.ask()
    frozen = study.trials[0]
    try:
        _running_trials.set_user_attr(study, frozen, "k", 1)
    except AttributeError as e:
        raise AssertionError(
            f"Optuna {optuna.__version__} moved {_running_trials.OPTUNA_INTERNAL}: "
            f"search/tuning/_running_trials.py must follow it ({e})"
        ) from None
    assert study.trials[0].user_attrs["k"] == 1 and trial.number == frozen.number


def test_an_interrupted_trial_is_queued_again_and_resumes_where_it_stopped(tmp_path, monkeypatch):
    from helpers import one_torch_thread

    from search.tuning import objective as objective_mod
    from search.tuning.runner import RunOptions, run_search
    from search.tuning.study_file import load_study

    study_file = tmp_path / "r.toml"
    study_file.write_text(
        '[study]\ndataset = "digits"\nepochs = 6\npruner = "none"\n'
        "[space]\nwidth = 32\ndropout = 0.1\nlr = {low = 0.01, high = 0.1, log = true}\n"
    )

    def opts(folder, trials):
        return RunOptions(spec=load_study(str(study_file)), storage_url=f"sqlite:///{folder}/s.db",
                          study_name="r", trials=trials, device="cpu", heartbeat_s=None,
                          results_dir=folder, resume_every=0.0)  # fmt: skip

    real_fit = objective_mod.fit

    def interrupted_at_epoch_4(config, data, on_epoch=None, **kw):
        def stop(m):
            if m.epoch == 4:
                raise KeyboardInterrupt
            return on_epoch(m)

        return real_fit(config, data, on_epoch=stop, **kw)

    with one_torch_thread("search.tuning.runner"):
        calm = tmp_path / "calm"
        calm.mkdir()
        run_search(opts(calm, 2))
        monkeypatch.setattr(objective_mod, "fit", interrupted_at_epoch_4)
        summary = run_search(opts(tmp_path, 2))
        assert summary.interrupted == "SIGINT"
        monkeypatch.setattr(objective_mod, "fit", real_fit)
        run_search(opts(tmp_path, 2))
    trials = optuna.load_study(study_name="r", storage=f"sqlite:///{tmp_path}/s.db").trials
    assert [t.state for t in trials[:2]] == [TrialState.FAIL, TrialState.COMPLETE]
    retry = trials[1]
    assert retry.system_attrs["failed_trial"] == 0 and retry.user_attrs["resumed_from_epoch"] == 3
    assert retry.user_attrs["reason"] is None  # the interruption was the first attempt's, not its
    (first_calm, second_calm) = optuna.load_study(study_name="r", storage=f"sqlite:///{calm}/s.db").trials
    assert retry.params == first_calm.params and retry.intermediate_values == first_calm.intermediate_values
    assert retry.value == first_calm.value and len(trials) == 3 and second_calm.state == TrialState.COMPLETE


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _beating_trial(study: optuna.Study, every: int = 30):
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.set_user_attr("worker", "far:7:0")
    beat = {"n": 0}

    def beats() -> None:
        beat["n"] += 1
        trial.storage.set_trial_system_attr(trial._trial_id, ATTR_BEAT, {"at": beat["n"], "every": every})

    beats()
    return trial, beats


def test_a_trial_whose_beat_stops_is_failed_after_two_intervals_and_retried_with_its_params():
    study = optuna.create_study(direction="maximize")
    clock = _Clock()
    silent, (trial, _) = SilentTrials(clock), _beating_trial(study)
    assert silent.check(study._storage) == []
    clock.now += 59
    assert silent.check(study._storage) == []
    clock.now += 2
    [found] = silent.check(study._storage)
    assert (found.study, found.number, found.worker, round(found.silent_s)) == (
        study.study_name,
        0,
        "far:7:0",
        61,
    )
    failed, retry = study.trials
    assert (
        failed.state == TrialState.FAIL
        and "no heartbeat from its worker far:7:0" in failed.user_attrs["reason"]
    )
    assert retry.state == TrialState.WAITING and retry.params == trial.params
    assert retry.system_attrs["failed_trial"] == 0
    assert silent.check(study._storage) == []  # failed once, retried once


def test_a_beating_trial_or_one_that_never_beat_is_left_running():
    study = optuna.create_study(direction="maximize")
    clock = _Clock()
    silent = SilentTrials(clock)
    _, beats = _beating_trial(study)
    study.ask()  # a worker on a direct connection: Optuna's own heartbeat, not ours
    for _ in range(5):
        silent.check(study._storage)
        clock.now += 40
        beats()
    assert [t.state for t in study.trials] == [TrialState.RUNNING, TrialState.RUNNING]


def test_silence_is_judged_on_the_checkers_clock_not_the_time_a_worker_wrote():
    """A beat stamped long ago (a worker's clock behind, or a checker that just started) is not
    stale until the checker itself has seen it unchanged for two intervals."""
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    trial.storage.set_trial_system_attr(trial._trial_id, ATTR_BEAT, {"at": 0.0, "every": 1})
    clock = _Clock()
    silent = SilentTrials(clock)
    assert silent.check(study._storage) == []
    clock.now += 1.5
    assert silent.check(study._storage) == []
    clock.now += 1
    assert len(silent.check(study._storage)) == 1


def test_a_study_deleted_while_the_checker_looks_is_passed_over(monkeypatch):
    study = optuna.create_study(direction="maximize")
    clock = _Clock()
    silent, _ = SilentTrials(clock), _beating_trial(study, every=1)
    monkeypatch.setattr(optuna, "get_all_study_names", lambda storage: ["deleted just now", study.study_name])
    silent.check(study._storage)
    clock.now += 3
    assert [s.study for s in silent.check(study._storage)] == [study.study_name]
