"""fit() trains from plain values, reports every epoch, stops on request, and survives divergence."""

import dataclasses
import math
import time

import pytest
import torch

from search.data.datasets import load_dataset
from search.training.config import TrainConfig
from search.training.trainer import evaluate, fit


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0)


def test_fit_learns_digits(digits):
    result = fit(TrainConfig(hidden=(64,), optimizer="adam", lr=3e-3, epochs=8), digits)
    assert result.epochs_run == 8 and not result.stopped and result.diverged is None
    assert result.val_acc > 0.9
    assert result.history[-1].val_acc == pytest.approx(evaluate(result.model, digits.x_val, digits.y_val)[1])


def test_same_seed_trains_the_same_model_on_cpu(digits):
    config = TrainConfig(hidden=(32,), dropout=0.2, epochs=2, seed=3)
    a, b = fit(config, digits), fit(config, digits)
    assert [m.val_acc for m in a.history] == [m.val_acc for m in b.history]
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_on_epoch_sees_every_epoch_and_can_stop_training(digits):
    seen = []

    def on_epoch(m):
        seen.append(m.epoch)
        return m.epoch == 2

    result = fit(TrainConfig(hidden=(16,), epochs=5), digits, on_epoch=on_epoch)
    assert seen == [1, 2] and result.stopped and result.epochs_run == 2


def test_nan_loss_ends_training_with_a_reason_instead_of_raising(digits):
    poisoned = digits.x_train.clone()
    poisoned[5] = float("inf")
    result = fit(TrainConfig(hidden=(32,), epochs=4), dataclasses.replace(digits, x_train=poisoned))
    assert result.epochs_run == 0
    assert result.diverged is not None and "became" in result.diverged
    assert not math.isfinite(float(result.diverged.split("became ")[1].split()[0]))


def test_l1_term_is_part_of_the_reported_training_loss(digits):
    base = TrainConfig(hidden=(16,), epochs=1, lr=1e-9)
    plain = fit(base, digits).history[0].train_loss
    with_l1 = fit(base.replace(l1=1e-2), digits).history[0].train_loss
    assert with_l1 > plain + 0.05  # 1e-2 * sum|W| over ~1,200 weights is far above noise


def test_train_seconds_exclude_time_spent_in_the_callback(digits):
    started = time.perf_counter()
    result = fit(TrainConfig(hidden=(16,), epochs=2), digits, on_epoch=lambda m: time.sleep(0.3))
    wall = time.perf_counter() - started
    assert result.train_seconds <= wall - 0.6 + 0.05


def test_full_training_uses_train_and_validation(digits):
    seen_sizes = []
    orig = torch.randperm

    def spy(n, *args, **kwargs):
        seen_sizes.append(n)
        return orig(n, *args, **kwargs)

    torch.randperm = spy
    try:
        fit(TrainConfig(hidden=(8,), epochs=1), digits, include_val=True)
    finally:
        torch.randperm = orig
    assert seen_sizes == [len(digits.x_train) + len(digits.x_val)]
