"""What a config costs where it goes, known before it trains: its parameter count and its latency.

Neither depends on training. The parameter count follows from the config and the data's shape
(search.training.model.param_count); the latency is the untrained model's forward pass of a fixed
batch (LATENCY_ROWS: 256 images or 1,000 table rows, the training split's first rows, cycled) on
the trial's device, in its precision (bf16 autocast where the engine trains in it) and with the
worker's threads, the median of RUNS after WARMUP, in eval mode under `torch.inference_mode`.
Weights do not change an MLP's forward time, so the untrained model's is the trained one's.

A study uses them as its second objective (`objectives = ["score", "params"]` or
`["score", "latency"]`) and as hard limits (`max_params`, `max_latency_ms`): `over_limit` names
the limit a config breaks, and search.tuning.objective ends such a trial PRUNED before its first
epoch. The latency is measured only where a study asks for it (it costs a few forward passes).
"""

from __future__ import annotations

import statistics
import time
from typing import Protocol

import torch

from search.data.datasets import Dataset
from search.device import autocast
from search.training.config import TrainConfig
from search.training.model import build_for

IMAGE_ROWS, TABLE_ROWS = 256, 1000  # the latency batch: images, or table rows
WARMUP, RUNS = 3, 9  # forward passes before timing, and timed (the median is kept)
REJECTED = "rejected before training:"  # how a rejected trial's reason starts


class Limits(Protocol):
    """What holds a study's hard limits: its StudySpec (None: no limit)."""

    @property
    def max_params(self) -> int | None: ...

    @property
    def max_latency_ms(self) -> float | None: ...


def latency_batch(data: Dataset, numeric: str = "standard") -> torch.Tensor:
    """The fixed batch a latency is measured on: the training split's first rows (cycled to
    LATENCY_ROWS), in the config's numeric encoding, on the data's device."""
    x = data.variant(numeric).x_train
    rows = IMAGE_ROWS if data.image_shape is not None else TABLE_ROWS
    index = torch.arange(rows, device=x.device) % len(x)
    return x.index_select(0, index)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def forward_ms(
    model: torch.nn.Module, batch: torch.Tensor, *, warmup: int = WARMUP, runs: int = RUNS
) -> float:
    """The median wall time of one forward pass of `batch` through `model`, in milliseconds,
    in eval mode, in the device's training precision (search.device.autocast)."""
    model.eval()
    device = batch.device
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            _sync(device)
            start = time.perf_counter()
            with autocast(device):
                model(batch)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def latency_ms(config: TrainConfig, data: Dataset, *, warmup: int = WARMUP, runs: int = RUNS) -> float:
    """The untrained model of `config`: its forward pass of the latency batch on `data`'s device.

    The model is built under a forked random state, so measuring leaves the process's random
    streams (and with them every later draw of the search) as they were."""
    with torch.random.fork_rng(devices=[]):
        model = build_for(config, data)
    model.to(data.device)
    return forward_ms(model, latency_batch(data, config.numeric), warmup=warmup, runs=runs)


def over_limit(limits: Limits, *, n_params: int, latency: float | None) -> str | None:
    """Why a config breaks one of `limits` (a sentence for the trial's reason attr), or None;
    an unmeasured latency (None) breaks none."""
    max_params, max_latency_ms = limits.max_params, limits.max_latency_ms
    if max_params is not None and n_params > max_params:
        return f"{REJECTED} {n_params:,} parameters > max_params {max_params:,}"
    if max_latency_ms is not None and latency is not None and latency > max_latency_ms:
        return f"{REJECTED} latency {latency:.3g} ms > max_latency_ms {max_latency_ms:g}"
    return None


def cost_value(cost: str, *, n_params: int, latency: float | None) -> float:
    """The second objective's value: the parameter count, or the latency in milliseconds."""
    if cost == "params":
        return float(n_params)
    assert latency is not None, "the latency objective needs a measured latency"
    return float(latency)
