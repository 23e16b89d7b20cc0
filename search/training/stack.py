"""K MLPs held as one: every member's parameters are a row of one [K, P] tensor, each layer a view.

The engine's model, for a lone trial (K = 1) and a stack alike. A layer is one batched matmul for
all K members (`baddbmm` of [K, B, in] by [K, in, out]: weights are kept transposed from
nn.Linear's [out, in], so their gradient comes out in their own layout, 1.7x faster per step on
the CPU than accumulating a transposed one). Widths are padded to the widest member's with zero
weights that a mask keeps at zero; BatchNorm applies to the members that have it; depth and batch
size are shared. Each weight view's gradient is a view of one [K, P] tensor that autograd adds into,
so the optimizer (search.training.optim) steps each member's model as one contiguous row. Dropout
draws each member's mask from its own generator. A bias right before BatchNorm has a true gradient
of exactly zero (BatchNorm subtracts the batch mean); its computed one is rounding noise, which Adam
and RMSprop would normalize into lr-sized steps, so it is set to zero.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from search.training.config import TrainConfig
from search.training.model import Block, dims

BN_EPS = 1e-5  # nn.BatchNorm1d's default
LN_EPS = 1e-5  # nn.LayerNorm's default

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
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
    layernorm: bool = False  # any member has LayerNorm: its weights (in the same entries) exist
    expansion: int = 0  # residual blocks after the first layer, this many times wider inside; 0: none

    def entries(self) -> list[tuple[str, tuple[int, ...]]]:
        """Per plain layer i: w{i} [in, out], b{i}, then its norm's g{i}, be{i}. Per residual block
        i: the norm of its input (g{i}, be{i}), then w{i} [w, e*w], b{i}, u{i} [e*w, w], c{i}."""
        out: list[tuple[str, tuple[int, ...]]] = []
        width = self.in_features
        norms = self.batchnorm or self.layernorm
        for i, w in enumerate(self.widths):
            if self.expansion and i:
                inner = self.expansion * w
                out += [(f"g{i}", (w,)), (f"be{i}", (w,))] if norms else []
                out += [(f"w{i}", (w, inner)), (f"b{i}", (inner,)), (f"u{i}", (inner, w)), (f"c{i}", (w,))]
                continue
            out += [(f"w{i}", (width, w)), (f"b{i}", (w,))]
            if norms:
                out += [(f"g{i}", (w,)), (f"be{i}", (w,))]
            width = w
        return out + [("wh", (width, self.n_classes)), ("bh", (self.n_classes,))]

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
        return sum(math.prod(shape) for _, shape in self.entries() if len(shape) == 2)


def layout_of(configs: list[TrainConfig], in_features: int, n_classes: int) -> Layout:
    depth = len(configs[0].hidden)
    widths = tuple(max(c.hidden[i] for c in configs) for i in range(depth))
    expansion = configs[0].expansion if configs[0].residual else 0  # shared: the stack key holds it
    norms = any(c.batchnorm for c in configs), any(c.layernorm for c in configs)
    return Layout(in_features, n_classes, widths, *norms, expansion=expansion)


def member_slices(config: TrainConfig, layout: Layout) -> dict[str, tuple[slice, ...]]:
    """Where a member's own (unpadded) tensors lie inside each padded entry, BN statistics
    (`rm`, `rv`) included; norm entries only for a member with that norm."""
    names = {"batch": ("b", "g", "be", "rm", "rv"), "layer": ("b", "g", "be"), "none": ("b",)}[config.norm]
    d = dims(config, layout.in_features, layout.n_classes)
    out: dict[str, tuple[slice, ...]] = {}
    for i in range(len(config.hidden)):
        out.update({f"{n}{i}": (slice(0, d[i + 1]),) for n in names})
        if layout.expansion and i:  # a block: its norm and output on the stream, w{i} -> inner
            inner = slice(0, config.expansion * d[i + 1])
            out[f"w{i}"], out[f"b{i}"] = (slice(0, d[i]), inner), (inner,)
            out[f"u{i}"], out[f"c{i}"] = (inner, slice(0, d[i + 1])), (slice(0, d[i + 1]),)
        else:
            out[f"w{i}"] = (slice(0, d[i]), slice(0, d[i + 1]))
    out["wh"] = (slice(0, d[-2]), slice(None))
    out["bh"] = (slice(None),)
    return out


def transfer(src: torch.Tensor, src_layout: Layout, dst: torch.Tensor, dst_layout: Layout) -> None:
    """Copy [n, P] tensors from one layout into another, entry by entry: each entry's region
    the two share (a wider layout's padding stays as it was in `dst`)."""
    a, b = src_layout.views(src), dst_layout.views(dst)
    for name, view in b.items():
        if name in a:
            shared = tuple(
                slice(0, min(x, y)) for x, y in zip(a[name].shape[1:], view.shape[1:], strict=True)
            )
            region = (slice(None), *shared)
            view[region].copy_(a[name][region])


def _modules(model: nn.Sequential, kind: type | tuple[type, ...]) -> list:
    return [m for m in model if isinstance(m, kind)]


def portable_tensors(model: nn.Sequential) -> dict[str, torch.Tensor]:
    """A model built by `build_mlp`, its tensors named as the stack's layout names them (the
    weights as transposed views: the stack keeps them [in, out])."""
    linears = _modules(model, nn.Linear)  # the first hidden layer (if any) and the head
    norms = _modules(model, (nn.BatchNorm1d, nn.LayerNorm))
    out: dict[str, torch.Tensor] = {}

    def norm_tensors(i: int, norm: nn.Module) -> None:
        if isinstance(norm, (nn.BatchNorm1d, nn.LayerNorm)):
            out[f"g{i}"], out[f"be{i}"] = norm.weight, norm.bias
        if isinstance(norm, nn.BatchNorm1d):
            assert norm.running_mean is not None and norm.running_var is not None  # build_mlp tracks them
            out[f"rm{i}"], out[f"rv{i}"] = norm.running_mean, norm.running_var

    for i, lin in enumerate(linears[:-1]):
        out[f"w{i}"], out[f"b{i}"] = lin.weight.T, lin.bias
        if norms:
            norm_tensors(i, norms[i])
    for i, block in enumerate(_modules(model, Block), start=len(linears) - 1):
        norm_tensors(i, block.norm)
        out[f"w{i}"], out[f"b{i}"] = block.fc1.weight.T, block.fc1.bias
        out[f"u{i}"], out[f"c{i}"] = block.fc2.weight.T, block.fc2.bias
    out["wh"], out["bh"] = linears[-1].weight.T, linears[-1].bias
    return out


class StackedMLP:
    """The members' weights as rows of `param` [K, P], their gradients as rows of `grad`."""

    def __init__(
        self, configs: list[TrainConfig], models: list[nn.Sequential], layout: Layout, device, dtype, *,
        regression: bool = False,
    ):  # fmt: skip
        self.configs, self.layout, self.regression = list(configs), layout, regression
        k = len(configs)
        self.param = torch.zeros(k, layout.size, device=device, dtype=dtype)
        self.grad = torch.zeros_like(self.param)
        self.running = {}  # BatchNorm running statistics, [K, width] per layer
        if layout.batchnorm:
            for i, w in enumerate(layout.widths):
                self.running[f"rm{i}"] = torch.zeros(k, w, device=device, dtype=dtype)
                self.running[f"rv{i}"] = torch.ones(k, w, device=device, dtype=dtype)
        self._prepare()
        with torch.no_grad():
            for row, model in enumerate(models):
                theirs = portable_tensors(model)
                for name, tensor in self.member_tensors(row).items():
                    tensor.copy_(theirs[name])

    def _prepare(self) -> None:
        """The per-member columns and views the steps use, for the current members and layout."""
        configs, device, layout = self.configs, self.param.device, self.layout
        k, dtype = len(configs), self.param.dtype
        self.views = self.layout.views(self.param)
        self.grads = self.layout.views(self.grad)
        for name, v in self.views.items():
            v.requires_grad_(True)
            v.grad = self.grads[name]  # autograd adds each step's gradient into this view, in place

        def column(values, *, dims: int = 3) -> torch.Tensor:
            return torch.tensor(values, device=device, dtype=dtype).view(k, *([1] * (dims - 1)))

        self.has_bn = column([c.batchnorm for c in configs]).bool()
        self.all_bn = all(c.batchnorm for c in configs)
        self.no_bn = column([not c.batchnorm for c in configs], dims=2)  # zeroes pre-BN bias grads
        self.bn_momentum = column([c.bn_momentum for c in configs], dims=2)
        self.has_ln = column([c.layernorm for c in configs]).bool()
        self.all_ln = all(c.layernorm for c in configs)
        self.keep_p = column([1.0 - c.dropout for c in configs])
        self.dropout = any(c.dropout > 0 for c in configs)
        self.l1 = column([c.l1 for c in configs], dims=1)
        # Plain bools, decided once: a test of a device tensor in the step would sync every batch.
        self.any_l1 = any(c.l1 > 0 for c in configs)
        self.any_smoothing = any(c.label_smoothing > 0 for c in configs)
        self.smoothing = column([c.label_smoothing for c in configs], dims=2)
        self.activation_runs: list[tuple[int, int, str]] = []  # (first row, end row, activation)
        for c in configs:
            if self.activation_runs and self.activation_runs[-1][2] == c.activation:
                start, end, activation = self.activation_runs[-1]
                self.activation_runs[-1] = (start, end + 1, activation)
            else:
                a = self.activation_runs[-1][1] if self.activation_runs else 0
                self.activation_runs.append((a, a + 1, c.activation))

        # Real (unpadded) units of each member per layer, as 0/1 masks [K, 1, width] (None where
        # no member is padded); for residual blocks also of their inner layers.
        def masks(reals: list[int], width: int) -> torch.Tensor | None:
            mask = torch.zeros(k, 1, width, device=device, dtype=dtype)
            for row, real in enumerate(reals):
                mask[row, :, :real] = 1.0
            return mask if min(reals) < width else None

        self.unit_widths = [[c.hidden[i] for c in configs] for i in range(len(layout.widths))]
        self.unit_masks = [masks(r, w) for r, w in zip(self.unit_widths, layout.widths, strict=True)]
        e = layout.expansion
        self.inner_widths = [[e * r for r in reals] for reals in self.unit_widths]
        self.inner_masks = [
            masks(r, e * w) if e else None for r, w in zip(self.inner_widths, layout.widths, strict=True)
        ]

    # ------------------------------------------------------------------ a step

    def forward(
        self, x: torch.Tensor, *, train: bool, drop_gens: list[torch.Generator] | None = None, first=None
    ) -> torch.Tensor:
        """x [K, B, in] (each member's batch), or [B, in] (one batch for all: scoring, with
        `first` the first layer's weights as one [in, K*width] matrix) -> logits [K, B, n_classes];
        in training, BatchNorm's running stats move."""
        v, h = self.views, x
        k = len(self.configs)
        for i in range(len(self.layout.widths)):
            if self.layout.expansion and i:
                h = self._block(h, i, train=train, drop_gens=drop_gens)
                continue
            w, b = v[f"w{i}"], v[f"b{i}"]
            if h.dim() == 2:  # one input for all members: one matmul against all their weights
                z = torch.addmm(b.reshape(-1), h, first).view(len(h), k, -1).transpose(0, 1)
            else:
                z = torch.baddbmm(b.unsqueeze(1), h, w)
            z = self._activate(self._normalize(z, i, train=train))
            h = self._masked(z, self.unit_masks[i], self.unit_widths[i], train=train, drop_gens=drop_gens)
        if h.dim() == 2:  # a linear model scoring one input
            h = h.expand(k, *h.shape)
        return torch.baddbmm(v["bh"].unsqueeze(1), h, v["wh"])

    def _block(self, h: torch.Tensor, i: int, *, train: bool, drop_gens) -> torch.Tensor:
        """Residual block i on the stream h [K, B, width]: h + u(dropout(act(w(norm(h))))). The
        padding of h stays zero: u's padded output columns and c's padded entries never move."""
        v, z = self.views, self._normalize(h, i, train=train)
        a = self._activate(torch.baddbmm(v[f"b{i}"].unsqueeze(1), z, v[f"w{i}"]))
        a = self._masked(a, self.inner_masks[i], self.inner_widths[i], train=train, drop_gens=drop_gens)
        return h + torch.baddbmm(v[f"c{i}"].unsqueeze(1), a, v[f"u{i}"])

    def _normalize(self, z: torch.Tensor, i: int, *, train: bool) -> torch.Tensor:
        """Layer i's norm for the members that have one (each path leaves the others' rows be)."""
        if self.layout.batchnorm:
            z = self._batchnorm(z, i, train=train)
        return self._layernorm(z, i) if self.layout.layernorm else z

    def _masked(self, z, units: torch.Tensor | None, reals: list[int], *, train: bool, drop_gens):
        """z with padded units zeroed and, in training, dropout applied."""
        if train and self.dropout:
            units = self._dropout_mask(z, units, reals, drop_gens)
        return z if units is None else z * units

    def _batchnorm(self, z: torch.Tensor, i: int, *, train: bool) -> torch.Tensor:
        """PyTorch's own batch_norm kernel over K*width channels (one kernel for all members, and
        the arithmetic `nn.BatchNorm1d` does); the running statistics move with each member's
        own momentum."""
        k, b, w = z.shape
        rm, rv = self.running[f"rm{i}"], self.running[f"rv{i}"]
        dtype = rm.dtype
        channels = z.to(dtype).transpose(0, 1).reshape(b, k * w)
        gamma, beta = self.views[f"g{i}"].reshape(k * w), self.views[f"be{i}"].reshape(k * w)
        if train:
            normed, mean, invstd = torch.native_batch_norm(
                channels, gamma, beta, None, None, True, 0.0, BN_EPS
            )
            with torch.no_grad():
                m = self.bn_momentum
                var = (invstd.view(k, w).double().pow(-2) - BN_EPS).to(dtype) * (b / max(1, b - 1))
                rm.mul_(1 - m).add_(m * mean.view(k, w))
                rv.mul_(1 - m).add_(m * var)
        else:
            normed = F.batch_norm(channels, rm.reshape(-1), rv.reshape(-1), gamma, beta, eps=BN_EPS)
        normed = normed.view(b, k, w).transpose(0, 1)
        return normed if self.all_bn else torch.where(self.has_bn, normed, z)

    def _layernorm(self, z: torch.Tensor, i: int) -> torch.Tensor:
        """nn.LayerNorm's arithmetic over each member's own units: a padded member's mean and
        variance count only its real ones, and its padding gets no gradient through them."""
        k, _, w = z.shape
        x = z.to(self.param.dtype)
        mask = self.unit_masks[i]
        if mask is None:
            normed = F.layer_norm(x, (w,), eps=LN_EPS)
        else:
            n = mask.sum(2, keepdim=True)
            x = x * mask
            centred = (x - x.sum(2, keepdim=True) / n) * mask
            normed = centred * torch.rsqrt(centred.pow(2).sum(2, keepdim=True) / n + LN_EPS)
        normed = torch.addcmul(self.views[f"be{i}"].unsqueeze(1), normed, self.views[f"g{i}"].unsqueeze(1))
        return normed if self.all_ln else torch.where(self.has_ln, normed, z)

    def _activate(self, z: torch.Tensor) -> torch.Tensor:
        if len(self.activation_runs) == 1:
            return ACTIVATIONS[self.activation_runs[0][2]](z)
        return torch.cat([ACTIVATIONS[name](z[a:b]) for a, b, name in self.activation_runs])

    def _dropout_mask(
        self, z: torch.Tensor, units: torch.Tensor | None, reals: list[int], gens: list[torch.Generator]
    ) -> torch.Tensor:
        """0 for dropped and padded units, 1/(1-p) for kept ones; each member's [B, its `reals`
        units] draw comes from its own stream."""
        mask = torch.ones_like(z) if units is None else units.expand_as(z).clone()
        for row, c in enumerate(self.configs):
            if c.dropout > 0:
                mask[row, :, : reals[row]].bernoulli_(1.0 - c.dropout, generator=gens[row])
        return mask.div_(self.keep_p)

    def loss(
        self, logits: torch.Tensor, y: torch.Tensor, partner: torch.Tensor | None = None, lam=None
    ) -> torch.Tensor:
        """Each member's training loss [K]: cross-entropy with its label smoothing (or, for
        regression, the standardized target's squared error), plus its L1 (weight matrices only,
        never biases or BatchNorm). A mixed batch (search.training.mix) weighs the loss against
        y by lam [K, 1] and against the partner labels [K, B] by 1 - lam."""
        dtype = self.param.dtype
        if self.regression:
            out = logits[..., 0].to(dtype)

            def per_sample(t: torch.Tensor) -> torch.Tensor:
                return (out - t.to(dtype)).pow(2)
        else:
            logp = F.log_softmax(logits.to(dtype), dim=2)

            def per_sample(t: torch.Tensor) -> torch.Tensor:
                nll = -logp.gather(2, t.unsqueeze(2)).squeeze(2)  # [K, B]
                if self.any_smoothing:
                    nll = (1 - self.smoothing) * nll - self.smoothing * logp.mean(2)
                return nll

        loss = per_sample(y).mean(1)
        if partner is not None:
            loss = torch.lerp(per_sample(partner).mean(1), loss, lam[:, 0])
        if self.any_l1:
            weights = [v for name, v in self.views.items() if name[0] in "wu" and v.dim() == 3]
            loss = loss + self.l1 * torch.stack([w.abs().sum((1, 2)) for w in weights]).sum(0)
        return loss

    def drop_bn_bias_grads(self) -> None:
        """The gradient of a bias right before BatchNorm is zero: make it so, not rounding noise.
        In a residual layout only the first layer's: a block's BatchNorm comes before its biases."""
        if not self.layout.batchnorm:
            return
        for i in range(1 if self.layout.expansion else len(self.layout.widths)):
            g = self.grads[f"b{i}"]
            g.zero_() if self.all_bn else g.mul_(self.no_bn)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, rows_per_pass: int) -> torch.Tensor:
        """Every member's outputs for one input x [N, in], in eval mode: [K, N, outputs]."""
        first = None
        if self.layout.widths:  # one copy per scoring: every pass is then one matmul for all members
            w0 = self.views["w0"]
            first = w0.transpose(0, 1).reshape(w0.shape[1], -1)
        passes = [
            self.forward(x[at : at + rows_per_pass], train=False, first=first).to(self.param.dtype)
            for at in range(0, len(x), rows_per_pass)
        ]
        return torch.cat(passes, dim=1)

    @contextlib.contextmanager
    def weights_from(self, rows: dict[int, torch.Tensor]) -> Iterator[None]:
        """Inside, each given row holds the given [P] weights (a moving average) instead of its
        live ones, which come back on leaving."""
        live = {r: self.param[r].clone() for r in rows}
        with torch.no_grad():
            for r, w in rows.items():
                self.param[r].copy_(w)
        try:
            yield
        finally:
            with torch.no_grad():
                for r, w in live.items():
                    self.param[r].copy_(w)

    # ------------------------------------------------------------------ members in and out

    def member_tensors(self, row: int) -> dict[str, torch.Tensor]:
        """Member `row`'s own tensors (weights and BN statistics), unpadded views."""
        out = {}
        for name, where in member_slices(self.configs[row], self.layout).items():
            src = self.running if name[:2] in ("rm", "rv") else self.views
            out[name] = src[name][row][where]
        return out

    def write_member(self, row: int, model: nn.Sequential, steps: int) -> None:
        """Copy member `row`'s weights and running statistics into its portable `model`."""
        with torch.no_grad():
            mine = self.member_tensors(row)
            for name, tensor in portable_tensors(model).items():
                tensor.copy_(mine[name])
            for bn in model.modules():
                if isinstance(bn, nn.BatchNorm1d):
                    assert bn.num_batches_tracked is not None  # build_mlp's BatchNorm tracks its statistics
                    bn.num_batches_tracked.fill_(steps)

    def keep(self, rows: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
        """Drop the other members, and the padding only they needed; returns the function that
        carries any [n, P] tensor of the old layout (optimizer state) over to the new one."""
        old, configs = self.layout, [self.configs[r] for r in rows]
        new = layout_of(configs, old.in_features, old.n_classes)
        index = torch.tensor(rows, device=self.param.device)

        def move(flat: torch.Tensor) -> torch.Tensor:
            out = flat.new_zeros(len(flat), new.size)
            transfer(flat.detach(), old, out, new)
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
