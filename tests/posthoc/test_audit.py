"""search.posthoc.audit: pruned trials re-run to the full budget, the false-prune counts, and an
original study that the audit never touches."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
from contextlib import closing

import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.data.datasets import load_dataset
from search.errors import UserError
from search.posthoc import audit as audit_mod
from search.posthoc.audit import (
    AUDIT_JSON,
    audit_study,
    audit_study_name,
    choose_pruned,
    top_threshold,
)
from search.training.fit import fit
from search.tuning.finished import open_finished
from search.tuning.space import parse_space, replay_config

CPU = torch.device("cpu")
# Optuna's tables that hold a study's rows, and the column that ties each to it.
STUDY_TABLES = ("studies", "study_directions", "study_user_attributes", "study_system_attributes")
TRIAL_TABLES = ("trial_params", "trial_values", "trial_intermediate_values", "trial_user_attributes",
                "trial_system_attributes", "trial_heartbeats")  # fmt: skip


# The thread count the shared study was searched with: the same float sums.
pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


def study_rows(db, name: str) -> dict[str, list]:
    """Every row of every Optuna table that belongs to study `name`, read with sqlite3."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        (study_id,) = conn.execute("SELECT study_id FROM studies WHERE study_name = ?", (name,)).fetchone()
        rows = {t: sorted(conn.execute(f"SELECT * FROM {t} WHERE study_id = ?", (study_id,)).fetchall())
                for t in STUDY_TABLES}  # fmt: skip
        rows["trials"] = sorted(
            conn.execute("SELECT * FROM trials WHERE study_id = ?", (study_id,)).fetchall()
        )
        ids = [r[0] for r in rows["trials"]]
        marks = ",".join("?" * len(ids))
        for t in TRIAL_TABLES:
            rows[t] = sorted(conn.execute(f"SELECT * FROM {t} WHERE trial_id IN ({marks})", ids).fetchall())
    return rows


@pytest.fixture(scope="module")
def audited(digits_study, tmp_path_factory):
    """A private copy of the shared study, its rows before the audit, and the audit itself."""
    root = tmp_path_factory.mktemp("audited")
    db = root / "search.db"
    with closing(sqlite3.connect(digits_study.db_path)) as src, closing(sqlite3.connect(db)) as dst:
        src.backup(dst)
    shutil.copytree(digits_study.results_dir, root / "results")
    url = f"sqlite:///{db}"
    before = study_rows(db, "digits"), optuna.load_study(study_name="digits", storage=url).get_trials()
    done = audit_study(storage_url=url, study_name=None, n=10, results_dir=root / "results", device=CPU)
    payload = json.loads((root / "results" / "digits" / AUDIT_JSON).read_text())
    return url, db, before, done, payload


def original_trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="digits", storage=url).get_trials()


# ---------------------------------------------------------------------------- choosing and counting


def _trial(number: int, state: TrialState, *, reason: str | None = None, steps: int = 2):
    t = create_trial(
        state=state,
        value=0.5 if state == TrialState.COMPLETE else None,
        params={"lr": 0.01},
        distributions={"lr": FloatDistribution(1e-4, 1.0, log=True)},
        intermediate_values={e: 0.1 * e for e in range(1, steps + 1)},
        user_attrs={"reason": reason} if reason else {},
    )
    t.number = number
    return t


def test_the_choice_is_a_fixed_seed_sample_of_the_trials_the_pruner_stopped():
    trials = [_trial(i, TrialState.PRUNED) for i in range(20)]
    trials += [_trial(20, TrialState.COMPLETE), _trial(21, TrialState.FAIL)]
    trials.append(_trial(22, TrialState.PRUNED, reason="training loss became nan in epoch 3"))
    trials.append(_trial(23, TrialState.PRUNED, steps=0))  # pruned before it reported: nothing to audit
    five = choose_pruned(trials, 5, seed=0)
    assert [t.number for t in five] == [t.number for t in choose_pruned(list(reversed(trials)), 5, seed=0)]
    assert len({t.number for t in five}) == 5 and all(t.number < 20 for t in five)
    assert [t.number for t in five] == sorted(t.number for t in five)
    assert {t.number for t in five} <= {t.number for t in choose_pruned(trials, 8, seed=0)}  # nested
    assert {t.number for t in five} != {t.number for t in choose_pruned(trials, 5, seed=1)}
    assert [t.number for t in choose_pruned(trials, 100, seed=0)] == list(range(20))


def test_the_top_ten_percent_threshold_is_the_lowest_of_the_best_tenth():
    assert top_threshold([float(v) for v in range(1, 21)]) == 19.0  # the best 2 of 20: 20 and 19
    assert top_threshold([0.3, 0.9, 0.5]) == 0.9  # at least one: the best
    assert top_threshold([float(v) for v in range(1, 12)]) == 10.0  # ceil(1.1) = 2 of 11


# ---------------------------------------------------------------------------- a real audit


def test_the_audit_leaves_the_original_study_untouched(audited):
    url, db, (rows, trials), _, _ = audited
    assert study_rows(db, "digits") == rows  # every row, at the SQL level
    assert original_trials(url) == trials


def test_the_audit_study_holds_one_trial_per_audited_config_with_every_epoch(audited):
    url, _, _, done, payload = audited
    original = {t.number: t for t in original_trials(url)}
    epochs = payload["epochs"]
    stopped = [
        t for t in original.values() if str(t.user_attrs.get("reason")).startswith("pruned after epoch")
    ]
    assert payload["n_audited"] == len(done.trials) == len(stopped) > 0  # n = 10: all of the study's
    audit = optuna.load_study(study_name=audit_study_name("digits"), storage=url)
    assert audit.user_attrs["audit_of"] == "digits"
    records = audit.get_trials()
    assert sorted(r.user_attrs["audited_trial"] for r in records) == [
        r["trial_number"] for r in payload["trials"]
    ]
    for r in records:
        t = original[r.user_attrs["audited_trial"]]
        assert t.state == TrialState.PRUNED and r.state == TrialState.COMPLETE
        assert r.params == t.params
        assert sorted(r.intermediate_values) == list(range(1, epochs + 1))
        assert r.user_attrs["pruned_at_epoch"] == max(t.intermediate_values) < epochs
        assert r.value == r.intermediate_values[epochs]


def test_audited_values_equal_a_direct_fit_with_the_trials_own_params_and_seed(audited):
    url, _, _, _, payload = audited
    study = optuna.load_study(study_name="digits", storage=url)
    original = {t.number: t for t in study.get_trials()}
    space = parse_space(study.user_attrs["space"], where="test")
    data = load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0)
    for row in payload["trials"]:
        t = original[row["trial_number"]]
        assert row["seed"] == t.user_attrs["seed"]
        config = replay_config(t.params, space, epochs=payload["epochs"], seed=t.user_attrs["seed"])
        history = fit(config, data).history
        assert row["curve"] == [m.val_score for m in history]
        assert row["audited_value"] == history[-1].val_score
        # on the CPU, its first epochs are the search's own
        at = row["pruned_at_epoch"]
        assert row["curve"][:at] == [t.intermediate_values[e] for e in range(1, at + 1)]
        assert row["reproduced_prefix"] is True and row["value_at_prune"] == t.intermediate_values[at]


def test_the_false_prune_counts_equal_a_direct_computation(audited):
    url, _, _, _, payload = audited
    complete = np.array([t.value for t in original_trials(url) if t.state == TrialState.COMPLETE])
    audited_values = [r["audited_value"] for r in payload["trials"]]
    median = float(np.median(complete))
    k = math.ceil(0.1 * len(complete))
    threshold = float(np.sort(complete)[::-1][k - 1])
    assert payload["completed"]["median"] == median and payload["completed"]["top10_threshold"] == threshold
    assert payload["above_median"] == sum(v > median for v in audited_values)
    assert payload["in_top10"] == sum(v >= threshold for v in audited_values)
    assert [r["above_median"] for r in payload["trials"]] == [v > median for v in audited_values]
    n = len(audited_values)
    assert payload["false_prune_rate_median"] == payload["above_median"] / n
    assert payload["false_prune_rate_top10"] == payload["in_top10"] / n
    assert payload["regret"] == max(audited_values) - complete.max()
    assert payload["completed"]["best_value"] == complete.max()
    assert payload["provenance"]["command"].startswith("python -m search.audit")


def test_auditing_again_reads_back_instead_of_retraining(audited, monkeypatch):
    url, db, (rows, _), _, payload = audited
    n_before = len(optuna.load_study(study_name=audit_study_name("digits"), storage=url).get_trials())

    def no_fit(*args, **kwargs):
        raise AssertionError("retrained a config the audit study already holds")

    monkeypatch.setattr(audit_mod, "fit", no_fit)
    results = db.parent / "results"
    again = audit_study(storage_url=url, study_name="digits", n=10, results_dir=results, device=CPU)
    assert again.payload["n_reused"] == payload["n_audited"]
    assert [r["audited_value"] for r in again.payload["trials"]] == [
        r["audited_value"] for r in payload["trials"]
    ]
    assert len(optuna.load_study(study_name=audit_study_name("digits"), storage=url).get_trials()) == n_before
    assert study_rows(db, "digits") == rows


def test_without_a_name_the_audit_study_is_not_a_candidate_and_by_name_it_is_refused(audited):
    url, *_ = audited
    assert open_finished(url, None, searched=True).name == "digits"
    with pytest.raises(UserError, match="is the pruning audit of study 'digits'"):
        open_finished(url, audit_study_name("digits"), searched=True)
