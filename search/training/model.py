"""The MLP as a portable `nn.Sequential` in the notebook's layer order, and its shape's arithmetic:
what training (search.training.stack) hands back, export saves and `search.load_best` returns,
so a user loads the state_dict with nothing but PyTorch."""

from __future__ import annotations

from torch import nn

from search.training.config import TrainConfig

ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
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
    a hidden Linear's bias is redundant (its true gradient is zero, and the engine keeps it so),
    but it is kept so the notebook's layer shapes match.
    """
    layers: list[nn.Module] = []
    width = in_features
    for out in config.hidden:
        layers.append(nn.Linear(width, out))
        if config.batchnorm:
            layers.append(nn.BatchNorm1d(out, momentum=config.bn_momentum))
        layers.append(ACTIVATION_MODULES[config.activation]())
        if config.dropout > 0:
            layers.append(nn.Dropout(config.dropout))
        width = out
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dims(config: TrainConfig, in_features: int, n_classes: int) -> tuple[int, ...]:
    """Every layer's width, input and output included: (3072, 512, 256, 10)."""
    return (in_features, *config.hidden, n_classes)


def member_flops(config: TrainConfig, in_features: int, n_classes: int) -> int:
    """Multiply-adds of one sample's forward pass through the Linear layers."""
    d = dims(config, in_features, n_classes)
    return sum(a * b for a, b in zip(d, d[1:], strict=False))


def param_count(config: TrainConfig, *, in_features: int, n_classes: int) -> int:
    """What `count_params(build_mlp(config, ...))` returns, without building the model."""
    bn = 2 * sum(config.hidden) if config.batchnorm else 0
    d = dims(config, in_features, n_classes)
    return member_flops(config, in_features, n_classes) + sum(d[1:]) + bn


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
