"""--precision alternates float32 and bf16 fits and reports the ratio of their epochs.

The arithmetic is checked on scripted epoch times; one real run checks the command end to end.
No speed is asserted."""

import json
from types import SimpleNamespace

import pytest
import torch

from search import bench
from search.device import reduced_precision
from search.perf import precision as precision_bench
from search.training.config import TrainConfig

DATA = SimpleNamespace(device=torch.device("cpu"), x_train=torch.zeros(10, 3))


class ScriptedFit:
    """fit replaced: records the precision each call trains under (as the engine would read it)
    and takes its measured epoch from that precision's script in turn."""

    def __init__(self, fp32, bf16):
        self.times = {False: iter(fp32), True: iter(bf16)}
        self.under = []

    def __call__(self, cfg, data, **kw):
        bf16 = reduced_precision(data.device)
        self.under.append("bf16" if bf16 else "fp32")
        return SimpleNamespace(
            history=[SimpleNamespace(seconds=99.0, val_score=0.0),
                     SimpleNamespace(seconds=next(self.times[bf16]), val_score=0.5 + 0.1 * bf16)]
        )  # fmt: skip


def test_fits_alternate_between_the_precisions_swapping_the_order_each_round(monkeypatch):
    fake = ScriptedFit(fp32=[1.0] * 4, bf16=[1.0] * 4)
    monkeypatch.setattr(precision_bench, "fit", fake)
    precision_bench.run_precision_bench(TrainConfig(hidden=(16,)), DATA, rounds=4)
    assert fake.under == ["fp32", "bf16", "bf16", "fp32", "fp32", "bf16", "bf16", "fp32"]


def test_the_speedup_is_the_median_of_float32_over_bf16(monkeypatch):
    # ratios 2.0, 1.0, 1.5, 3.0: median 1.75; inclusive quartiles of 1.0, 1.5, 2.0, 3.0: 1.375, 2.25
    fake = ScriptedFit(fp32=[2.0, 1.0, 3.0, 6.0], bf16=[1.0, 1.0, 2.0, 2.0])
    monkeypatch.setattr(precision_bench, "fit", fake)
    r = precision_bench.run_precision_bench(TrainConfig(hidden=(16,)), DATA, rounds=4)
    assert r["ratios"] == pytest.approx([2.0, 1.0, 1.5, 3.0])
    assert r["bf16_speedup"] == pytest.approx(1.75)
    assert r["bf16_speedup_quartiles"] == pytest.approx([1.375, 2.25])
    assert r["fp32_val_scores"] == [0.5] * 4 and r["bf16_val_scores"] == pytest.approx([0.6] * 4)
    table = precision_bench.format_precision(r)
    assert "bf16_speedup   1.75x" in table and "1.38x to 2.25x" in table


def test_bench_precision_writes_its_speedup(tmp_path, capsys):
    out = tmp_path / "p.json"
    argv = ["--precision", "--synthetic", "--limit", "256", "--rounds", "2", "--device", "cpu"]
    assert bench.main([*argv, "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert len(r["fp32_epoch_times_s"]) == len(r["bf16_epoch_times_s"]) == 2 and r["n_train"] == 256
    assert r["bf16_speedup"] > 0 and r["auto_picks"] in ("fp32", "bf16")
    assert r["provenance"]["command"].startswith("python -m search.bench --precision")
    assert "bf16_speedup" in capsys.readouterr().out
