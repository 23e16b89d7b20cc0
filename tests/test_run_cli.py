"""End to end: `python -m search.run` searches, resumes, and says where to look next."""

import subprocess
import sys

import optuna
from helpers import run_args
from optuna.trial import TrialState

from search.run import main


def _args(tmp_path, *extra):
    return run_args(tmp_path, *extra, epochs="3")


def test_search_runs_then_the_same_command_resumes_the_same_study(tmp_path, capsys):
    assert main(_args(tmp_path, "--trials", "4")) == 0
    out = capsys.readouterr().out
    assert "this run finished 4 trial(s)" in out
    assert f"dashboard: optuna-dashboard sqlite:///{tmp_path}/s.db" in out
    assert "search overhead:" in out
    assert main(_args(tmp_path, "--trials", "3")) == 0
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{tmp_path}/s.db")
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 7 and len(study.trials) == 7
    assert study.user_attrs["dataset"] == "digits" and study.user_attrs["epochs"] == 3
    assert (tmp_path / "results" / "digits" / "best_model.pt").is_file()


def test_resuming_with_a_different_epoch_budget_is_refused(tmp_path, capsys):
    assert main(_args(tmp_path, "--trials", "1")) == 0
    args = _args(tmp_path, "--trials", "1")
    args[args.index("--epochs") + 1] = "4"
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "different epochs" in err and "--study-name" in err and "\n" not in err


def test_help_shows_every_option_with_its_default():
    out = subprocess.run(
        [sys.executable, "-m", "search.run", "--help"], capture_output=True, text=True, check=True
    ).stdout
    out = " ".join(out.split())  # argparse wraps lines to the terminal width
    for flag in (
        "--study",
        "--trials",
        "--timeout",
        "--storage",
        "--study-name",
        "--data-dir",
        "--epochs",
        "--device",
        "--seed",
        "--dataset",
        "--sampler",
        "--pruner",
        "--jobs",
    ):
        assert flag in out
    assert "default: sqlite:///results/search.db" in out and "default: cifar10" in out
