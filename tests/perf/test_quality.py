"""--quality runs TPE with pruning and random without, for the same wall time, and scores them.

The curves and their means are checked on hand-made runs; a short real search of each arm checks
what the runs record. No speed is asserted."""

import math
from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.data.datasets import load_dataset
from search.perf import quality
from search.perf.quality import best_at, best_so_far, format_quality, plot_quality, run_quality, shortened
from search.tuning.study_file import load_study

BUDGET = 6.0


@pytest.fixture(scope="module")
def result():
    data = load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0)
    spec = load_study("digits").with_overrides(epochs=4)
    threads, verbosity = torch.get_num_threads(), optuna.logging.get_verbosity()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and a busy machine stays fair
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return run_quality(spec, data, budget_s=BUDGET, seeds=(0, 1))
    finally:
        torch.set_num_threads(threads)
        optuna.logging.set_verbosity(verbosity)


def test_each_arms_final_best_is_its_best_trial_that_ended_within_the_budget(result):
    for arm in ("tpe", "random"):
        for run in result[arm]["runs"]:
            complete = [
                t["value"] for t in run["trials"] if t["state"] == "COMPLETE" and t["end_s"] <= BUDGET
            ]
            assert run["final_best"] == max(complete)
            assert run["trials_in_budget"] == sum(t["end_s"] <= BUDGET for t in run["trials"])


def test_random_arm_never_prunes_and_the_tpe_arm_uses_the_studys_pruner(result):
    # The one random trial running when the budget ends is stopped there: no pruner stopped it.
    assert all(
        t["state"] != TrialState.PRUNED.name or t["end_s"] >= BUDGET
        for r in result["random"]["runs"]
        for t in r["trials"]
    )
    assert any(t["state"] == TrialState.PRUNED.name for r in result["tpe"]["runs"] for t in r["trials"])


def test_best_so_far_curves_only_rise(result):
    for arm in ("tpe", "random"):
        for run in result[arm]["runs"]:
            values = [v for _, v in run["best_so_far"]]
            assert values == sorted(values) and len(set(values)) == len(values)
        mean = [v for v in result[arm]["mean_best_so_far"] if v is not None]
        assert all(b >= a - 1e-12 for a, b in zip(mean, mean[1:], strict=False))


def test_the_best_so_far_curve_steps_up_at_each_completed_improvement_within_the_budget():
    ended = [
        (1.0, "COMPLETE", 0.5),
        (2.0, "PRUNED", None),
        (2.5, "COMPLETE", 0.4),  # worse: no step
        (3.0, "FAIL", None),
        (4.0, "COMPLETE", 0.7),
        (4.5, "COMPLETE", 0.7),  # only as good: no step
        (6.5, "COMPLETE", 0.99),  # ended after the budget: does not count
    ]
    assert best_so_far(ended, 6.0) == [(1.0, 0.5), (4.0, 0.7)]
    assert best_so_far(ended, 7.0) == [(1.0, 0.5), (4.0, 0.7), (6.5, 0.99)]
    assert best_so_far(ended, 0.5) == [] and best_so_far([], 6.0) == []


def _fake_run(seed, curve):
    return {"seed": seed, "trials": [], "trials_in_budget": len(curve), "pruned_in_budget": 0,
            "best_so_far": curve, "final_best": curve[-1][1] if curve else None}  # fmt: skip


SPEC = SimpleNamespace(name="s", dataset="digits", epochs=4, pruner="median", min_epochs=1)
DATA = SimpleNamespace(device=torch.device("cpu"), x_train=torch.zeros(30, 2), x_val=torch.zeros(10, 2))


def test_the_arms_alternate_by_seed_and_their_mean_curves_wait_for_every_seed(monkeypatch):
    curves = {
        ("tpe", 0): [(1.0, 0.5), (4.0, 0.7)],
        ("tpe", 1): [(2.0, 0.6)],
        ("random", 0): [(3.0, 0.4)],
        ("random", 1): [(0.5, 0.3), (8.0, 0.8)],
    }
    calls = []

    def search_curve(arm, spec, data, *, seed, budget_s):
        calls.append((arm, seed, budget_s))
        return _fake_run(seed, curves[arm, seed])

    monkeypatch.setattr(quality, "search_curve", search_curve)
    r = run_quality(SPEC, DATA, budget_s=10.0, seeds=(0, 1))
    assert sorted(calls) == [("random", 0, 10.0), ("random", 1, 10.0), ("tpe", 0, 10.0), ("tpe", 1, 10.0)]
    assert {calls[0][0], calls[2][0]} == {"tpe", "random"}  # each arm goes first for one seed
    assert r["grid_s"][0] == 0 and r["grid_s"][-1] == 10.0 and len(r["grid_s"]) == 101
    tpe, rnd = r["tpe"]["mean_best_so_far"], r["random"]["mean_best_so_far"]
    at = {t: i for i, t in enumerate(r["grid_s"])}  # grid index of a time, 0.1 s apart
    assert tpe[at[0.5]] is None and tpe[at[1.0]] is None  # seed 1 has nothing yet
    assert tpe[at[2.0]] == pytest.approx(0.55) and tpe[at[4.0]] == pytest.approx(0.65)
    assert tpe[at[10.0]] == pytest.approx(0.65)
    assert rnd[at[0.5]] is None and rnd[at[3.0]] == pytest.approx(0.35) and rnd[at[8.0]] == pytest.approx(0.6)
    assert r["tpe"]["final_best"] == [0.7, 0.6] and r["random"]["final_best"] == [0.4, 0.8]
    assert r["tpe"]["final_best_mean"] == pytest.approx(0.65)
    assert r["random"]["final_best_mean"] == pytest.approx(0.6)
    assert r["tpe"]["trials_mean"] == 1.5 and r["tpe_ahead"] is True


def test_an_arm_with_a_seed_that_found_nothing_has_no_mean_and_is_not_behind(monkeypatch):
    curves = {("tpe", 0): [(1.0, 0.5)], ("random", 0): []}
    monkeypatch.setattr(
        quality, "search_curve", lambda arm, spec, data, *, seed, budget_s: _fake_run(seed, curves[arm, seed])
    )
    r = run_quality(SPEC, DATA, budget_s=10.0, seeds=(0,))
    assert r["random"]["final_best"] == [None] and r["random"]["final_best_mean"] is None
    assert all(v is None for v in r["random"]["mean_best_so_far"])
    assert r["tpe"]["final_best_mean"] == 0.5 and r["tpe_ahead"] is False  # no figure to be ahead of
    assert "random  final best mean -  (-)" in format_quality(r)


def test_best_at_reads_a_step_curve():
    curve = [(1.0, 0.5), (3.0, 0.7)]
    assert best_at(curve, 0.5) is None and best_at(curve, 1.0) == 0.5 and best_at(curve, 2.9) == 0.5
    assert best_at(curve, 10) == 0.7


def test_the_plot_is_a_png(result, tmp_path):
    path = plot_quality(result, tmp_path / "q.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not math.isnan(result["tpe"]["trials_mean"])


def test_the_training_subset_is_drawn_at_random_not_the_first_rows():
    from search.perf.quality import random_subset

    data = load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0)
    by_class = data.y_train.argsort()  # rows class by class, as an image tree holds them
    ordered = type(data)(
        **{**data.__dict__, "x_train": data.x_train[by_class], "y_train": data.y_train[by_class]}
    )
    sub = random_subset(ordered, 200)
    assert len(sub.y_train) == 200 and len(set(sub.y_train.tolist())) == 10  # the first 200 hold 2 classes
    assert torch.equal(sub.y_train, random_subset(ordered, 200).y_train) and sub.x_val is ordered.x_val
    assert random_subset(ordered, None) is ordered


def test_a_shorter_budget_keeps_the_first_rung_at_its_share_of_the_epochs():
    cifar = load_study("cifar10")  # its first rung: epoch 4 of 24, a sixth of the way in
    assert (cifar.epochs, cifar.min_epochs) == (24, 4)
    assert shortened(cifar, 12).min_epochs == 2
    assert shortened(cifar, 12).epochs == 12
    assert shortened(cifar, 3).min_epochs == 1  # never before the first epoch
    assert shortened(cifar, 24).min_epochs == 4
    assert shortened(cifar, 18).min_epochs == 3  # 4 * 18 / 24
    assert shortened(cifar, 15).min_epochs == 2  # 4 * 15 / 24 = 2.5, rounded to even
    assert shortened(cifar, 48).min_epochs == 8  # a longer budget moves the rung out as well
    digits = load_study("digits")
    assert shortened(digits, 4).min_epochs == digits.min_epochs  # 0: the pruner's own default
