"""A fit resumed from the state after epoch k trains exactly the epochs an uninterrupted fit trains,
alone or stacked; a member's state resumes in any stack, whatever its neighbours' widths."""

import math

import pytest
import torch
from helpers import as_float64

from search.data.datasets import load_dataset
from search.training.config import TrainConfig
from search.training.fit import fit, fit_stacked
from search.training.state import load_state, save_state

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0)


CONFIGS = {
    "sgd, dropout, batchnorm": TrainConfig(hidden=(32, 16), dropout=0.3, optimizer="sgd", lr=0.05, epochs=5),
    "residual blocks, dropout": TrainConfig(
        hidden=(16, 16, 16), residual=True, expansion=2, dropout=0.2, optimizer="adam", lr=3e-3, epochs=4
    ),
    "layernorm, dropout": TrainConfig(
        hidden=(32, 16), batchnorm=False, layernorm=True, dropout=0.2, optimizer="sgd", lr=0.05, epochs=4
    ),
    "ensemble, batchnorm, dropout, feature scale": TrainConfig(
        hidden=(16, 16), ensemble_k=4, dropout=0.2, feature_scale=True, optimizer="adam", lr=3e-3, epochs=4
    ),
    "ensemble, residual blocks, layernorm, zca": TrainConfig(
        hidden=(16, 16),
        residual=True,
        expansion=2,
        batchnorm=False,
        layernorm=True,
        ensemble_k=3,
        whiten="zca",
        optimizer="sgd",
        lr=0.05,
        ema=0.9,
        epochs=4,
    ),  # fmt: skip
    "adam, weight average, mixing": TrainConfig(
        hidden=(32,), optimizer="adam", lr=3e-3, ema=0.9, mixup=0.4, cutmix=1.0, epochs=4, seed=3
    ),
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


def assert_same_model(a, b):
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka


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
    assert [m.val_score for m in resumed.history] == [m.val_score for m in whole.history]
    assert_same_model(whole.model, resumed.model)


@pytest.mark.parametrize("ensemble", [False, True], ids=["plain", "ensembles"])
def test_a_resumed_stack_equals_the_uninterrupted_one(digits, tmp_path, ensemble):
    configs = [
        TrainConfig(hidden=(32, 16), dropout=0.3, epochs=4, seed=1),
        TrainConfig(hidden=(8, 24), optimizer="adam", lr=3e-3, hflip=True, epochs=4, seed=2),
        TrainConfig(hidden=(16, 16), batchnorm=False, momentum=0.5, schedule="cosine", epochs=4, seed=3),
    ]
    if ensemble:  # one stack shares k, and each member keeps its own sub-members and scale
        configs = [c.replace(ensemble_k=4, feature_scale=i > 0) for i, c in enumerate(configs)]
    whole = fit_stacked(configs, digits)
    states: dict[int, list] = {0: [], 1: [], 2: []}
    fit_stacked(configs, digits, on_state=lambda i, s: states[i].append(s))
    saved = [load_state(save_state(tmp_path / f"{i}.pt", states[i][1])) for i in range(3)]
    resumed = fit_stacked(configs, digits, resume=saved)
    for a, b in zip(whole, resumed, strict=True):
        assert [m.train_loss for m in a.history] == [m.train_loss for m in b.history]
        assert_same_model(a.model, b.model)


def test_a_stacked_members_state_resumes_alone_as_it_would_have_gone_on_in_the_stack(digits):
    """The state is the member's own, unpadded: resumed alone it trains its last epochs as the
    stack trained them (in float64, to the stack test's tolerance)."""
    data = as_float64(digits)
    configs = [TrainConfig(hidden=(8, 40), epochs=4, seed=1, optimizer="adam", lr=3e-3, dropout=0.2),
               TrainConfig(hidden=(32, 24), epochs=4, seed=2)]  # fmt: skip
    configs += [c.replace(ensemble_k=3, feature_scale=True, seed=c.seed + 2) for c in configs]
    states: dict[int, list] = {0: [], 1: []}
    stacked = [*fit_stacked(configs[:2], data, on_state=lambda i, s: states[i].append(s))]
    states.update({2: [], 3: []})
    stacked += fit_stacked(configs[2:], data, on_state=lambda i, s: states[i + 2].append(s))
    for i in (0, 2):  # a narrow first layer in a wide stack: plain, and an ensemble with a scale
        alone = fit(configs[i], data, resume=states[i][1])
        for a, s in zip(alone.history, stacked[i].history, strict=True):
            assert math.isclose(a.train_loss, s.train_loss, rel_tol=1e-9)


def test_a_state_resumes_only_its_own_config(digits):
    config = TrainConfig(hidden=(8,), epochs=3)
    states = []
    fit(config, digits, on_state=states.append)
    with pytest.raises(ValueError, match="another config"):
        fit(config.replace(lr=0.5), digits, resume=states[0])


def test_stacked_members_must_resume_from_the_same_epoch(digits):
    configs = [TrainConfig(hidden=(8,), epochs=4, seed=s) for s in (1, 2)]
    states: dict[int, list] = {0: [], 1: []}
    fit_stacked(configs, digits, on_state=lambda i, s: states[i].append(s))
    with pytest.raises(ValueError, match="same epoch"):
        fit_stacked(configs, digits, resume=[states[0][0], states[1][1]])


def test_a_missing_state_file_is_none(tmp_path):
    assert load_state(tmp_path / "nope.pt") is None
