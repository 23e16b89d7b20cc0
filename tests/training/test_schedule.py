"""The lr schedule follows its formula step by step, and a stopped fit is a truncated full one."""

import math

import pytest
import torch

from search.data.datasets import load_dataset
from search.training.config import TrainConfig
from search.training.schedule import lr_factor, make_scheduler
from search.training.trainer import fit


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0)


@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [
        ("constant", 0, 1 / 10),  # warm-up: 10 of 100 steps, from lr/10 up
        ("constant", 9, 1.0),
        ("constant", 99, 1.0),
        ("cosine", 10, 1.0),  # the peak, right after warm-up
        ("cosine", 55, 0.5),  # half-way through the 90 decay steps: cos(pi/2)
        ("cosine", 40, 0.5 * (1 + math.cos(math.pi * 30 / 90))),
        ("onecycle", 4, 5 / 10),
        ("onecycle", 55, 0.5),
        ("onecycle", 99, 1 / 90),  # the last step, one step short of zero
    ],
)
def test_lr_factor_matches_each_schedules_formula(schedule, step, expected):
    assert lr_factor(schedule, 0.1, step, 100) == pytest.approx(expected)


def test_no_warmup_starts_at_the_full_lr():
    assert lr_factor("cosine", 0.0, 0, 50) == 1.0
    assert lr_factor("onecycle", 0.0, 25, 50) == pytest.approx(0.5)


def test_scheduler_sets_the_optimizers_lr_at_every_step():
    w = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.2)
    config = TrainConfig(schedule="cosine", warmup=0.25, lr=0.2)
    sched = make_scheduler(opt, config, total_steps=20)
    for step in range(20):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * lr_factor("cosine", 0.25, step, 20))
        opt.step()
        sched.step()


def test_constant_schedule_makes_no_scheduler():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    assert make_scheduler(opt, TrainConfig(), total_steps=10) is None


def test_a_stopped_fit_is_a_truncated_run_of_the_full_budgets_schedule(digits):
    config = TrainConfig(hidden=(32,), optimizer="sgd", lr=0.05, schedule="onecycle", warmup=0.3, epochs=6)
    full = fit(config, digits)
    stopped = fit(config, digits, on_epoch=lambda m: m.epoch == 2)
    short = fit(config.replace(epochs=2), digits)  # a schedule sized for 2 epochs is another curve
    assert stopped.stopped and stopped.epochs_run == 2
    assert [m.train_loss for m in stopped.history] == [m.train_loss for m in full.history[:2]]
    assert [m.train_loss for m in short.history] != [m.train_loss for m in full.history[:2]]


def test_a_schedule_changes_training(digits):
    base = TrainConfig(hidden=(32,), optimizer="sgd", lr=0.05, epochs=3)
    plain, cosine = fit(base, digits), fit(base.replace(schedule="cosine"), digits)
    assert [m.train_loss for m in plain.history] != [m.train_loss for m in cosine.history]
