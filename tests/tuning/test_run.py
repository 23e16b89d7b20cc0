"""Preparing a run: how many trials it adds when the user names none."""

from search.tuning.run import DEFAULT_TRIALS, prepare_run


def _prepare(tmp_path, **kw):
    return prepare_run(study="digits", storage=f"sqlite:///{tmp_path}/s.db", device="cpu",
                       results_dir=tmp_path / "results", **kw)  # fmt: skip


def test_a_timeout_alone_lets_the_clock_end_the_run(tmp_path):
    # `--timeout 600` that stopped at the default trial count would leave most of the budget idle
    assert _prepare(tmp_path, timeout=600).trials > 10**6


def test_without_a_timeout_a_run_adds_the_default_trials_or_those_asked_for(tmp_path):
    assert _prepare(tmp_path).trials == DEFAULT_TRIALS == 100
    assert _prepare(tmp_path, trials=7, timeout=600).trials == 7
