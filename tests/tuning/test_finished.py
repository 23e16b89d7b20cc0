"""A finished study opens read-only, names what it lacks in one line, and replays its trials."""

import optuna
import pytest

from search.errors import UserError
from search.tuning.finished import open_finished


def test_opening_a_missing_storage_never_creates_a_database(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        open_finished(f"sqlite:///{tmp_path / 'sub' / 'new.db'}")
    assert not (tmp_path / "sub").exists()


def test_a_study_without_a_complete_trial_says_what_it_holds(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s", storage=url)
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    finished = open_finished(url)
    with pytest.raises(UserError, match=r"no finished \(COMPLETE\) trial \(1 pruned, 1 fail\)"):
        finished.best()


def test_a_study_not_made_by_search_run_names_the_attrs_it_lacks(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    optuna.create_study(study_name="s", storage=url)
    with pytest.raises(UserError, match="lacks dataset, val_fraction"):
        _ = open_finished(url, "s").binding
