"""A config's costs are known before it trains, and one over a hard limit is never trained."""

import math

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.data.datasets import load_dataset
from search.errors import UserError
from search.schema import ATTR_EPOCHS, ATTR_LATENCY, ATTR_PARAMS, ATTR_REASON
from search.training.config import TrainConfig
from search.tuning import costs, runner, stacking
from search.tuning.objective import Objective
from search.tuning.runner import RunOptions, run_search, run_trials
from search.tuning.space import parse_space
from search.tuning.study_file import load_study, parse_study


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0)


def _spec(**changes):
    wide = parse_space({"n_layers": 2, "width": 512}, where="test")  # 64-512-512-10: 301,066 parameters
    return load_study("digits").with_overrides(epochs=2, space=wide, **changes)


@pytest.fixture
def fits(monkeypatch):
    """How many times the engine was asked to train."""
    calls = []
    real = stacking.fit_stacked
    monkeypatch.setattr(stacking, "fit_stacked", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_latency_is_a_median_of_forward_passes_that_leaves_the_random_streams_alone(digits):
    before = torch.random.get_rng_state()
    ms = costs.latency_ms(TrainConfig(hidden=(32,)), digits, warmup=1, runs=3)
    assert 0 < ms < 1000 and math.isfinite(ms)
    assert torch.equal(torch.random.get_rng_state(), before)  # the search's draws are unchanged
    batch = costs.latency_batch(digits)
    assert batch.shape == (costs.IMAGE_ROWS, 64) and torch.equal(batch[:10], digits.x_train[:10])


def test_a_config_over_max_params_is_pruned_with_its_reason_and_never_trained(digits, fits):
    study = optuna.create_study(direction="maximize")
    run_trials(study, Objective(spec=_spec(max_params=100_000), data=digits), n_trials=2)
    assert fits == []
    for t in study.trials:
        n = t.user_attrs[ATTR_PARAMS]  # 301,066 and BatchNorm's 2,048 where it drew batchnorm
        assert t.state == TrialState.PRUNED and n in (301_066, 303_114)
        assert t.user_attrs[ATTR_REASON] == f"rejected before training: {n:,} parameters > max_params 100,000"
        assert ATTR_EPOCHS not in t.user_attrs and not t.intermediate_values
        assert ATTR_LATENCY not in t.user_attrs  # the free check rejected it first


def test_a_config_over_max_latency_ms_is_pruned_with_its_latency_recorded(digits, fits):
    study = optuna.create_study(direction="maximize")
    run_trials(study, Objective(spec=_spec(max_latency_ms=1e-6), data=digits), n_trials=1)
    (t,) = study.trials
    assert fits == [] and t.state == TrialState.PRUNED and ATTR_EPOCHS not in t.user_attrs
    assert t.user_attrs[ATTR_LATENCY] > 1e-6
    assert t.user_attrs[ATTR_REASON].startswith("rejected before training: latency ")


def test_a_config_within_the_limits_trains_and_records_its_latency(digits, fits):
    study = optuna.create_study(direction="maximize")
    spec = _spec(max_params=400_000, max_latency_ms=1e4)
    run_trials(study, Objective(spec=spec, data=digits), n_trials=1)
    (t,) = study.trials
    assert fits == [1] and t.state == TrialState.COMPLETE and t.user_attrs[ATTR_EPOCHS] == 2
    assert 0 < t.user_attrs[ATTR_LATENCY] < 1e4


def test_rejected_trials_count_as_finished_not_as_failures(tmp_path, fits):
    """Six rejections in a row: the run ends with its six trials, not "5 trials failed in a row"."""
    opts = RunOptions(
        spec=_spec(max_params=1000), storage_url=f"sqlite:///{tmp_path}/s.db", study_name="digits",
        trials=6, device="cpu", results_dir=tmp_path, heartbeat_s=None,
    )  # fmt: skip
    summary = run_search(opts)
    assert summary.error is None and summary.finished == 6 and summary.states == {"PRUNED": 6}
    assert summary.rejected == 6 and fits == []


def test_a_limit_no_config_meets_ends_the_run_in_one_line_naming_the_smallest(tmp_path, fits, monkeypatch):
    monkeypatch.setattr(runner, "MAX_CONSECUTIVE_REJECTIONS", 4)
    opts = RunOptions(
        spec=_spec(max_params=1000), storage_url=f"sqlite:///{tmp_path}/s.db", study_name="digits",
        trials=50, device="cpu", results_dir=tmp_path, heartbeat_s=None,
    )  # fmt: skip
    summary = run_search(opts)
    study = optuna.load_study(study_name="digits", storage=opts.storage_url)
    assert len(study.trials) == 4 and fits == []  # stopped at the fourth, none trained
    smallest = min(t.user_attrs[ATTR_PARAMS] for t in study.trials)
    assert summary.error == (
        f"4 configs in a row broke max_params 1,000, untrained (the smallest had {smallest:,} "
        "parameters): loosen the limit or search smaller models"
    )


def test_the_study_file_takes_objectives_and_limits():
    doc = {"study": {"dataset": "digits", "objectives": ["score", "latency"], "max_params": 5000}}
    spec = parse_study(doc, name="s", path=load_study("digits").path)
    assert spec.objectives == ("score", "latency") and spec.cost == "latency" and spec.needs_latency
    assert spec.max_params == 5000 and spec.max_latency_ms is None
    plain = load_study("digits")
    assert plain.objectives == ("score",) and plain.cost is None and not plain.needs_latency
    for bad, words in [
        ({"objectives": ["params"]}, "are not allowed"),
        ({"objectives": ["score", "params", "latency"]}, "are not allowed"),
        ({"objectives": "score"}, "expected list"),
        ({"max_params": 0}, "max_params must be >= 1"),
        ({"max_latency_ms": -1.0}, "max_latency_ms must be a positive number"),
    ]:
        with pytest.raises(UserError, match=words):
            parse_study({"study": {"dataset": "digits", **bad}}, name="s", path=plain.path)
