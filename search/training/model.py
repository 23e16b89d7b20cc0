"""The MLP, built from plain values, and the L1 penalty that goes with it."""

from __future__ import annotations

import torch
from torch import nn

from search.training.config import TrainConfig

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "hardsigmoid": nn.Hardsigmoid,
}


def build_mlp(config: TrainConfig, *, in_features: int, n_classes: int) -> nn.Sequential:
    """Per hidden layer: Linear -> [BatchNorm1d] -> activation -> Dropout; then a Linear head.

    The head returns logits: cross-entropy applies the softmax. With BatchNorm right after it,
    a hidden Linear's bias is redundant, but it is kept so the notebook's layer shapes match.
    """
    layers: list[nn.Module] = []
    width = in_features
    for out in config.hidden:
        layers.append(nn.Linear(width, out))
        if config.batchnorm:
            layers.append(nn.BatchNorm1d(out, momentum=config.bn_momentum))
        layers.append(_ACTIVATIONS[config.activation]())
        if config.dropout > 0:
            layers.append(nn.Dropout(config.dropout))
        width = out
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def l1_weights(model: nn.Module) -> list[torch.Tensor]:
    """The tensors L1 regularises: Linear weight matrices only, never biases or BatchNorm."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear)]


def l1_penalty(weights: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([w.abs().sum() for w in weights]).sum()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def param_count(config: TrainConfig, *, in_features: int, n_classes: int) -> int:
    """What `count_params(build_mlp(config, ...))` returns, without building the model."""
    total, width = 0, in_features
    for out in config.hidden:
        total += width * out + out + (2 * out if config.batchnorm else 0)
        width = out
    return total + width * n_classes + n_classes


def architecture(config: TrainConfig, *, in_features: int, n_classes: int) -> str:
    """One line naming every layer, e.g. `3072-512(bn,relu,p=0.3)-256(bn,relu,p=0.3)-10`."""
    parts = [str(in_features)]
    for out in config.hidden:
        tags = (["bn"] if config.batchnorm else []) + [config.activation]
        if config.dropout > 0:
            tags.append(f"p={config.dropout:.2g}")
        parts.append(f"{out}({','.join(tags)})")
    parts.append(str(n_classes))
    return "-".join(parts)
