"""--augment alternates plain and augmented fits and reports the ratio of their epochs.

The arithmetic is checked on scripted epoch times; one real run checks the command end to end.
No speed is asserted."""

import json
from types import SimpleNamespace

import pytest
import torch

from search import bench
from search.perf import augment_cost as augment_bench
from search.training.config import TrainConfig


class ScriptedFit:
    """fit replaced: each call's config recorded, its measured epoch taken from the script of its
    kind (plain or augmented) in turn."""

    def __init__(self, plain, augmented):
        self.times = {False: iter(plain), True: iter(augmented)}
        self.configs = []

    def __call__(self, cfg, data, **kw):
        self.configs.append(cfg)
        return SimpleNamespace(
            history=[SimpleNamespace(seconds=99.0), SimpleNamespace(seconds=next(self.times[cfg.hflip]))]
        )


DATA = SimpleNamespace(device=torch.device("cpu"), x_train=torch.zeros(10, 3))


AUGMENT_KNOBS = {"hflip", "translate", "schedule", "warmup", "label_smoothing"}


def test_the_arms_train_the_callers_model_and_differ_only_in_the_augmentation_knobs(monkeypatch):
    fake = ScriptedFit(plain=[1.0] * 4, augmented=[1.0] * 4)
    monkeypatch.setattr(augment_bench, "fit", fake)
    caller = TrainConfig(hidden=(16,), batch_size=64, dropout=0.2)
    augment_bench.run_augment_bench(caller, DATA, rounds=4)
    assert len(fake.configs) == 8 and sum(c.hflip for c in fake.configs) == 4
    for c in fake.configs:  # one warm-up epoch and one measured
        changed = {f for f in c.to_dict() if c.to_dict()[f] != caller.to_dict()[f]} - {"epochs"}
        assert c.epochs == 2
        if c.hflip:
            assert changed == AUGMENT_KNOBS  # every knob the bench prices is on, nothing else moves
        else:
            assert changed == set()


def test_a_machine_that_slows_steadily_barely_moves_the_overhead(monkeypatch):
    """Every fit is 10% slower than the one before; augmentation truly costs +25%. Swapping which
    arm goes first each round keeps the drift out of the median to second order (under a
    point), where a fixed order would report about +37%."""
    calls = []

    def fit(cfg, data, **kw):
        calls.append(cfg)
        epoch = (1.25 if cfg.hflip else 1.0) * 1.1 ** (len(calls) - 1)
        return SimpleNamespace(history=[SimpleNamespace(seconds=99.0), SimpleNamespace(seconds=epoch)])

    monkeypatch.setattr(augment_bench, "fit", fit)
    r = augment_bench.run_augment_bench(TrainConfig(hidden=(16,)), DATA, rounds=4)
    assert abs(r["augment_overhead"] - 0.25) < 0.01


def test_the_overhead_is_the_median_of_the_rounds_ratios_minus_one(monkeypatch):
    # rounds' ratios 1.5, 1.1, 1.2, 1.5: median 1.35; the inclusive quartiles of the sorted
    # 1.1, 1.2, 1.5, 1.5 lie 0.75 and 2.25 of the way along: 1.175 and 1.5
    fake = ScriptedFit(plain=[1.0, 2.0, 1.0, 4.0], augmented=[1.5, 2.2, 1.2, 6.0])
    monkeypatch.setattr(augment_bench, "fit", fake)
    r = augment_bench.run_augment_bench(TrainConfig(hidden=(16,)), DATA, rounds=4)
    assert r["plain_epoch_times_s"] == [1.0, 2.0, 1.0, 4.0]  # the measured epoch, not the warm-up
    assert r["ratios"] == pytest.approx([1.5, 1.1, 1.2, 1.5])
    assert r["augment_overhead"] == pytest.approx(0.35)
    assert r["augment_overhead_quartiles"] == pytest.approx([0.175, 0.5])
    assert r["plain_epoch_s"] == pytest.approx(1.5) and r["augmented_epoch_s"] == pytest.approx(1.85)
    assert r["rounds"] == 4 and r["n_train"] == 10
    table = augment_bench.format_augment(r)
    assert "augment_overhead +0.350" in table and "+0.175 to +0.500" in table


def test_one_round_gives_its_own_ratio_as_both_quartiles(monkeypatch):
    monkeypatch.setattr(augment_bench, "fit", ScriptedFit(plain=[2.0], augmented=[2.5]))
    r = augment_bench.run_augment_bench(TrainConfig(hidden=(16,)), DATA, rounds=1)
    assert r["augment_overhead"] == pytest.approx(0.25)
    assert r["augment_overhead_quartiles"] == pytest.approx([0.25, 0.25])


def test_bench_augment_writes_augment_overhead(tmp_path, capsys):
    out = tmp_path / "aug.json"
    argv = ["--augment", "--synthetic", "--limit", "256", "--rounds", "2", "--device", "cpu"]
    assert bench.main([*argv, "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["rounds"] == 2 and len(r["ratios"]) == 2 and r["n_train"] == 256
    assert r["augment_overhead"] > -1
    assert r["provenance"]["command"].startswith("python -m search.bench --augment")
    assert set(r["provenance"]) >= {"git_revision", "versions", "device"}
    assert "augment_overhead" in capsys.readouterr().out


def test_one_bench_at_a_time(capsys):
    assert bench.main(["--augment", "--quality", "--synthetic"]) == 2
    assert "separate benches" in capsys.readouterr().err
