"""A worker that stopped beating through the gRPC proxy has its trial failed and retried; a beating
one, or one that never beat, is left alone."""

import optuna
from optuna.trial import TrialState

from search.schema import ATTR_BEAT
from search.storage.silent import SilentTrials


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
