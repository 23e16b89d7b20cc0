"""A fit resumed from the state after epoch k trains exactly the epochs an uninterrupted fit trains."""

import pytest
import torch

from search.data.datasets import load_dataset
from search.training.config import TrainConfig
from search.training.resume import load_state, save_state
from search.training.trainer import fit


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0)


CONFIGS = {
    "sgd, dropout, batchnorm": TrainConfig(hidden=(32, 16), dropout=0.3, optimizer="sgd", lr=0.05, epochs=5),
    "adamw, one-cycle, smoothing": TrainConfig(
        hidden=(24,),
        optimizer="adamw",
        lr=3e-3,
        schedule="onecycle",
        warmup=0.2,
        label_smoothing=0.1,
        epochs=5,
        seed=4,
    ),  # fmt: skip
    "rmsprop, flips, shifts, zca": TrainConfig(
        hidden=(16,),
        optimizer="rmsprop",
        lr=1e-3,
        hflip=True,
        translate=1,
        whiten="zca",
        l1=1e-5,
        epochs=4,
        seed=2,
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_resumed_fit_equals_the_uninterrupted_one(digits, name, tmp_path):
    config = CONFIGS[name]
    whole = fit(config, digits)
    states = []
    fit(config, digits, on_state=states.append, on_epoch=lambda m: m.epoch == 2)  # stopped after 2
    assert [s.epoch for s in states] == [1]  # a stop ends the fit: no state after the epoch it stopped
    states = []
    fit(config, digits, on_state=states.append)
    assert [s.epoch for s in states] == list(range(1, config.epochs))  # none after the last
    path = save_state(tmp_path / "state.pt", states[1])  # through the file, as a crash would
    resumed = fit(config, digits, resume=load_state(path))
    assert [m.train_loss for m in resumed.history] == [m.train_loss for m in whole.history]
    assert [m.val_acc for m in resumed.history] == [m.val_acc for m in whole.history]
    for (ka, va), (kb, vb) in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)


def test_a_state_resumes_only_its_own_config(digits):
    config = TrainConfig(hidden=(8,), epochs=3)
    states = []
    fit(config, digits, on_state=states.append)
    with pytest.raises(ValueError, match="another config"):
        fit(config.replace(lr=0.5), digits, resume=states[0])


def test_a_missing_state_file_is_none(tmp_path):
    assert load_state(tmp_path / "nope.pt") is None
