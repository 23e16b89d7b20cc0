"""Many workers, one study: parallel SQLite on one machine, PostgreSQL across processes."""

import subprocess
import sys
import uuid

import optuna
from helpers import TEST_POSTGRES, postgres_or_skip
from optuna.trial import TrialState

from search.run import main


def test_four_sqlite_workers_finish_forty_trials_with_no_locking_failures(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/s.db"
    args = [
        "--study",
        "digits",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        "--storage",
        url,
        "--results-dir",
        str(tmp_path / "results"),
        "--trials",
        "40",
        "--jobs",
        "4",
    ]
    assert main(args) == 0
    assert "this run finished 40 trial(s), 0 failed" in capsys.readouterr().out
    trials = optuna.load_study(study_name="digits", storage=url).trials
    assert [t.state for t in trials if t.state not in (TrialState.COMPLETE, TrialState.PRUNED)] == []
    assert len(trials) == 40
    assert len({t.user_attrs["worker"] for t in trials}) == 4  # all four took part


def test_four_processes_on_postgresql_join_one_study_and_count_every_trial_once(tmp_path):
    db = postgres_or_skip()
    name = f"pg-{uuid.uuid4().hex[:8]}"
    cmd = [
        sys.executable,
        "-m",
        "search.run",
        "--study",
        "digits",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        "--storage",
        TEST_POSTGRES,
        "--study-name",
        name,
        "--trials",
        "5",
        "--results-dir",
        str(tmp_path / "results"),
    ]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)
    ]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
        for p, (out, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err
            assert "this run finished 5 trial(s), 0 failed" in out
        trials = optuna.load_study(study_name=name, storage=db).trials
        assert len(trials) == 20
        assert sorted(t.number for t in trials) == list(range(20))  # none lost, none twice
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        assert len({t.user_attrs["worker"] for t in trials}) == 4
    finally:
        for p in procs:
            p.kill()
        try:
            optuna.delete_study(study_name=name, storage=db)
        except KeyError:
            pass
