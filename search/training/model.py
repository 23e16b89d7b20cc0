"""The MLP as a portable `nn.Sequential` in the notebook's layer order, and its shape's arithmetic:
what training (search.training.stack) hands back, export saves and `search.load_best` returns,
so a user loads the state_dict with nothing but PyTorch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from search.data.dataset import Dataset
from search.data.whiten import fold_into_first_linear
from search.device import autocast
from search.errors import UserError
from search.training.config import TrainConfig
from search.training.embeddings import (
    build_embedding,
    embedded_columns,
    embedding_flops,
    embedding_params,
    input_width,
)

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
    config: TrainConfig,
    *,
    in_features: int,
    n_classes: int,
    image_shape: tuple[int, ...] | None = None,
    numeric_features: int = 0,
) -> nn.Sequential:
    """Per hidden layer: Linear -> [BatchNorm1d or LayerNorm] -> activation -> Dropout (with
    `residual`, each hidden layer after the first a `Block`); then a Linear head.

    The head returns logits: cross-entropy applies the softmax. With BatchNorm right after it,
    a hidden Linear's bias is redundant (its true gradient is zero, and the engine keeps it so),
    but it is kept so the notebook's layer shapes match. With `tta_hflip` the model is a
    `MirrorAveraged` Sequential (the same layers and state_dict), which needs the image shape.

    With `num_embedding = "periodic"` a `PeriodicEmbedding` of the `numeric_features` leading
    columns (a table's numeric ones: `Dataset.numeric_features`) comes first, and the first Linear
    takes its wider output (search.training.embeddings). With `feature_scale` a `FeatureScale` of
    the first Linear's inputs comes next (after the embedding, as RealMLP orders the two). With
    `ensemble_k` = k > 1 the layers are their ensemble forms (TabM's, on [B, k, width]:
    `EnsembleView`, `BatchEnsembleLinear`, the norms per member, an `EnsembleLinear` head) and
    `MemberMean` ends the model: in eval mode it answers with the log of the members' mean
    probability (their mean output for regression, n_classes = 1), in training mode with every
    member's output [B, k, n_classes]; the embedding comes before the members part. ZCA cannot
    fold into a BatchEnsemble first layer (each member scales the inputs its own way), so such a
    model starts with a `Whitening` (buffers the fit fills, identity until then).
    """
    k = config.ensemble_k
    layers: list[nn.Module] = []
    if k > 1 and config.whiten == "zca":
        layers.append(Whitening(in_features))
    if (embedding := build_embedding(config, numeric_features)) is not None:
        layers.append(embedding)
    width = input_width(config, in_features, numeric_features)
    if config.feature_scale:
        layers.append(FeatureScale(width))
    if k > 1:
        layers.append(EnsembleView(k))
    for i, out in enumerate(config.hidden):
        if config.residual and i:
            layers.append(Block(config, out))
            continue
        layers.append(_linear(config, width, out, first=i == 0))
        if (norm := _norm(config, out)) is not None:
            layers.append(norm)
        layers.append(ACTIVATION_MODULES[config.activation]())
        if config.dropout > 0:
            layers.append(nn.Dropout(config.dropout))
        width = out
    if k > 1:
        layers += [EnsembleLinear(width, n_classes, k), MemberMean(regression=n_classes == 1)]
    else:
        layers.append(nn.Linear(width, n_classes))
    if config.tta_hflip:
        if image_shape is None or len(image_shape) != 3:
            raise UserError(f"tta_hflip needs image data (C, H, W); got shape {image_shape}")
        return MirrorAveraged(*layers, width=image_shape[2])
    return nn.Sequential(*layers)


def build_for(config: TrainConfig, data: Dataset) -> nn.Sequential:
    """`build_mlp` for `data` encoded with the config's numeric transform."""
    return build_mlp(config, image_shape=data.image_shape, **shape_of(config, data))


def shape_of(config: TrainConfig, data: Dataset) -> dict[str, int]:
    """The sizes of `data` in the config's numeric transform that the model's shape depends on:
    the keyword arguments of `param_count`, `architecture` and `build_mlp` (with image_shape)."""
    split = data.variant(config.numeric)
    return dict(
        in_features=split.in_features, n_classes=data.n_classes, numeric_features=split.numeric_features
    )


def _linear(config: TrainConfig, width: int, out: int, *, first: bool = False) -> nn.Module:
    if config.ensemble_k > 1:
        return BatchEnsembleLinear(width, out, config.ensemble_k, random_signs=first)
    return nn.Linear(width, out)


def _norm(config: TrainConfig, width: int) -> nn.Module | None:
    k = config.ensemble_k
    if config.batchnorm and k > 1:  # one channel per member and unit
        return EnsembleBatchNorm(k * width, momentum=config.bn_momentum)
    if config.batchnorm:
        return nn.BatchNorm1d(width, momentum=config.bn_momentum)
    if config.layernorm:
        return EnsembleLayerNorm(width, k) if k > 1 else nn.LayerNorm(width)
    return None


class Block(nn.Module):
    """A pre-norm inverted-bottleneck residual block: x + fc2(dropout(act(fc1(norm(x))))), its
    inner width `expansion` times its own. Normalizing the block's input rather than the sum keeps
    an identity path from the first hidden layer to the head."""

    def __init__(self, config: TrainConfig, width: int):
        super().__init__()
        self.norm = _norm(config, width) or nn.Identity()
        self.fc1 = _linear(config, width, width * config.expansion)
        self.act = ACTIVATION_MODULES[config.activation]()
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.fc2 = _linear(config, width * config.expansion, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.drop(self.act(self.fc1(self.norm(x)))))


class FeatureScale(nn.Module):
    """x * weight: one learnable scale per input feature, initialised at 1 (RealMLP's "scale"
    layer, Holzmüller et al. 2024), shared by every ensemble member."""

    def __init__(self, features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class Whitening(nn.Module):
    """(x - mean) @ matrix with fixed buffers: the ZCA transform in front of a model whose first
    layer cannot absorb it (search.data.whiten). Identity until a fit fills it."""

    mean: torch.Tensor
    matrix: torch.Tensor

    def __init__(self, features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("matrix", torch.eye(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.matrix


class EnsembleView(nn.Module):
    """[B, features] -> [B, k, features]: every member sees the same rows (no copy)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1).expand(-1, self.k, -1)


def _uniform(tensor: torch.Tensor, fan_in: int) -> torch.Tensor:
    return nn.init.uniform_(tensor, -(fan_in**-0.5), fan_in**-0.5)  # nn.Linear's bounds


class BatchEnsembleLinear(nn.Module):
    """k linear layers sharing one weight matrix, on [B, k, in] -> [B, k, out]: member j computes
    ((x * r[j]) @ weight.T) * s[j] + bias[j] (BatchEnsemble, Wen et al. 2020, as the `tabm`
    package's `LinearBatchEnsemble` defines it; the same parameter names and shapes). Initialised
    as TabM initialises it: weight and bias as nn.Linear's (every member's bias the same), s at 1,
    r at 1 but in the first layer, where each entry is a random sign (per input, unchunked)."""

    def __init__(self, in_features: int, out_features: int, k: int, *, random_signs: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.k = in_features, out_features, k
        self.weight = nn.Parameter(_uniform(torch.empty(out_features, in_features), in_features))
        self.r = nn.Parameter(torch.ones(k, in_features))
        self.s = nn.Parameter(torch.ones(k, out_features))
        bias = _uniform(torch.empty(out_features), in_features)
        self.bias = nn.Parameter(bias.expand(k, -1).clone())
        if random_signs:
            with torch.no_grad():
                self.r.bernoulli_(0.5).mul_(2).sub_(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x * self.r) @ self.weight.T) * self.s + self.bias


class EnsembleLinear(nn.Module):
    """k independent linear layers on [B, k, in] -> [B, k, out] (the `tabm` package's
    `LinearEnsemble`, TabM's output layer): weight [k, in, out], bias [k, out]."""

    def __init__(self, in_features: int, out_features: int, k: int):
        super().__init__()
        self.weight = nn.Parameter(_uniform(torch.empty(k, in_features, out_features), in_features))
        self.bias = nn.Parameter(_uniform(torch.empty(k, out_features), in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.transpose(0, 1) @ self.weight).transpose(0, 1) + self.bias


class EnsembleBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over k * width channels on [B, k, width]: each member's own statistics and
    affine weights (the `tabm` package's `BatchNorm1dEnsemble`); the state_dict is BatchNorm1d's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1)).view_as(x)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the last dimension of [B, k, width], each member with its own affine
    weights [k, width] (the `tabm` package's `LayerNormEnsemble`)."""

    def __init__(self, width: int, k: int, eps: float = 1e-5):
        super().__init__()
        self.width, self.eps = width, eps
        self.weight = nn.Parameter(torch.ones(k, width))
        self.bias = nn.Parameter(torch.zeros(k, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias, F.layer_norm(x, (self.width,), eps=self.eps), self.weight)


def mean_over_members(outputs: torch.Tensor, dim: int, *, regression: bool) -> torch.Tensor:
    """The members' mean output (regression), or logits whose softmax is their mean probability:
    log(mean_j softmax(outputs_j)), over dimension `dim`."""
    if regression:
        return outputs.mean(dim)
    return torch.logsumexp(outputs.log_softmax(-1), dim=dim) - math.log(outputs.shape[dim])


class MemberMean(nn.Module):
    """An ensemble model's last module: in eval mode the members' outputs [B, k, n] averaged to
    [B, n] (`mean_over_members`), so every consumer of logits takes them unchanged; in training
    mode every member's own output, each of which gets its own loss."""

    def __init__(self, *, regression: bool):
        super().__init__()
        self.regression = regression

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.training else mean_over_members(x, 1, regression=self.regression)


def fold_whitening(model: nn.Module, mean: torch.Tensor, w: torch.Tensor) -> None:
    """Rewrite `model` (a `build_mlp` model trained on (x - mean) @ w) to take x itself: fill its
    `Whitening`, or fold the transform into its first Linear (search.data.whiten), a feature
    scale in front of it first (W diag(s) is the first Linear, s becomes 1)."""
    whitening = [m for m in model.modules() if isinstance(m, Whitening)]
    if whitening:
        with torch.no_grad():
            whitening[0].mean.copy_(mean)
            whitening[0].matrix.copy_(w)
        return
    for scale in (m for m in model.modules() if isinstance(m, FeatureScale)):
        first = next(m for m in model.modules() if isinstance(m, nn.Linear))
        with torch.no_grad():
            first.weight.mul_(scale.weight)
            scale.weight.fill_(1.0)
    fold_into_first_linear(model, mean, w)


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


def dims(config: TrainConfig, in_features: int, n_classes: int, numeric_features: int = 0) -> tuple[int, ...]:
    """Every layer's width, input and output included: (3072, 512, 256, 10); the input is the
    first Linear's (a periodic embedding's output: search.training.embeddings.input_width)."""
    return (input_width(config, in_features, numeric_features), *config.hidden, n_classes)


def layer_shapes(
    config: TrainConfig, in_features: int, n_classes: int, numeric_features: int = 0
) -> list[tuple[int, int]]:
    """(in, out) of every Linear in forward order; a residual block's two. A periodic embedding's
    per-column matrices are not Linears: `embedding_flops` and `embedding_params` count them."""
    first = input_width(config, in_features, numeric_features)
    if not config.residual or len(config.hidden) < 2:
        d = dims(config, in_features, n_classes, numeric_features)
        return list(zip(d, d[1:], strict=False))
    w, inner = config.hidden[0], config.expansion * config.hidden[0]
    return [(first, w), *[(w, inner), (inner, w)] * (len(config.hidden) - 1), (w, n_classes)]


def member_flops(config: TrainConfig, in_features: int, n_classes: int, numeric_features: int = 0) -> int:
    """Multiply-adds of one sample's forward pass through the Linear layers (of every ensemble
    member: each multiplies its own copy of the batch by the shared matrices) and through a
    periodic embedding (once: the members share it)."""
    shapes = layer_shapes(config, in_features, n_classes, numeric_features)
    return config.ensemble_k * sum(a * b for a, b in shapes) + embedding_flops(config, numeric_features)


def param_count(config: TrainConfig, *, in_features: int, n_classes: int, numeric_features: int = 0) -> int:
    """What `count_params(build_mlp(config, ...))` returns, without building the model."""
    k = config.ensemble_k
    *hidden, (a, c) = layer_shapes(config, in_features, n_classes, numeric_features)
    norms = 2 * k * sum(config.hidden) if config.batchnorm or config.layernorm else 0
    scale = input_width(config, in_features, numeric_features) if config.feature_scale else 0
    if k == 1:
        linears = sum(i * o + o for i, o in hidden)
    else:  # a shared matrix, and each member's r [in], s [out] and bias [out]
        linears = sum(i * o + k * (i + 2 * o) for i, o in hidden)
    heads = k * (a * c + c)  # one per member
    return linears + heads + norms + scale + embedding_params(config, numeric_features)


def architecture(config: TrainConfig, *, in_features: int, n_classes: int, numeric_features: int = 0) -> str:
    """One line naming every layer, e.g. `3072-512(bn,relu,p=0.3)-256(bn,relu,p=0.3)-10`; a
    periodic embedding of n numeric columns to d units each from k frequencies tags the inputs
    (`13(plr=10x24,freq=48)-...`, the first Linear takes 13 + 10 * 23), as a feature scale does
    (`64(scale)-...`); an ensemble ends in ` k=32`."""
    tags = []
    if n := embedded_columns(config, numeric_features):
        tags += [f"plr={n}x{config.plr_dim}", f"freq={config.plr_frequencies}"]
    tags += ["scale"] if config.feature_scale else []
    parts = [f"{in_features}({','.join(tags)})" if tags else str(in_features)]
    for i, out in enumerate(config.hidden):
        tags = [f"res*{config.expansion}"] if config.residual and i else []
        tags += {"batch": ["bn"], "layer": ["ln"], "none": []}[config.norm] + [config.activation]
        if config.dropout > 0:
            tags.append(f"p={config.dropout:.2g}")
        parts.append(f"{out}({','.join(tags)})")
    parts.append(str(n_classes))
    return "-".join(parts) + (f" k={config.ensemble_k}" if config.ensemble_k > 1 else "")


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
