"""Shared fixtures: one small, real digits study, searched once per test session.

    def test_something(digits_study):            # read-only: do not add trials or attrs
        optuna.load_study(study_name=digits_study.study_name, storage=digits_study.storage_url)

    def test_that_writes(digits_study_copy):     # a private copy (database and results dir)
        ...

The study is what `python -m search.run --study digits --epochs 10 --trials 10` makes: real
training, the median pruner (some trials end early), every user attr the objective records.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import pytest
import torch

from search.device import PRECISION_ENV

# float32 unless asked otherwise: tests compare engines row for row, and whether `auto` picks bf16
# depends on the CPU. tests/test_device.py and the bf16 tests set it where they check bf16.
os.environ.setdefault(PRECISION_ENV, "fp32")

from search.tuning.runner import RunOptions, run_search
from search.tuning.study_file import load_study

DIGITS_EPOCHS = 10  # the median pruner waits 2 epochs (epochs // 5): pruned curves are visibly cut
DIGITS_TRIALS = 10


@dataclass(frozen=True)
class DigitsStudy:
    storage_url: str  # sqlite:///<tmp>/search.db
    db_path: Path
    study_name: str
    results_dir: Path  # holds <study>/best_model.pt and best_model.json
    epochs: int
    trials: int

    def load(self) -> optuna.Study:
        return optuna.load_study(study_name=self.study_name, storage=self.storage_url)


def _make_digits_study(root: Path) -> DigitsStudy:
    db = root / "search.db"
    study = DigitsStudy(
        storage_url=f"sqlite:///{db}", db_path=db, study_name="digits", results_dir=root / "results",
        epochs=DIGITS_EPOCHS, trials=DIGITS_TRIALS,
    )  # fmt: skip
    opts = RunOptions(
        spec=load_study("digits").with_overrides(epochs=DIGITS_EPOCHS),
        storage_url=study.storage_url,
        study_name=study.study_name,
        trials=DIGITS_TRIALS,
        device="cpu",
        results_dir=study.results_dir,
        heartbeat_s=None,
    )
    # One thread: tiny MLPs train several times faster than with torch's per-core pool, above
    # all on a shared CI machine where the other cores are busy.
    threads, verbosity = torch.get_num_threads(), optuna.logging.get_verbosity()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        summary = run_search(opts)
    finally:
        torch.set_num_threads(threads)
        optuna.logging.set_verbosity(verbosity)
    assert summary.error is None, summary.error
    assert summary.states.get("COMPLETE", 0) >= 2, summary.states
    return study


@pytest.fixture(scope="session")
def digits_study(tmp_path_factory) -> DigitsStudy:
    """A real digits study (10 trials, 10 epochs, some pruned), made once per session. Read-only."""
    return _make_digits_study(tmp_path_factory.mktemp("digits_study"))


@pytest.fixture
def digits_study_copy(digits_study, tmp_path) -> DigitsStudy:
    """A private copy of `digits_study` (database and results dir) that a test may change."""
    db = tmp_path / "search.db"
    # SQLite's backup API, not a file copy: the study's database is in WAL mode, and recent
    # writes may still sit in the -wal file beside it.
    with closing(sqlite3.connect(digits_study.db_path)) as src, closing(sqlite3.connect(db)) as dst:
        src.backup(dst)
    results = tmp_path / "results"
    shutil.copytree(digits_study.results_dir, results)
    return replace(digits_study, storage_url=f"sqlite:///{db}", db_path=db, results_dir=results)


@pytest.fixture(scope="module")
def one_torch_thread_per_module():
    """One torch thread for a whole module (as `digits_study` was searched), restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
