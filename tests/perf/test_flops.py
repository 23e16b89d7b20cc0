"""The matmul floor: an epoch's matmul work as torch itself counts it on a real MLP, and the floor's
seconds as the sum of the timed matmuls, one set per full batch. No speed is asserted."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from search.perf import flops
from search.perf.flops import epoch_flops, layer_shapes, matmul_floor
from search.training.config import TrainConfig
from search.training.model import build_mlp

TINY = TrainConfig(hidden=(5, 3), batchnorm=False, batch_size=4)  # 7 inputs, 2 classes below


def _counted_flops(config: TrainConfig, in_features: int, n_classes: int, n_samples: int) -> int:
    """torch's own count of one training step's flops on a real nn.Linear stack: forward and backward."""
    model = build_mlp(config, in_features=in_features, n_classes=n_classes)
    x = torch.randn(n_samples, in_features)
    y = torch.randint(0, n_classes, (n_samples,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops()


def test_the_layer_shapes_run_from_the_inputs_through_the_hidden_widths_to_the_classes():
    assert layer_shapes(TINY, 7, 2) == [(7, 5), (5, 3), (3, 2)]
    assert layer_shapes(TrainConfig(hidden=()), 7, 2) == [(7, 2)]


def test_a_tiny_epochs_matmul_work_counted_by_hand():
    # per sample: forward 7*5 + 5*3 + 3*2 = 56 multiply-adds, the weights' gradients 56 more, the
    # inputs' gradients 5*3 + 3*2 = 21 (none for the data); 2 flops each, 4 samples
    assert epoch_flops(TINY, 7, 2, 4) == 2 * (56 + 56 + 21) * 4 == 1064
    assert epoch_flops(TrainConfig(hidden=()), 7, 2, 4) == 2 * (14 + 14) * 4  # a linear model


@pytest.mark.parametrize(
    "config, in_features, n_classes",
    [
        (TINY, 7, 2),
        (TrainConfig(hidden=()), 7, 2),
        (TrainConfig(hidden=(512, 256), batchnorm=False), 3072, 10),
        (TrainConfig(hidden=(6, 6, 6), residual=True, expansion=3, batchnorm=False), 7, 2),
    ],
    ids=["tiny", "linear", "notebook", "residual"],
)
def test_an_epochs_matmul_work_is_what_torch_counts_for_a_training_step(config, in_features, n_classes):
    assert epoch_flops(config, in_features, n_classes, 8) == _counted_flops(config, in_features, n_classes, 8)


def test_the_floor_times_exactly_the_matmuls_of_one_step_once_per_full_batch(monkeypatch):
    timed = []

    def one_teraflop_device(fn, device):  # each matmul's seconds at exactly 1e12 flop/s
        with FlopCounterMode(display=False) as counter:
            fn()
        timed.append(counter.get_total_flops())
        return counter.get_total_flops() / 1e12

    monkeypatch.setattr(flops, "_seconds", one_teraflop_device)
    r = matmul_floor(TINY, 7, 2, 26, torch.device("cpu"))  # 6 full batches of 4; the last 2 samples not
    assert len(timed) == 3 * 3 - 1  # three matmuls a layer, but no gradient for the data
    assert sum(timed) == _counted_flops(TINY, 7, 2, 4)  # one step's matmuls, as torch counts them
    assert r["epoch_gflop"] == epoch_flops(TINY, 7, 2, 24) / 1e9
    assert r["floor_epoch_s"] == pytest.approx(6 * sum(timed) / 1e12)
    assert r["mm_gflops"] == pytest.approx(1000)


def test_the_floor_grows_with_the_full_batches_and_is_at_least_one(monkeypatch):
    monkeypatch.setattr(flops, "_seconds", lambda fn, device: 0.5)  # every matmul half a second
    per_batch = 0.5 * (3 * 3 - 1)
    for n_samples, batches in [(4, 1), (7, 1), (8, 2), (26, 6), (400, 100), (1, 1)]:
        r = matmul_floor(TINY, 7, 2, n_samples, torch.device("cpu"))
        assert r["floor_epoch_s"] == pytest.approx(batches * per_batch), n_samples
        assert r["epoch_gflop"] == epoch_flops(TINY, 7, 2, batches * 4) / 1e9


def test_the_real_floor_is_a_positive_time_and_its_rate_follows_from_it():
    r = matmul_floor(TrainConfig(hidden=(32,), batch_size=16), 64, 10, 100, torch.device("cpu"))
    assert 0 < r["floor_epoch_s"] < math.inf
    assert r["mm_gflops"] == pytest.approx(r["epoch_gflop"] / r["floor_epoch_s"])


@pytest.mark.parametrize("config", [TINY, TrainConfig(hidden=(6, 6, 6), residual=True, expansion=3)])
def test_the_model_the_layout_and_the_flop_count_agree_on_a_forward_pass(config):
    from search.training.model import member_flops
    from search.training.stack import layout_of

    by_shapes = sum(a * b for a, b in layer_shapes(config, 7, 2))
    assert member_flops(config, 7, 2) == layout_of([config], 7, 2).flops() == by_shapes
