"""Which trials train together: what a stack's members share, how many fit, and where to split.

A stack's members share `stack_key` (depth, residual blocks, ensemble size, batch size, input
whitening, epochs); `stack_capacity` bounds how many fit in the device's memory; on a CPU,
`split_by_width` splits a stack where padding costs more than launches.

A stack pads every layer to its widest member. On a GPU padding is nearly free (a step costs its
launches); on a CPU padded multiply-adds are real work: 16 digits trials with widths drawn from 16
to 256 spend about half their matmuls on zeros. `split_by_width` trades that waste for a few more
steps' fixed cost, picking the cheapest split by dynamic programming over the members sorted by
size, under a per-step CPU model: `STEP_S` + `MEMBER_S` per member + `MAC_S` per padded forward
multiply-add per sample, fitted to `fit_stacked` on this project's 2-core CPU (digits, batch 64,
two layers of 16 to 256 units, mixed knobs, 2 to 16 members; largest error 9%). A faster CPU moves
all three together, which moves the best split less than it moves the times.
"""

from __future__ import annotations

import dataclasses

import torch

from search.data.datasets import Dataset
from search.device import free_bytes
from search.training.config import TrainConfig
from search.training.embeddings import embedded_columns, input_width
from search.training.model import member_flops, param_count, shape_of
from search.training.stack import layout_of

STEP_S = 1.5e-3  # a stacked step's fixed cost (the loss, the backward's setup, Python), plus
# its share of the epoch's scoring and reporting
MEMBER_S = 1.0e-4  # per member per step: its optimizer step, its dropout and batch draws
MAC_S = 1.41e-10  # per padded multiply-add of one sample's forward pass, per step
MIN_SAVING = 0.25  # split only when the model saves this share of the one stack's time: a
# sub-stack's pruner has fewer peers (at stack 16 on digits a 20% saving split the stack and the
# whole search ran 5% slower, pruning less); at stack 64 the split search ran 1.3x faster
MAX_PLANNED = 128  # members planned one by one; beyond, in runs of equal size (the DP is K^2)
MEMORY_SHARE = 0.5  # of the device's free memory, what a stack may plan to use


def stack_key(config: TrainConfig, start_epoch: int = 0) -> tuple:
    """What members of one stack share: depth, residual blocks and their expansion, ensemble
    size, batch size, input transforms (a periodic embedding's sizes among them), epochs, and the
    epoch they start from (a resumed member stacks with those resumed from the same epoch)."""
    zca = config.zca_eps if config.whiten == "zca" else None
    embedding = (config.plr_frequencies, config.plr_dim) if config.embeds else None
    inputs = (config.whiten, zca, config.numeric, embedding)
    blocks = config.expansion if config.residual and len(config.hidden) > 1 else 0
    shape = (len(config.hidden), blocks, config.ensemble_k)
    return (*shape, config.batch_size, *inputs, config.epochs, start_epoch)


def member_bytes(config: TrainConfig, data: Dataset) -> int:
    """A generous estimate of one member's memory in a stack: weights, gradient and optimizer
    state (float32), plus one batch's activations and inputs kept for the backward pass."""
    states = 1 if config.optimizer == "sgd" else 2
    shape = shape_of(config, data)  # a piecewise-linear encoding is wider, as is an embedding's output
    weights = 4 * param_count(config, **shape) * (2 + states)
    width = input_width(config, shape["in_features"], shape["numeric_features"])
    per_row = 8 * sum(config.hidden) + 3 * width + 4 * data.n_classes  # each ensemble member's copy
    # a periodic embedding's, once: the angles, their cosines and sines and the two side by side
    # (5k), laid out per column for its matmul (2k), the matmul's output, its ReLU, the joined row
    k, d = config.plr_frequencies, config.plr_dim
    embedding = embedded_columns(config, shape["numeric_features"]) * (7 * k + 3 * d)
    activations = 4 * config.batch_size * (config.ensemble_k * per_row + embedding)
    return weights + activations


def stack_capacity(config: TrainConfig, data: Dataset) -> int:
    """How many members like `config` fit in the training device's free memory (at least 1)."""
    return max(1, int(free_bytes(data.device) * MEMORY_SHARE) // member_bytes(config, data))


def step_seconds(
    configs: list[TrainConfig], in_features: int, n_classes: int, numeric_features: int = 0
) -> float:
    """The CPU model's time for one training step of these configs stacked."""
    padded = layout_of(configs, in_features, n_classes, numeric_features).flops()
    return _step_cost(len(configs), configs[0].batch_size, padded)


def _step_cost(k: int, batch: int, padded: int) -> float:
    return STEP_S + k * (MEMBER_S + MAC_S * batch * padded)


def split_by_width(
    configs: list[TrainConfig],
    in_features: int,
    n_classes: int,
    device: torch.device,
    *,
    numeric_features: int = 0,
) -> list[list[int]]:
    """Indices into `configs` (which share a stack key), grouped into the sub-stacks to train one
    after another; one group holding all of them on a GPU, where padding costs little. The
    inputs' first `numeric_features` columns are numeric (an embedding's)."""
    shape = dict(in_features=in_features, n_classes=n_classes, numeric_features=numeric_features)
    order = sorted(range(len(configs)), key=lambda i: (member_flops(configs[i], **shape), i))
    if device.type == "cuda" or len(configs) < 2:
        return [order]
    run = -(-len(order) // MAX_PLANNED)  # members per planning unit
    units = [order[i : i + run] for i in range(0, len(order), run)]
    n = len(units)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest plan for units[:j]
    cut = [0] * (n + 1)
    batch = configs[0].batch_size
    shared = layout_of(configs[:1], **shape)  # expansion, ensemble and embedding: the stack key's
    for j in range(1, n + 1):
        widths, k = [0] * len(configs[0].hidden), 0
        for i in range(j - 1, -1, -1):  # the last group is units[i:j], grown to the left
            for m in units[i]:
                widths = [max(w, h) for w, h in zip(widths, configs[m].hidden, strict=True)]
            k += len(units[i])
            padded = dataclasses.replace(shared, widths=tuple(widths)).flops()
            cost = best[i] + _step_cost(k, batch, padded)
            if cost < best[j]:
                best[j], cut[j] = cost, i
    if best[n] > (1 - MIN_SAVING) * step_seconds(configs, **shape):
        return [order]
    groups, j = [], n
    while j > 0:
        groups.append([m for u in units[cut[j] : j] for m in u])
        j = cut[j]
    return groups[::-1]
