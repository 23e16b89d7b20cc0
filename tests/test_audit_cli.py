"""python -m search.audit: what it prints and writes, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest
from helpers import one_torch_thread
from optuna.trial import TrialState

from search.audit import main
from search.posthoc.audit import AUDIT_JSON


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread("search.cli"):
        yield


def one_line_error(capsys, rc: int, *needles: str) -> str:
    """The rule for every user error: exit 2, one line on stderr, no traceback."""
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("python -m search.audit: error: ")
    for n in needles:
        assert n in err, err
    return err


def study_with(digits_study, url: str, name: str, states: tuple[TrialState, ...]) -> None:
    """A study bound like the shared one, holding copies of its trials in `states` only."""
    source = digits_study.load()
    study = optuna.create_study(storage=url, study_name=name, direction="maximize")
    for key, value in source.user_attrs.items():
        study.set_user_attr(key, value)
    for t in source.get_trials():
        if t.state in states:
            study.add_trial(t)


def test_audit_prints_the_rates_and_writes_audit_json(digits_study_copy, capsys):
    d = digits_study_copy
    rc = main(["--storage", d.storage_url, "--results-dir", str(d.results_dir), "--n", "1", "--device",
               "cpu", "--no-progress"])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0
    payload = json.loads((d.results_dir / "digits" / AUDIT_JSON).read_text())
    assert payload["n_audited"] == 1 and payload["audit_study"] == "digits-audit"
    [row] = payload["trials"]
    assert f"trial {row['trial_number']}: pruned at epoch {row['pruned_at_epoch']}" in printed
    assert f"{payload['above_median']} of 1" in printed and f"regret {payload['regret']:+.4f}" in printed
    assert f"wrote {AUDIT_JSON} to {d.results_dir / 'digits'}" in printed
    assert "--n 1" in payload["provenance"]["command"]
    assert len(optuna.load_study(study_name="digits-audit", storage=d.storage_url).get_trials()) == 1


# ---------------------------------------------------------------------------- errors


def test_a_study_with_no_pruned_trials_is_one_line(digits_study, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study_with(digits_study, url, "kept", (TrialState.COMPLETE,))
    rc = main(["--storage", url, "--results-dir", str(tmp_path / "r"), "--device", "cpu"])
    one_line_error(capsys, rc, "'kept' has no pruned trials to audit", "complete")
    assert not (tmp_path / "r").exists()
    names = [s.study_name for s in optuna.get_all_study_summaries(url)]
    assert names == ["kept"]  # no audit study made for nothing


def test_a_study_with_no_complete_trials_is_one_line(digits_study, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study_with(digits_study, url, "cut", (TrialState.PRUNED,))
    rc = main(["--storage", url, "--results-dir", str(tmp_path / "r"), "--device", "cpu"])
    one_line_error(capsys, rc, "'cut' has no finished (COMPLETE) trial")
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["cut"]


def test_a_missing_study_is_one_line(digits_study, tmp_path, capsys):
    rc = main(["--storage", digits_study.storage_url, "--study-name", "nope", "--results-dir",
               str(tmp_path), "--device", "cpu"])  # fmt: skip
    one_line_error(capsys, rc, "no study named 'nope'", "known studies: digits")


def test_the_audit_study_itself_is_refused_with_the_name_to_use(digits_study, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study_with(digits_study, url, "digits", ())
    optuna.create_study(storage=url, study_name="digits-audit").set_user_attr("audit_of", "digits")
    rc = main(["--storage", url, "--study-name", "digits-audit", "--device", "cpu"])
    one_line_error(capsys, rc, "pruning audit of study 'digits'", "--study-name digits")


def test_a_missing_storage_file_is_one_line_and_is_not_created(tmp_path, capsys):
    rc = main(["--storage", f"sqlite:///{tmp_path / 'none.db'}", "--device", "cpu"])
    one_line_error(capsys, rc, "does not exist")
    assert not (tmp_path / "none.db").exists()


def test_bad_flags_are_one_line_usage_errors(capsys):
    one_line_error(capsys, main(["--n", "0"]), "--n", "at least 1")
    one_line_error(capsys, main(["--seed", "-1"]), "--seed", "0 or more")


def test_help_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "search.audit", "--help"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for flag in ("--n", "--seed", "--storage", "--results-dir", "--device", "--data-dir", "--study-name"):
        assert flag in done.stdout
