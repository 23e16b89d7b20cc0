"""--quality runs TPE with pruning and random without, for the same wall time, and scores them."""

import math

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.data.datasets import load_dataset
from search.perf.quality import best_at, plot_quality, run_quality, shortened
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
        finals = result[arm]["final_best"]
        assert result[arm]["final_best_mean"] == pytest.approx(sum(finals) / len(finals))
    assert result["tpe_ahead"] == (result["tpe"]["final_best_mean"] > result["random"]["final_best_mean"])


def test_random_arm_never_prunes_and_the_tpe_arm_uses_the_studys_pruner(result):
    assert all(t["state"] != TrialState.PRUNED.name for r in result["random"]["runs"] for t in r["trials"])
    assert any(t["state"] == TrialState.PRUNED.name for r in result["tpe"]["runs"] for t in r["trials"])


def test_best_so_far_curves_only_rise(result):
    for arm in ("tpe", "random"):
        for run in result[arm]["runs"]:
            values = [v for _, v in run["best_so_far"]]
            assert values == sorted(values) and len(set(values)) == len(values)
        mean = [v for v in result[arm]["mean_best_so_far"] if v is not None]
        assert all(b >= a - 1e-12 for a, b in zip(mean, mean[1:], strict=False))


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
    cifar = load_study("cifar10")  # its first rung: epoch 4 of 12, a third of the way in
    assert (cifar.epochs, cifar.min_epochs) == (12, 4)
    assert shortened(cifar, 6).min_epochs == 2
    assert shortened(cifar, 6).epochs == 6
    assert shortened(cifar, 2).min_epochs == 1  # never before the first epoch
    assert shortened(cifar, 12).min_epochs == 4
    digits = load_study("digits")
    assert shortened(digits, 4).min_epochs == digits.min_epochs  # 0: the pruner's own default
