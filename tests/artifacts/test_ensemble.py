"""Greedy ensemble selection over a pool's validation outputs, and the model it builds."""

import dataclasses

import numpy as np
import pytest
import torch
from helpers import as_float64

from search.artifacts import ensemble
from search.data.datasets import load_dataset
from search.training.config import TrainConfig
from search.training.fit import fit
from search.training.model import build_mlp
from search.tuning import pool

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


def _log(p):
    return torch.tensor(np.log(p), dtype=torch.float32)


def test_greedy_adds_the_member_that_fixes_the_best_ones_mistakes():
    # Two classes, four rows, all of class 1. A alone: rows 0-2 right (0.9), row 3 wrong (0.4):
    # accuracy 0.75. B alone: only row 3 right. Their mean: 0.685 and 0.665, all four right; no
    # mix of at most 25 picks lands exactly on 0.5, so no row's argmax rests on rounding.
    a = [[0.1, 0.9]] * 3 + [[0.6, 0.4]]
    b = [[0.53, 0.47]] * 3 + [[0.07, 0.93]]
    c = [[0.5, 0.5]] * 4  # uninformative
    outputs = torch.stack([_log(np.array(p)) for p in (a, b, c)])
    y = torch.ones(4, dtype=torch.long)
    counts, score, _ = ensemble.greedy(outputs, y, task="classification", metric="accuracy", target=None)
    assert score == 1.0
    assert counts[0] >= 1 and counts[1] >= 1  # both A and B in the winning prefix
    mixed = (counts[0] * np.array(a) + counts[1] * np.array(b) + counts[2] * np.array(c)) / sum(counts)
    assert (mixed.argmax(1) == 1).all()  # the counts, read as weights, do score 1.0


def test_greedy_stops_at_the_best_prefix_rather_than_the_last_step():
    # One perfect member and one that only hurts: every step after the first adds nothing but loss.
    good = [[0.05, 0.95]] * 4
    bad = [[0.95, 0.05]] * 4
    outputs = torch.stack([_log(np.array(good)), _log(np.array(bad))])
    counts, score, loss = ensemble.greedy(outputs, torch.ones(4, dtype=torch.long), task="classification",
                                          metric="accuracy", target=None)  # fmt: skip
    assert score == 1.0 and counts[1] == 0
    assert loss == pytest.approx(-np.log(0.95), rel=1e-6)  # the prefix of good alone: its own loss


def test_regression_members_average_their_outputs():
    y = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    low = (y - 1.0)[:, None].float()  # every prediction 1 too low
    high = (y + 1.0)[:, None].float()  # 1 too high: the mean of the two is exact
    outputs = torch.stack([low, high])
    counts, score, _ = ensemble.greedy(outputs, y, task="regression", metric="r2", target=None)
    assert counts[0] == counts[1] and score == pytest.approx(1.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three weak digits MLPs (float64, 2 epochs, 8 units) kept in a pool, as the search keeps them."""
    data = as_float64(load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0))
    folder = tmp_path_factory.mktemp("results")
    values = {}
    for seed in (1, 2, 3):
        config = TrainConfig(hidden=(8,), optimizer="adam", lr=0.01, epochs=2, seed=seed, batch_size=64)
        result = fit(config, data)
        values[seed] = result.val_score
        pool.keep(pool.pool_dir(folder), trial_number=seed, value=result.val_score, config=config,
                  model=result.model, data=data, size=3)  # fmt: skip
    return data, folder, values


def test_the_chosen_ensemble_scores_on_validation_what_the_selection_said(trained):
    data, folder, values = trained
    selection, model = ensemble.choose(folder, values, data, max(values.values()))
    assert model is not None, "three weak digits MLPs together beat the best of them"
    assert selection.val_score > max(values.values()) and len(selection.counts) >= 2
    # Independently: each member rebuilt from its kept weights, its softmax in NumPy, averaged
    # with the selection's weights, and the argmax counted against the labels.
    mean = 0
    for n, w in selection.weights.items():
        member = build_mlp(selection.configs[n], in_features=64, n_classes=10).double().eval()
        member.load_state_dict({k: v.double() if v.is_floating_point() else v
                                for k, v in pool.load_weights(pool.pool_dir(folder), n).items()})  # fmt: skip
        with torch.no_grad():
            logits = member(data.x_val).numpy()
        e = np.exp(logits - logits.max(1, keepdims=True))
        mean = mean + w * e / e.sum(1, keepdims=True)
    accuracy = (mean.argmax(1) == data.y_val.numpy()).sum() / len(data.y_val)
    assert accuracy == selection.val_score
    with torch.no_grad():
        np.testing.assert_allclose(model(data.x_val).exp().numpy(), mean, rtol=1e-9, atol=1e-12)


def test_no_ensemble_when_the_selection_does_not_beat_the_best_trial(trained):
    data, folder, values = trained
    selection, model = ensemble.choose(folder, values, data, best_value=1.0)
    assert selection is not None and model is None


def test_an_ensemble_file_loads_back_to_the_same_outputs(trained, tmp_path):
    data, folder, values = trained
    selection, model = ensemble.choose(folder, values, data, max(values.values()))
    path = ensemble.save_selected(tmp_path / "ensemble.pt", selection, model)
    back = ensemble.load(path, in_features=64, n_classes=10).double()
    with torch.no_grad():
        assert torch.equal(back(data.x_val), model(data.x_val))
    raw = torch.load(path, weights_only=True)  # nothing but PyTorch reads it
    assert [m["trial_number"] for m in raw["members"]] == list(selection.weights)


def test_members_of_different_numeric_transforms_are_not_mixed(trained):
    data, folder, values = trained
    entries = pool.candidates(pool.pool_dir(folder), values)
    quantile = dataclasses.replace(entries[0].config, numeric="quantile")
    moved = [dataclasses.replace(entries[0], config=quantile), *entries[1:]]
    selection = ensemble.select(moved, data)
    numerics = {selection.configs[n].numeric for n in selection.counts}
    assert numerics == {selection.numeric}
