"""--augment alternates plain and augmented fits and reports the ratio of their epochs."""

import json
import statistics

from search import bench
from search.data.datasets import load_dataset
from search.perf import augment_cost as augment_bench
from search.training.config import TrainConfig


def test_plain_and_augmented_fits_alternate_and_the_overhead_is_their_median_ratio(monkeypatch):
    data = load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0)
    calls = []
    real_fit = augment_bench.fit

    def recording_fit(cfg, d, **kw):
        calls.append(cfg)
        return real_fit(cfg, d, **kw)

    monkeypatch.setattr(augment_bench, "fit", recording_fit)
    r = augment_bench.run_augment_bench(TrainConfig(hidden=(16,), batch_size=64), data, rounds=3)
    kinds = ["aug" if c.hflip else "plain" for c in calls]
    assert kinds == ["plain", "aug", "aug", "plain", "plain", "aug"]  # the order swaps each round
    for c in calls:
        assert c.epochs == 2 and c.hidden == (16,)
        if c.hflip:
            assert (c.translate, c.schedule, c.label_smoothing) == (4, "onecycle", 0.1) and c.warmup > 0
    ratios = [a / p for a, p in zip(r["augmented_epoch_times_s"], r["plain_epoch_times_s"], strict=True)]
    assert r["augment_overhead"] == statistics.median(ratios) - 1
    low, high = sorted(ratios)[0] - 1, sorted(ratios)[2] - 1  # 3 rounds: quartiles lie between
    q1, q3 = r["augment_overhead_quartiles"]
    assert low <= q1 <= r["augment_overhead"] <= q3 <= high


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
