"""The periodic (PLR) embedding of a table's numeric columns (Gorishniy et al. 2022, arXiv 2203.05556).

Each of the n numeric columns, as its `numeric` transform scaled it, becomes d units: with k
learned frequencies c (initialised from N(0, sigma), truncated at 3 sigma), its value x gives
v = [cos(2 pi c x), sin(2 pi c x)] (2k values), then ReLU(v @ W + b) with a [2k, d] matrix W and a
bias b of the column's own. That is the paper's "PLR" embedding as its authors' package computes it,
`rtdl_num_embeddings.PeriodicEmbeddings(n, d, n_frequencies=k, frequency_init_scale=sigma,
activation=True, lite=False)`, the same initialisation and parameter shapes
(tests/training/test_embeddings.py holds the two together).

The numeric columns lead a table's encoded rows (search.data.tables: numeric, then missing-value
indicators, then one-hot categories), so the embedding takes the first n columns of [B, in] and
passes the rest: the first Linear sees [B, n*d + in - n]. One embedding per model, before an
ensemble's members part (they share it, as TabM's members share theirs). `periodic` is the
arithmetic; the engine (search.training.stack) runs it for every member of a stack at once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from search.training.config import TrainConfig


def embedded_columns(config: TrainConfig, numeric_features: int) -> int:
    """How many of the leading `numeric_features` columns the config embeds: all or none."""
    return numeric_features if config.embeds else 0


def input_width(config: TrainConfig, in_features: int, numeric_features: int) -> int:
    """The first Linear's input width: each embedded column's one value becomes plr_dim."""
    return in_features + embedded_columns(config, numeric_features) * (config.plr_dim - 1)


def embedding_params(config: TrainConfig, numeric_features: int) -> int:
    """The embedding's parameters: per column k frequencies, a [2k, d] matrix and d biases."""
    k, d = config.plr_frequencies, config.plr_dim
    return embedded_columns(config, numeric_features) * (k + 2 * k * d + d)


def embedding_flops(config: TrainConfig, numeric_features: int) -> int:
    """Multiply-adds of one row's embedding: its [2k, d] matmul per column."""
    return embedded_columns(config, numeric_features) * 2 * config.plr_frequencies * config.plr_dim


def periodic(
    x: torch.Tensor, frequencies: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """x [*M, B, in] -> [*M, B, n*d + in - n]: its first n columns embedded, the rest as they were.
    frequencies [*M, n, k], weight [*M, n, 2k, d], bias [*M, n, d]; *M are leading model dims (a
    stack's members) or none. The operations and their order are rtdl_num_embeddings'."""
    n = frequencies.shape[-2]
    z = 2 * math.pi * frequencies.unsqueeze(-3) * x[..., :n, None]  # [*M, B, n, k]
    z = torch.cat([torch.cos(z), torch.sin(z)], -1)  # [*M, B, n, 2k]
    z = (z.transpose(-2, -3) @ weight).transpose(-2, -3)  # each column's own matrix: [*M, B, n, d]
    z = F.relu(z + bias.unsqueeze(-3))
    return torch.cat([z.flatten(-2), x[..., n:]], -1)


class PeriodicEmbedding(nn.Module):
    """The first `n_features` columns of [B, in] embedded (`periodic`), the others passed on.
    `frequencies` is rtdl_num_embeddings' `periodic.weight`, `weight` and `bias` its `linear`'s;
    initialised as it initialises them."""

    def __init__(self, n_features: int, *, frequencies: int, dim: int, sigma: float):
        super().__init__()
        self.frequencies = nn.Parameter(torch.empty(n_features, frequencies))
        self.weight = nn.Parameter(torch.empty(n_features, 2 * frequencies, dim))
        self.bias = nn.Parameter(torch.empty(n_features, dim))
        nn.init.trunc_normal_(self.frequencies, 0.0, sigma, a=-3 * sigma, b=3 * sigma)
        bound = (2 * frequencies) ** -0.5
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return periodic(x, self.frequencies, self.weight, self.bias)

    def extra_repr(self) -> str:
        n, k, d = *self.frequencies.shape, self.bias.shape[1]
        return f"{n} numeric columns, {k} frequencies each, to {d} units each"


def build_embedding(config: TrainConfig, numeric_features: int) -> PeriodicEmbedding | None:
    """The config's embedding of `numeric_features` leading columns; None where it embeds none."""
    n = embedded_columns(config, numeric_features)
    if not n:
        return None
    return PeriodicEmbedding(
        n, frequencies=config.plr_frequencies, dim=config.plr_dim, sigma=config.plr_sigma
    )
