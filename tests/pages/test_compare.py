"""search.compare: one row per study with states, best value and time; an aligned plain-text table."""

from __future__ import annotations

import datetime as dt

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from search.compare import main
from search.pages.compare import StudyRow, compare_studies, format_duration, format_table

T0 = dt.datetime(2024, 1, 1, 12, 0, 0)


def timed_trial(number, state, value, start_s, end_s, lr=0.01) -> FrozenTrial:
    return FrozenTrial(
        number=number, state=state, value=value, trial_id=number,
        datetime_start=T0 + dt.timedelta(seconds=start_s),
        datetime_complete=None if end_s is None else T0 + dt.timedelta(seconds=end_s),
        params={"lr": lr}, distributions={"lr": FloatDistribution(1e-4, 0.1, log=True)},
        user_attrs={}, system_attrs={}, intermediate_values={},
    )  # fmt: skip


def add_timed_study(url: str) -> None:
    """Two workers' worth of overlapping trials: 90 + 60 + 30 s of trials within a 100 s span."""
    study = optuna.create_study(storage=url, study_name="other", direction="maximize")
    for t in (
        timed_trial(0, TrialState.COMPLETE, 0.5, 0, 90, lr=0.02),
        timed_trial(1, TrialState.COMPLETE, 0.7, 10, 70, lr=0.0123456),
        timed_trial(2, TrialState.FAIL, None, 70, 100),
        timed_trial(3, TrialState.RUNNING, None, 95, None),
    ):
        study.add_trial(t)


def test_each_study_gets_a_row_with_states_best_and_time(digits_study_copy):
    add_timed_study(digits_study_copy.storage_url)
    optuna.create_study(storage=digits_study_copy.storage_url, study_name="empty")
    digits, empty, other = compare_studies(digits_study_copy.storage_url)
    assert (digits.name, empty.name, other.name) == ("digits", "empty", "other")

    study = digits_study_copy.load()
    best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert digits.n_trials == digits_study_copy.trials and digits.states["PRUNED"] >= 1
    assert (digits.best_value, digits.best_number, digits.best_params) == (
        best.value,
        best.number,
        best.params,
    )
    assert digits.trial_seconds == pytest.approx(sum(t.duration.total_seconds() for t in study.trials))

    assert (other.states["COMPLETE"], other.states["FAIL"], other.states["RUNNING"]) == (2, 1, 1)
    assert (other.best_value, other.best_number, other.best_params) == (0.7, 1, {"lr": 0.0123456})
    assert other.trial_seconds == 90 + 60 + 30  # the running trial has no duration yet
    assert other.wall_seconds == 100  # first start .. last end

    assert (empty.n_trials, empty.best_value, empty.wall_seconds) == (0, None, None)


def test_a_minimized_study_reports_its_lowest_value(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=url, study_name="loss", direction="minimize")
    for i, v in enumerate((0.3, 0.1, 0.2)):
        study.add_trial(timed_trial(i, TrialState.COMPLETE, v, i, i + 1))
    [row] = compare_studies(url)
    assert (row.best_value, row.best_number) == (0.1, 1)


def test_the_table_aligns_numbers_right_and_text_left():
    rows = [
        StudyRow("a", {"COMPLETE": 3, "PRUNED": 12}, 0.5, 0, {"lr": 0.001}, 75.0, 3725.0),
        StudyRow("long-study-name", {"COMPLETE": 100}, 0.98765, 7, {"lr": 0.1, "width_0": 64}, 5.0, 4.0),
        StudyRow("none-yet", {}, None, None, {}, 0.0, None),
    ]
    lines = format_table(rows).splitlines()
    header = lines[0]
    assert header.split()[:2] == ["study", "trials"] and len(lines) == 4
    best_end = header.index("best ") + len("best")  # right-aligned: every value ends here
    for line, value in zip(lines[1:], ("0.5000", "0.9877", "-"), strict=True):
        assert line[:best_end].endswith(" " + value)
    assert lines[1].startswith("a      ") and lines[3].startswith("none-yet ")
    params_at = header.index("best params")
    assert lines[1][params_at:] == "lr=0.001" and lines[2][params_at:] == "lr=0.1, width_0=64"
    assert "1m15s" in lines[1] and "1h02m" in lines[1] and lines[3].endswith("-")


@pytest.mark.parametrize(
    "seconds, text",
    [(None, "-"), (0.04, "0.0s"), (59.94, "59.9s"), (60, "1m00s"), (3599, "59m59s"), (3600, "1h00m"),
     (90061, "1d01h")],
)  # fmt: skip
def test_durations_read_at_a_glance(seconds, text):
    assert format_duration(seconds) == text


def test_the_command_prints_the_table(digits_study_copy, capsys):
    add_timed_study(digits_study_copy.storage_url)
    assert main(["--storage", digits_study_copy.storage_url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("study") and [line.split()[0] for line in out[1:]] == ["digits", "other"]


def test_a_storage_without_studies_says_so(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    optuna.storages.RDBStorage(url)  # Optuna's tables, no study
    assert main(["--storage", url]) == 0
    assert capsys.readouterr().out.startswith("no studies in ")


@pytest.mark.parametrize("make", ["missing", "directory", "garbage"])
def test_a_bad_storage_is_a_one_line_error(tmp_path, capsys, make):
    path = tmp_path / "x.db"
    if make == "directory":
        path.mkdir()
    elif make == "garbage":
        path.write_bytes(b"not a database at all")
    assert main(["--storage", f"sqlite:///{path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m search.compare: error: --storage") and err.count("\n") == 1
    assert make != "missing" or not path.exists()
