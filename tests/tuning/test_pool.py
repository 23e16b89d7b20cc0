"""The ensemble pool keeps every completed trial's validation outputs and the best `size` trials'
half-precision weights, and nothing beyond that bound."""

import json

import numpy as np
import pytest
import torch

from search.data.datasets import load_dataset
from search.training.config import TrainConfig
from search.training.model import build_mlp
from search.tuning import pool


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0)


def _model(digits, seed: int):
    torch.manual_seed(seed)
    config = TrainConfig(hidden=(12,), seed=seed)
    return config, build_mlp(config, in_features=digits.in_features, n_classes=digits.n_classes).eval()


def _keep(folder, digits, n: int, value: float, size: int) -> bool:
    config, model = _model(digits, n)
    return pool.keep(folder, trial_number=n, value=value, config=config, model=model, data=digits, size=size)


def test_only_the_best_size_trials_keep_weights_and_every_trial_keeps_outputs(tmp_path, digits):
    values = {0: 0.5, 1: 0.9, 2: 0.7, 3: 0.4, 4: 0.8}
    kept = [_keep(tmp_path, digits, n, v, size=3) for n, v in values.items()]
    assert kept == [True, True, True, False, True]  # trial 3 is worse than the three kept then
    weights = sorted(int(p.stem.split("-")[1]) for p in tmp_path.glob("weights-*.pt"))
    assert weights == [1, 2, 4]  # the three best by value; 0 was evicted by 4
    assert sorted(int(p.stem.split("-")[1]) for p in tmp_path.glob("val-*.pt")) == [0, 1, 2, 3, 4]
    index = json.loads((tmp_path / "index.json").read_text())
    assert index == {"size": 3, "weights": {"1": 0.9, "2": 0.7, "4": 0.8}}
    entries = pool.candidates(tmp_path, values)
    assert [e.trial_number for e in entries] == [1, 4, 2]  # best first


def test_size_zero_keeps_outputs_but_no_weights(tmp_path, digits):
    assert not _keep(tmp_path, digits, 0, 0.9, size=0)
    assert list(tmp_path.glob("weights-*.pt")) == [] and (tmp_path / "val-0.pt").is_file()


def test_a_weight_file_the_index_does_not_name_is_removed(tmp_path, digits):
    _keep(tmp_path, digits, 0, 0.5, size=2)
    (tmp_path / "weights-7.pt").write_bytes(b"left by a crash between two writes")
    _keep(tmp_path, digits, 1, 0.6, size=2)
    assert sorted(p.name for p in tmp_path.glob("weights-*.pt")) == ["weights-0.pt", "weights-1.pt"]


def test_outputs_are_the_log_probabilities_of_the_half_precision_weights(tmp_path, digits):
    config, model = _model(digits, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pool.keep(tmp_path, trial_number=3, value=0.4, config=config, model=model, data=digits, size=1)
    # Independently: a fresh model loaded with each tensor rounded through float16, then NumPy's
    # log-softmax of its logits.
    rounded = build_mlp(config, in_features=digits.in_features, n_classes=digits.n_classes).eval()
    rounded.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in before.items()})
    with torch.no_grad():
        logits = rounded(digits.x_val).double().numpy()
    top = logits.max(1, keepdims=True)
    expected = logits - top - np.log(np.exp(logits - top).sum(1, keepdims=True))
    entry = pool.candidates(tmp_path, {3: 0.4})[0]
    np.testing.assert_allclose(entry.outputs.numpy(), expected, rtol=0, atol=1e-5)
    for k, v in model.state_dict().items():  # the trial's own model is untouched
        assert torch.equal(v, before[k]), k
    saved = pool.load_weights(tmp_path, 3)
    assert all(v.dtype == torch.float16 for k, v in saved.items() if before[k].is_floating_point())


def test_a_pool_entry_whose_value_the_study_does_not_hold_is_no_candidate(tmp_path, digits):
    _keep(tmp_path, digits, 0, 0.5, size=2)
    _keep(tmp_path, digits, 1, 0.6, size=2)
    # Trial 0 of another study with this name (or a retried number) has another value.
    assert [e.trial_number for e in pool.candidates(tmp_path, {0: 0.55, 1: 0.6})] == [1]
    assert pool.candidates(tmp_path, {}) == []


def test_disk_bytes_counts_weights_and_outputs_apart(tmp_path, digits):
    _keep(tmp_path, digits, 0, 0.5, size=1)
    kept, outputs = pool.disk_bytes(tmp_path)
    assert kept == (tmp_path / "weights-0.pt").stat().st_size
    assert outputs == (tmp_path / "val-0.pt").stat().st_size
