"""K MLPs held as one: every member's parameters are a row of one [K, P] tensor, each layer a view.

A layer of the stack is one batched matmul for all K members (`baddbmm` over [K, B, in] and
[K, out, in]). Members may differ in everything that shapes no tensor of the stack: widths are
padded to the widest member's, with zero weights that a mask keeps at zero (they get no
gradient, so weight decay, L1 and the optimizers leave them at zero), and BatchNorm is applied
to the members that have it. Depth and batch size are the same for all: the search stacks only
trials that share them (search.tuning.stacking). Each layer's weight view is given a gradient
view of one [K, P] gradient tensor, which autograd accumulates into in place, so the optimizer
(search.training.stack_optim) steps all members with a few whole-tensor operations.

Activations are applied per run of neighbouring members that share one (members are ordered by
optimizer, then activation); dropout draws each member's mask from its own generator with the
shape and order its own `nn.Dropout` would, so a member trains as it does alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from search.training.config import TrainConfig

BN_EPS = 1e-5  # nn.BatchNorm1d's default

_ACTIVATIONS = {
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
    "gelu": F.gelu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "hardsigmoid": F.hardsigmoid,
}


@dataclass(frozen=True)
class Layout:
    """Where each of a member's tensors lies in its row of the stack's [K, P] tensor."""

    in_features: int
    n_classes: int
    widths: tuple[int, ...]  # each hidden layer's padded width
    batchnorm: bool  # any member has BatchNorm: BN weights and running stats exist

    def entries(self) -> list[tuple[str, tuple[int, ...]]]:
        out, width = [], self.in_features
        for i, w in enumerate(self.widths):
            out += [(f"w{i}", (w, width)), (f"b{i}", (w,))]
            if self.batchnorm:
                out += [(f"g{i}", (w,)), (f"be{i}", (w,))]
            width = w
        return out + [("wh", (self.n_classes, width)), ("bh", (self.n_classes,))]

    @property
    def size(self) -> int:
        return sum(math.prod(shape) for _, shape in self.entries())

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each entry as a view of `flat` ([K, size]): [K, *shape]."""
        out, at = {}, 0
        for name, shape in self.entries():
            n = math.prod(shape)
            out[name] = flat[:, at : at + n].view(len(flat), *shape)
            at += n
        return out

    def flops(self) -> int:
        """Multiply-adds of one sample's forward pass through one member's padded layers."""
        dims = (self.in_features, *self.widths, self.n_classes)
        return sum(a * b for a, b in zip(dims, dims[1:], strict=False))


def layout_of(configs: list[TrainConfig], in_features: int, n_classes: int) -> Layout:
    depth = len(configs[0].hidden)
    widths = tuple(max(c.hidden[i] for c in configs) for i in range(depth))
    return Layout(in_features, n_classes, widths, any(c.batchnorm for c in configs))


def member_flops(config: TrainConfig, in_features: int, n_classes: int) -> int:
    dims = (in_features, *config.hidden, n_classes)
    return sum(a * b for a, b in zip(dims, dims[1:], strict=False))


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model if isinstance(m, nn.Linear)]


def _norms(model: nn.Module) -> list[nn.BatchNorm1d]:
    return [m for m in model if isinstance(m, nn.BatchNorm1d)]


class StackedMLP:
    """The members' weights as rows of `param` [K, P], their gradients as rows of `grad`."""

    def __init__(self, configs: list[TrainConfig], models: list[nn.Module], layout: Layout, device):
        self.configs, self.layout = list(configs), layout
        k = len(configs)
        self.param = torch.zeros(k, layout.size, device=device)
        self.grad = torch.zeros_like(self.param)
        self.running = {}  # BatchNorm running statistics, [K, width] per layer
        if layout.batchnorm:
            for i, w in enumerate(layout.widths):
                self.running[f"rm{i}"] = torch.zeros(k, w, device=device)
                self.running[f"rv{i}"] = torch.ones(k, w, device=device)
        views = layout.views(self.param)
        with torch.no_grad():
            for row, (config, model) in enumerate(zip(configs, models, strict=True)):
                for name, tensor in _member_tensors(model, config.batchnorm).items():
                    if name in views:
                        views[name][row][tuple(slice(0, s) for s in tensor.shape)] = tensor
                    else:
                        self.running[name][row, : len(tensor)] = tensor
        self._prepare()

    def _prepare(self) -> None:
        """The per-member columns and views the steps use, for the current members and layout."""
        configs, device, layout = self.configs, self.param.device, self.layout
        k = len(configs)
        self.views = self.layout.views(self.param)
        grads = self.layout.views(self.grad)
        for name, v in self.views.items():
            v.requires_grad_(True)
            v.grad = grads[name]  # autograd adds each step's gradient into this view, in place

        def column(values, *, dims: int = 3) -> torch.Tensor:
            return torch.tensor(values, device=device, dtype=torch.float32).view(k, *([1] * (dims - 1)))

        self.has_bn = column([c.batchnorm for c in configs]).bool()
        self.all_bn = all(c.batchnorm for c in configs)
        self.bn_momentum = column([c.bn_momentum for c in configs], dims=2)
        self.keep_p = column([1.0 - c.dropout for c in configs])
        self.dropout = any(c.dropout > 0 for c in configs)
        self.l1 = column([c.l1 for c in configs], dims=1)
        # Plain bools, decided once: a test of a device tensor in the step would sync every batch.
        self.any_l1 = any(c.l1 > 0 for c in configs)
        self.any_smoothing = any(c.label_smoothing > 0 for c in configs)
        self.smoothing = column([c.label_smoothing for c in configs], dims=2)
        self.activation_runs = []
        for c in configs:
            if self.activation_runs and self.activation_runs[-1][2] == c.activation:
                self.activation_runs[-1][1] += 1
            else:
                a = self.activation_runs[-1][1] if self.activation_runs else 0
                self.activation_runs.append([a, a + 1, c.activation])
        # Real (unpadded) units of each member per layer, as 0/1 masks [K, 1, width].
        self.unit_masks = []
        for i, w in enumerate(layout.widths):
            mask = torch.zeros(k, 1, w, device=device)
            for row, c in enumerate(configs):
                mask[row, :, : c.hidden[i]] = 1.0
            padded = any(c.hidden[i] < w for c in configs)
            self.unit_masks.append(mask if padded else None)

    # ------------------------------------------------------------------ forward

    def forward(
        self, x: torch.Tensor, *, train: bool, drop_gens: list[torch.Generator] | None = None, first=None
    ) -> torch.Tensor:
        """x [K, B, in] (each member's batch), or [B, in] (one batch for all: scoring, with
        `first` the first layer's weights as one [in, K*width] matrix) -> logits [K, B, n_classes];
        in training, BatchNorm's running stats move."""
        v, h = self.views, x
        k = len(self.configs)
        for i in range(len(self.layout.widths)):
            w, b = v[f"w{i}"], v[f"b{i}"]
            if h.dim() == 2:  # one input for all members: one matmul against all their weights
                z = torch.addmm(b.reshape(-1), h, first).view(len(h), k, -1).transpose(0, 1)
            else:
                z = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if self.layout.batchnorm:
                z = self._batchnorm(z, i, train=train)
            z = self._activate(z)
            mask = self._dropout_mask(z, i, drop_gens) if train and self.dropout else self.unit_masks[i]
            h = z if mask is None else z * mask
        if h.dim() == 2:  # a linear model scoring one input
            h = h.expand(k, *h.shape)
        return torch.baddbmm(v["bh"].unsqueeze(1), h, v["wh"].transpose(1, 2))

    def _batchnorm(self, z: torch.Tensor, i: int, *, train: bool) -> torch.Tensor:
        """PyTorch's own batch_norm kernel over K*width channels (one kernel for all members, and
        the arithmetic `nn.BatchNorm1d` does); the running statistics move with each member's
        own momentum."""
        k, b, w = z.shape
        rm, rv = self.running[f"rm{i}"], self.running[f"rv{i}"]
        channels = z.float().transpose(0, 1).reshape(b, k * w)
        gamma, beta = self.views[f"g{i}"].reshape(k * w), self.views[f"be{i}"].reshape(k * w)
        if train:
            normed, mean, invstd = torch.native_batch_norm(
                channels, gamma, beta, None, None, True, 0.0, BN_EPS
            )
            with torch.no_grad():  # the running statistics move with each member's own momentum
                m, n = self.bn_momentum, b
                var = (invstd.view(k, w).double().pow(-2) - BN_EPS).float() * (n / max(1, n - 1))
                rm.mul_(1 - m).add_(m * mean.view(k, w))
                rv.mul_(1 - m).add_(m * var)
        else:
            normed = F.batch_norm(channels, rm.reshape(-1), rv.reshape(-1), gamma, beta, eps=BN_EPS)
        normed = normed.view(b, k, w).transpose(0, 1)
        return normed if self.all_bn else torch.where(self.has_bn, normed, z)

    def _activate(self, z: torch.Tensor) -> torch.Tensor:
        if len(self.activation_runs) == 1:
            return _ACTIVATIONS[self.activation_runs[0][2]](z)
        return torch.cat([_ACTIVATIONS[name](z[a:b]) for a, b, name in self.activation_runs])

    def _dropout_mask(self, z: torch.Tensor, i: int, gens: list[torch.Generator]) -> torch.Tensor:
        """0 for dropped and padded units, 1/(1-p) for kept ones: each member's draw is the one
        `nn.Dropout` makes on the CPU (bernoulli of its [B, width] activations) from its stream."""
        k, b, _ = z.shape
        mask = torch.ones_like(z) if self.unit_masks[i] is None else self.unit_masks[i].expand_as(z).clone()
        for row, c in enumerate(self.configs):
            if c.dropout > 0:
                mask[row, :, : c.hidden[i]].bernoulli_(1.0 - c.dropout, generator=gens[row])
        return mask.div_(self.keep_p)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each member's training loss [K]: cross-entropy with its label smoothing, plus its L1."""
        logp = F.log_softmax(logits.float(), dim=2)
        nll = -logp.gather(2, y.unsqueeze(2)).squeeze(2)  # [K, B]
        if self.any_smoothing:
            nll = (1 - self.smoothing) * nll - self.smoothing * logp.mean(2)
        loss = nll.mean(1)
        if self.any_l1:
            weights = [self.views[f"w{i}"] for i in range(len(self.layout.widths))] + [self.views["wh"]]
            loss = loss + self.l1 * torch.stack([w.abs().sum((1, 2)) for w in weights]).sum(0)
        return loss

    @torch.no_grad()
    def evaluate(
        self, x: torch.Tensor, y: torch.Tensor, rows_per_pass: int
    ) -> tuple[list[float], list[float]]:
        """Each member's (mean cross-entropy, accuracy) on (x, y) in eval mode; one host sync."""
        k = len(self.configs)
        loss_sum = torch.zeros(k, device=x.device)
        correct = torch.zeros(k, device=x.device)
        first = None
        if self.layout.widths:  # one copy per scoring: every pass is then one matmul for all members
            w0 = self.views["w0"]
            first = w0.reshape(-1, w0.shape[2]).T
        for at in range(0, len(x), rows_per_pass):
            xb, yb = x[at : at + rows_per_pass], y[at : at + rows_per_pass]
            logits = self.forward(xb, train=False, first=first).float()
            target = yb.expand(k, len(yb))
            loss_sum += F.cross_entropy(logits.transpose(1, 2), target, reduction="none").sum(1)
            correct += (logits.argmax(2) == target).sum(1)
        stats = torch.stack([loss_sum, correct]).tolist()
        return [s / len(x) for s in stats[0]], [c / len(x) for c in stats[1]]

    # ------------------------------------------------------------------ members in and out

    def member_tensors(self, row: int) -> dict[str, torch.Tensor]:
        """Member `row`'s own tensors, unpadded, named as `_member_tensors` names them."""
        c = self.configs[row]
        dims = (self.layout.in_features, *c.hidden, self.layout.n_classes)
        out = {}
        for i in range(len(c.hidden)):
            out[f"w{i}"] = self.views[f"w{i}"][row, : dims[i + 1], : dims[i]]
            out[f"b{i}"] = self.views[f"b{i}"][row, : dims[i + 1]]
            if c.batchnorm:
                for name in ("g", "be", "rm", "rv"):
                    src = self.running if name in ("rm", "rv") else self.views
                    out[f"{name}{i}"] = src[f"{name}{i}"][row, : dims[i + 1]]
        out["wh"] = self.views["wh"][row, :, : dims[-2]]
        out["bh"] = self.views["bh"][row]
        return out

    def write_member(self, row: int, model: nn.Module, steps: int) -> None:
        """Copy member `row`'s weights and running statistics into its own `model`."""
        with torch.no_grad():
            for name, tensor in _member_tensors(model, self.configs[row].batchnorm).items():
                tensor.copy_(self.member_tensors(row)[name])
            for bn in _norms(model):
                bn.num_batches_tracked.fill_(steps)

    def keep(self, rows: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
        """Drop the other members, and the padding only they needed; returns the function that
        carries any [n, P] tensor of the old layout (optimizer state) over to the new one."""
        old, configs = self.layout, [self.configs[r] for r in rows]
        new = layout_of(configs, old.in_features, old.n_classes)
        index = torch.tensor(rows, device=self.param.device)

        def move(flat: torch.Tensor) -> torch.Tensor:
            out = flat.new_zeros(len(flat), new.size)
            src, dst = old.views(flat.detach()), new.views(out)
            for name, view in dst.items():
                view.copy_(src[name][(slice(None), *(slice(0, s) for s in view.shape[1:]))])
            return out

        with torch.no_grad():
            self.param = move(self.param.index_select(0, index))
            self.grad = torch.zeros_like(self.param)
            self.running = {
                name: t.index_select(0, index)[:, : new.widths[int(name[2:])]].contiguous()
                for name, t in self.running.items()
                if new.batchnorm
            }
        self.configs, self.layout = configs, new
        self._prepare()
        return move


def _member_tensors(model: nn.Module, batchnorm: bool) -> dict[str, torch.Tensor]:
    """A model built by `build_mlp`, its tensors named as the stack's layout names them."""
    linears, norms = _linears(model), _norms(model)
    out = {}
    for i, lin in enumerate(linears[:-1]):
        out[f"w{i}"], out[f"b{i}"] = lin.weight, lin.bias
        if batchnorm:
            bn = norms[i]
            out[f"g{i}"], out[f"be{i}"] = bn.weight, bn.bias
            out[f"rm{i}"], out[f"rv{i}"] = bn.running_mean, bn.running_var
    out["wh"], out["bh"] = linears[-1].weight, linears[-1].bias
    return out
