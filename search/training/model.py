"""The MLP as a portable `nn.Sequential` in the notebook's layer order, and its shape's arithmetic:
what training (search.training.stack) hands back, export saves and `search.load_best` returns,
so a user loads the state_dict with nothing but PyTorch."""

from __future__ import annotations

import math

import torch
from torch import nn

from search.device import autocast
from search.errors import UserError
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


def build_mlp(
    config: TrainConfig, *, in_features: int, n_classes: int, image_shape: tuple[int, ...] | None = None
) -> nn.Sequential:
    """Per hidden layer: Linear -> [BatchNorm1d or LayerNorm] -> activation -> Dropout (with
    `residual`, each hidden layer after the first a `Block`); then a Linear head.

    The head returns logits: cross-entropy applies the softmax. With BatchNorm right after it,
    a hidden Linear's bias is redundant (its true gradient is zero, and the engine keeps it so),
    but it is kept so the notebook's layer shapes match. With `tta_hflip` the model is a
    `MirrorAveraged` Sequential (the same layers and state_dict), which needs the image shape.
    """
    layers: list[nn.Module] = []
    width = in_features
    for i, out in enumerate(config.hidden):
        if config.residual and i:
            layers.append(Block(config, out))
            continue
        layers.append(nn.Linear(width, out))
        if (norm := _norm(config, out)) is not None:
            layers.append(norm)
        layers.append(ACTIVATION_MODULES[config.activation]())
        if config.dropout > 0:
            layers.append(nn.Dropout(config.dropout))
        width = out
    layers.append(nn.Linear(width, n_classes))
    if config.tta_hflip:
        if image_shape is None or len(image_shape) != 3:
            raise UserError(f"tta_hflip needs image data (C, H, W); got shape {image_shape}")
        return MirrorAveraged(*layers, width=image_shape[2])
    return nn.Sequential(*layers)


def _norm(config: TrainConfig, width: int) -> nn.Module | None:
    if config.batchnorm:
        return nn.BatchNorm1d(width, momentum=config.bn_momentum)
    return nn.LayerNorm(width) if config.layernorm else None


class Block(nn.Module):
    """A pre-norm inverted-bottleneck residual block: x + fc2(dropout(act(fc1(norm(x))))), its
    inner width `expansion` times its own. Normalizing the block's input rather than the sum keeps
    an identity path from the first hidden layer to the head."""

    def __init__(self, config: TrainConfig, width: int):
        super().__init__()
        self.norm = _norm(config, width) or nn.Identity()
        self.fc1 = nn.Linear(width, width * config.expansion)
        self.act = ACTIVATION_MODULES[config.activation]()
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.fc2 = nn.Linear(width * config.expansion, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.drop(self.act(self.fc1(self.norm(x)))))


def mirrored(x: torch.Tensor, width: int) -> torch.Tensor:
    """Rows of flattened [C, H, W] images, each mirrored left-right: every run of `width` values
    (one image row of one channel) reversed."""
    return x.reshape(len(x), -1, width).flip(2).reshape(x.shape)


def mean_of_probabilities(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log((softmax(a) + softmax(b)) / 2): logits whose softmax is the two's mean probability."""
    both = torch.stack([a.log_softmax(-1), b.log_softmax(-1)])
    return torch.logsumexp(both, dim=0) - math.log(2.0)


class MirrorAveraged(nn.Sequential):
    """The MLP that, in eval mode, answers with the mean probability of an image and its mirror
    (test-time flips); in training mode it is the plain Sequential. Its state_dict is the
    Sequential's, so `nn.Sequential` loads the same weights."""

    def __init__(self, *layers: nn.Module, width: int):
        super().__init__(*layers)
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(x)
        return mean_of_probabilities(super().forward(x), super().forward(mirrored(x, self.width)))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dims(config: TrainConfig, in_features: int, n_classes: int) -> tuple[int, ...]:
    """Every layer's width, input and output included: (3072, 512, 256, 10)."""
    return (in_features, *config.hidden, n_classes)


def layer_shapes(config: TrainConfig, in_features: int, n_classes: int) -> list[tuple[int, int]]:
    """(in, out) of every Linear in forward order; a residual block's two."""
    if not config.residual or len(config.hidden) < 2:
        d = dims(config, in_features, n_classes)
        return list(zip(d, d[1:], strict=False))
    w, inner = config.hidden[0], config.expansion * config.hidden[0]
    return [(in_features, w), *[(w, inner), (inner, w)] * (len(config.hidden) - 1), (w, n_classes)]


def member_flops(config: TrainConfig, in_features: int, n_classes: int) -> int:
    """Multiply-adds of one sample's forward pass through the Linear layers."""
    return sum(a * b for a, b in layer_shapes(config, in_features, n_classes))


def param_count(config: TrainConfig, *, in_features: int, n_classes: int) -> int:
    """What `count_params(build_mlp(config, ...))` returns, without building the model."""
    norms = 2 * sum(config.hidden) if config.batchnorm or config.layernorm else 0
    inner = config.expansion * sum(config.hidden[1:]) if config.residual else 0  # blocks' fc1 biases
    d = dims(config, in_features, n_classes)
    return member_flops(config, in_features, n_classes) + sum(d[1:]) + inner + norms


def architecture(config: TrainConfig, *, in_features: int, n_classes: int) -> str:
    """One line naming every layer, e.g. `3072-512(bn,relu,p=0.3)-256(bn,relu,p=0.3)-10`."""
    parts = [str(in_features)]
    for i, out in enumerate(config.hidden):
        tags = [f"res*{config.expansion}"] if config.residual and i else []
        tags += {"batch": ["bn"], "layer": ["ln"], "none": []}[config.norm] + [config.activation]
        if config.dropout > 0:
            tags.append(f"p={config.dropout:.2g}")
        parts.append(f"{out}({','.join(tags)})")
    parts.append(str(n_classes))
    return "-".join(parts)


EVAL_BATCH = 8192  # samples per forward pass when scoring a model; memory-bound, not a hyperparameter


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A model's logits for every row of x, in eval mode: float32, or float64 for float64 inputs."""
    model.eval()
    device = x.device
    outs = []
    for i in range(0, len(x), EVAL_BATCH):
        with autocast(device):
            outs.append(model(x[i : i + EVAL_BATCH]).to(torch.promote_types(x.dtype, torch.float32)))
    if len(outs) == 1:
        return outs[0]
    return torch.cat(outs) if outs else torch.empty(0, device=device)
