"""A stacked search: its trials look in the storage like trials trained alone, and replay alone."""

from __future__ import annotations

import contextlib
import math
import time

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.data.datasets import load_dataset
from search.schema import ATTR_STACK_ID, ATTR_STACK_PADDING, ATTR_STACK_SIZE
from search.storage import running
from search.storage.connect import open_storage
from search.training.fit import fit
from search.tuning.runner import RunOptions, _Slots, run_search
from search.tuning.space import STACK_PARAMS, replay_config
from search.tuning.study_file import load_study
from search.tuning.summary import format_summary

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")

EPOCHS = 4


@pytest.fixture(scope="module")
def stacked_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("stacked")
    url = f"sqlite:///{root}/s.db"
    spec = load_study("digits").with_overrides(epochs=EPOCHS, stack=6)
    opts = RunOptions(spec=spec, storage_url=url, study_name="digits", trials=12, device="cpu",
                      results_dir=root / "results", heartbeat_s=None)  # fmt: skip
    summary = run_search(opts)
    return summary, optuna.load_study(study_name="digits", storage=url), spec


def test_every_stacked_trial_is_recorded_as_one_trained_alone(stacked_run):
    summary, study, _ = stacked_run
    assert summary.error is None and summary.finished == 12
    trials = study.get_trials()
    assert len(trials) == 12 and {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    for t in trials:
        epochs = t.user_attrs["epochs_run"]
        assert sorted(t.intermediate_values) == list(range(1, epochs + 1))  # one value per epoch
        assert t.value == t.intermediate_values[epochs]
        assert t.user_attrs["n_params"] > 0 and t.user_attrs["architecture"]
        assert t.user_attrs[ATTR_STACK_SIZE] >= 1 and 0.0 <= t.user_attrs[ATTR_STACK_PADDING] < 1.0
        if t.state == TrialState.PRUNED:
            assert t.user_attrs["reason"].startswith("pruned after epoch")


def test_a_stacks_members_share_only_the_params_that_shape_the_stack(stacked_run):
    _, study, _ = stacked_run
    stacks: dict[int, list] = {}
    for t in study.get_trials():
        stacks.setdefault(t.user_attrs[ATTR_STACK_ID], []).append(t)
    assert len(stacks) == 2  # 12 trials, stacks of 6: the sampler did not split them
    for stack_id, members in stacks.items():
        assert min(t.number for t in members) == stack_id
        assert all(t.user_attrs[ATTR_STACK_SIZE] == len(members) for t in members)
        for name in STACK_PARAMS:
            assert len({t.params.get(name) for t in members}) == 1, name
        # Everything else is each member's own: the members are not copies of one another.
        assert len({t.params["lr"] for t in members}) == len(members)
        assert len({t.params["optimizer"] for t in members} | {t.params["activation"] for t in members}) > 1


def test_the_summary_gives_the_mean_stack_size_and_the_padding(stacked_run):
    summary, study, _ = stacked_run
    size, padding = summary.stacking
    assert size == 6.0
    paddings = [t.user_attrs[ATTR_STACK_PADDING] for t in study.get_trials()]
    assert math.isclose(padding, sum(paddings) / len(paddings), abs_tol=1e-3)
    assert "stacks: 6.0 trials each on average" in format_summary(summary)


def test_a_stacked_trial_retrained_alone_reproduces_its_validation_accuracy(stacked_run):
    _, study, spec = stacked_run
    data = load_dataset("digits", device=torch.device("cpu"), val_fraction=spec.val_fraction)
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert done, "the stacked run completed no trial"
    for t in done[:3]:
        config = replay_config(t.params, spec.space, epochs=spec.epochs, seed=t.user_attrs["seed"])
        alone = fit(config, data)
        # In float32 the stack and the lone fit round differently (tests/training/test_stack.py
        # shows them equal in float64), and training amplifies that: the bound is how far the lone
        # fit moves when only its rounding changes (each batch's rows reversed), three times over,
        # plus one sample flipped on a near-tie. Measured here, on this machine's kernels.
        with rows_reversed(config.batch_size):
            perturbed = fit(config, data)
        noise = abs(perturbed.val_score - alone.val_score)
        assert abs(alone.val_score - t.value) <= 3 * noise + 1 / len(data.y_val) + 1e-12


@contextlib.contextmanager
def rows_reversed(batch_size: int):
    """`fit` with each batch's rows in reverse order: the same batches, the same training, other
    roundings in every sum over a batch (BatchNorm's statistics, the weight gradients)."""
    real = torch.randperm

    def randperm(n, **kw):
        order = real(n, **kw)
        return torch.cat([order[i : i + batch_size].flip(0) for i in range(0, n, batch_size)])

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "randperm", randperm)
        yield


def test_slots_grant_a_stack_what_is_left():
    slots = _Slots(target=5, jobs=2)
    assert slots.claim(0, 4) == 4 and slots.claim(1, 4) == 1 and slots.claim(1) == 0
    slots.done(0, counted=True)
    slots.release(0)  # worker 0 stopped holding 3 unfinished slots: they go back
    assert slots.left == 3


def test_stacked_trials_beat_their_heartbeat_while_they_train(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/h.db", heartbeat_s=1)
    study = running.bind(optuna.create_study(storage=storage, direction="maximize"), storage)
    beating, silent = study.ask(), study.ask()
    try:
        with running.heartbeats(study, [beating, silent]):
            time.sleep(0.2)
        with running.heartbeats(study, [beating]):
            time.sleep(3.5)  # past the grace period (2 beats) of a trial that stopped beating
            running.fail_stale(study)
    except AttributeError as e:
        raise AssertionError(
            f"Optuna {optuna.__version__} moved {running.OPTUNA_INTERNAL}: "
            f"search/tuning/running.py must follow it ({e})"
        ) from None
    states = {t.number: t.state for t in study.get_trials()}
    assert states[beating.number] == TrialState.RUNNING
    assert states[silent.number] == TrialState.FAIL  # and its retry is queued
    assert any(t.state == TrialState.WAITING for t in study.get_trials())


UNEVEN = """
[study]
dataset = "digits"
epochs = 3
val_fraction = 0.2
sampler = "random"
pruner = "median"
stack = 8

[space]
n_layers = 1
width = [16, 1024]
activation = ["relu", "tanh"]
optimizer = ["sgd", "adam"]
lr = {low = 1e-3, high = 1e-1, log = true}
batch_size = 128
"""


def test_a_stack_of_narrow_and_wide_trials_trains_as_two_sub_stacks(tmp_path, monkeypatch):
    """On a CPU the 16-unit trials do not pay for the 1024-unit ones' padding; the second
    sub-stack's pruner also sees the trials that completed in the first."""
    from search.tuning import stacking

    (tmp_path / "uneven.toml").write_text(UNEVEN)
    peers_seen = []
    judge = stacking.should_prune

    def recording(trial, reported, peers=()):
        peers_seen.append((trial.number, len(peers)))
        return judge(trial, reported, peers=peers)

    monkeypatch.setattr(stacking, "should_prune", recording)
    url = f"sqlite:///{tmp_path}/u.db"
    spec = load_study(str(tmp_path / "uneven.toml"))
    opts = RunOptions(spec=spec, storage_url=url, study_name="u", trials=8, device="cpu",
                      results_dir=tmp_path / "results", heartbeat_s=None, seed=1)  # fmt: skip
    assert run_search(opts).error is None
    trials = optuna.load_study(study_name="u", storage=url).get_trials()
    by_width: dict[int, set] = {}
    for t in trials:
        by_width.setdefault(t.params["width_0"], set()).add(
            (t.user_attrs[ATTR_STACK_ID], t.user_attrs[ATTR_STACK_SIZE], t.user_attrs[ATTR_STACK_PADDING])
        )
    assert sorted(by_width) == [16, 1024], "the seed drew one width only: pick another"
    (narrow,), (wide,) = by_width[16], by_width[1024]
    assert narrow[0] != wide[0]
    assert narrow[1] + wide[1] == 8
    assert narrow[2] == wide[2] == 0.0  # each sub-stack is as wide as its members
    # the narrow sub-stack trains first (members go smallest first)
    in_first = {t.number for t in trials if t.user_attrs[ATTR_STACK_ID] == narrow[0]}
    completed_first = sum(t.state == TrialState.COMPLETE for t in trials if t.number in in_first)
    assert completed_first > 0
    assert max(n for number, n in peers_seen if number in in_first) <= len(in_first) - 1
    assert min(n for number, n in peers_seen if number not in in_first) >= completed_first
