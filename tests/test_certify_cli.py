"""python -m search.certify: the table it prints, --jobs that changes no figure, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO

import optuna
import pytest
from helpers import one_torch_thread
from optuna.trial import TrialState

from search.certify import main
from search.posthoc.certify import CERTIFIED_BEST, CERTIFIED_JSON, CERTIFIED_MODEL, CERTIFIED_TXT


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread("search.certify"):  # the workers of --jobs get one thread too
        yield


def certify(url: str, results, *extra: str) -> tuple[int, str, str]:
    argv = ["--storage", url, "--results-dir", str(results), "--device", "cpu", "--no-progress",
            "--top", "2", "--seeds", "2", *extra]  # fmt: skip
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def one_job(digits_study, tmp_path_factory):
    results = tmp_path_factory.mktemp("one_job")
    rc, out, err = certify(digits_study.storage_url, results, "--jobs", "1")
    assert rc == 0, err
    return results / "digits", out


def one_line_error(capsys, rc: int, *needles: str) -> str:
    """The rule for every user error: exit 2, one line on stderr, no traceback."""
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("python -m search.certify: error: ")
    for n in needles:
        assert n in err, err
    return err


def figures(folder) -> dict:
    """certified.json without what may differ between two runs (times, provenance, --jobs)."""
    payload = json.loads((folder / CERTIFIED_JSON).read_text())
    for c in payload["configs"]:
        del c["train_seconds"]
    return {k: v for k, v in payload.items() if k not in ("provenance", "jobs")}


def test_certify_prints_its_table_and_writes_its_files(one_job):
    folder, printed = one_job
    for name in (CERTIFIED_JSON, CERTIFIED_TXT, CERTIFIED_BEST, CERTIFIED_MODEL):
        assert (folder / name).is_file(), name
        assert name in printed
    table = (folder / CERTIFIED_TXT).read_text()
    assert printed.startswith(table)  # the same table on the screen and in the file
    payload = json.loads((folder / CERTIFIED_JSON).read_text())
    assert f"winner: trial {payload['winner']['trial_number']}" in printed
    assert payload["top"] == 2 and payload["seeds_per_config"] == 2 and payload["jobs"] == 1
    assert "--top 2" in payload["provenance"]["command"]


def test_jobs_2_gives_the_same_figures_as_jobs_1(digits_study, one_job, tmp_path):
    folder, _ = one_job
    rc, _, err = certify(digits_study.storage_url, tmp_path, "--jobs", "2")
    assert rc == 0, err
    assert figures(tmp_path / "digits") == figures(folder)
    assert json.loads((tmp_path / "digits" / CERTIFIED_JSON).read_text())["jobs"] == 2
    assert (tmp_path / "digits" / CERTIFIED_MODEL).read_bytes() == (folder / CERTIFIED_MODEL).read_bytes()


# ---------------------------------------------------------------------------- errors


def test_a_missing_study_is_one_line(digits_study, tmp_path, capsys):
    rc = main(["--storage", digits_study.storage_url, "--study-name", "nope", "--results-dir",
               str(tmp_path), "--device", "cpu"])  # fmt: skip
    one_line_error(capsys, rc, "no study named 'nope'", "known studies: digits")
    assert not any(tmp_path.iterdir())


def test_a_study_without_complete_trials_is_one_line(digits_study, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'pruned.db'}"
    study = optuna.create_study(storage=url, study_name="pruned", direction="maximize")
    for key, value in digits_study.load().user_attrs.items():
        study.set_user_attr(key, value)
    for t in digits_study.load().get_trials():
        if t.state == TrialState.PRUNED:
            study.add_trial(t)
    rc = main(["--storage", url, "--results-dir", str(tmp_path / "r"), "--device", "cpu"])
    one_line_error(capsys, rc, "'pruned' has no finished (COMPLETE) trial", "pruned")
    assert not (tmp_path / "r").exists()


def test_a_missing_storage_file_is_one_line_and_is_not_created(tmp_path, capsys):
    rc = main(["--storage", f"sqlite:///{tmp_path / 'none.db'}", "--device", "cpu"])
    one_line_error(capsys, rc, "does not exist")
    assert not (tmp_path / "none.db").exists()


@pytest.mark.parametrize("flag", ["--top", "--seeds", "--jobs"])
def test_counts_below_one_are_usage_errors(capsys, flag):
    one_line_error(capsys, main([flag, "0"]), flag, "at least 1")


def test_help_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "search.certify", "--help"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for flag in ("--top", "--seeds", "--jobs", "--storage", "--results-dir", "--device", "--data-dir"):
        assert flag in done.stdout
