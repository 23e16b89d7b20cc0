"""How far an epoch is from the hardware's floor: its matmul work at the device's own matmul rate.

An MLP's training step is three matmuls per Linear layer (forward, the input's gradient, the
weight's gradient), less one: the first layer's input is the data, which needs no gradient, and
autograd computes none. Timing `torch.mm` at exactly those shapes on the device, in the same run,
gives the seconds an epoch would take if nothing but those matmuls ran: the floor no loop can
beat. The bench reports the epoch's achieved GFLOP/s beside that rate, so a figure says how much
of the epoch is arithmetic and how much is everything else (launches, Python, memory traffic).
"""

from __future__ import annotations

import time

import torch

from search.device import compute_dtype
from search.training.config import TrainConfig
from search.training.model import layer_shapes

REPEATS = 20  # timed calls per shape, after warm-up calls; the median is taken


def epoch_flops(config: TrainConfig, in_features: int, n_classes: int, n_samples: int) -> float:
    """Floating-point operations of one epoch's matmuls: 2 per multiply-add, three matmuls a layer
    but the first layer's two (no gradient for the data)."""
    shapes = layer_shapes(config, in_features, n_classes)
    macs = 3 * sum(a * b for a, b in shapes) - shapes[0][0] * shapes[0][1]
    return 2 * macs * n_samples


def _seconds(fn, device: torch.device) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(REPEATS):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def matmul_floor(
    config: TrainConfig, in_features: int, n_classes: int, n_samples: int, device: torch.device
) -> dict[str, float]:
    """The epoch's matmuls timed with `torch.mm` at their shapes: floor seconds and GFLOP/s."""
    bs = config.batch_size
    batches = max(1, n_samples // bs)
    dtype = compute_dtype(device)  # what autocast trains in
    floor = 0.0
    for i, (a, b) in enumerate(layer_shapes(config, in_features, n_classes)):
        x = torch.randn(bs, a, device=device, dtype=dtype)
        w = torch.randn(a, b, device=device, dtype=dtype)
        g = torch.randn(bs, b, device=device, dtype=dtype)
        floor += _seconds(lambda x=x, w=w: torch.mm(x, w), device)  # forward
        if i > 0:  # the input's gradient; the data (layer 0's input) needs none
            floor += _seconds(lambda g=g, w=w: torch.mm(g, w.T), device)
        floor += _seconds(lambda x=x, g=g: torch.mm(x.T, g), device)  # the weight's gradient
    floor *= batches
    flops = epoch_flops(config, in_features, n_classes, batches * bs)
    return {"epoch_gflop": flops / 1e9, "floor_epoch_s": floor, "mm_gflops": flops / floor / 1e9}
