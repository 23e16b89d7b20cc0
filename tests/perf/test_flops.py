"""The matmul floor: the epoch's work counted by hand, and its rate measured at the layer shapes."""

import torch

from search.perf.flops import epoch_flops, matmul_floor
from search.training.config import TrainConfig


def test_an_epochs_matmul_work_is_three_matmuls_per_layer_at_two_flops_per_multiply_add():
    config = TrainConfig(hidden=(512, 256))
    forward_macs = 3072 * 512 + 512 * 256 + 256 * 10  # the notebook's 3072-512-256-10, per sample
    assert epoch_flops(config, 3072, 10, 1000) == 3 * 2 * forward_macs * 1000


def test_the_floor_is_the_timed_matmuls_of_the_epochs_full_batches():
    config = TrainConfig(hidden=(32,), batch_size=16)
    r = matmul_floor(config, 64, 10, 100, torch.device("cpu"))  # 6 full batches of 16
    assert r["epoch_gflop"] == epoch_flops(config, 64, 10, 96) / 1e9
    assert r["floor_epoch_s"] > 0
    rate = r["epoch_gflop"] / r["floor_epoch_s"]
    assert abs(r["mm_gflops"] - rate) <= 1e-9 * rate
