"""An interrupted worker's RUNNING trials end FAIL with their reason, are queued again, and resume
from their saved epoch."""

import optuna
from optuna.trial import TrialState

from search.storage import running
from search.tuning.recovery import fail_orphans


def test_fail_orphans_ends_only_this_workers_running_trials_with_a_reason():
    storage = optuna.storages.InMemoryStorage()
    study = running.bind(optuna.create_study(storage=storage, direction="maximize"), storage)
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


def test_an_interrupted_trial_is_queued_again_and_resumes_where_it_stopped(tmp_path, monkeypatch):
    from helpers import one_torch_thread

    from search.tuning import stacking
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

    real_fit = stacking.fit_stacked

    def interrupted_at_epoch_4(configs, data, on_epoch=None, **kw):
        def stop(metrics):
            if any(m.epoch == 4 for m in metrics.values()):
                raise KeyboardInterrupt
            return on_epoch(metrics)

        return real_fit(configs, data, on_epoch=stop, **kw)

    with one_torch_thread("search.tuning.runner"):
        calm = tmp_path / "calm"
        calm.mkdir()
        run_search(opts(calm, 2))
        monkeypatch.setattr(stacking, "fit_stacked", interrupted_at_epoch_4)
        summary = run_search(opts(tmp_path, 2))
        assert summary.interrupted == "SIGINT"
        monkeypatch.setattr(stacking, "fit_stacked", real_fit)
        run_search(opts(tmp_path, 2))
    trials = optuna.load_study(study_name="r", storage=f"sqlite:///{tmp_path}/s.db").trials
    assert [t.state for t in trials[:2]] == [TrialState.FAIL, TrialState.COMPLETE]
    retry = trials[1]
    assert retry.system_attrs["failed_trial"] == 0 and retry.user_attrs["resumed_from_epoch"] == 3
    assert retry.user_attrs["reason"] is None  # the interruption was the first attempt's, not its
    (first_calm, second_calm) = optuna.load_study(study_name="r", storage=f"sqlite:///{calm}/s.db").trials
    assert retry.params == first_calm.params and retry.intermediate_values == first_calm.intermediate_values
    assert retry.value == first_calm.value and len(trials) == 3 and second_calm.state == TrialState.COMPLETE
