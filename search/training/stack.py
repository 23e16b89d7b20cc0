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
from search.training.embeddings import PeriodicEmbedding, embedded_columns, periodic
from search.training.model import (
    BatchEnsembleLinear,
    Block,
    EnsembleLayerNorm,
    EnsembleLinear,
    EnsembleView,
    FeatureScale,
    mean_over_members,
)

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
    ensemble: int = 1  # BatchEnsemble members inside each model (ensemble_k, shared by the stack)
    feature_scale: bool = False  # any member scales its inputs: the scale "fs" [input_width] exists
    # A periodic embedding of the first `embedded` input columns (the stack key holds its sizes):
    # each becomes `embed_dim` units from `frequencies` frequencies (search.training.embeddings).
    embedded: int = 0
    frequencies: int = 0
    embed_dim: int = 0

    @property
    def input_width(self) -> int:
        """The first Linear's input width: the inputs, embedded columns widened."""
        return self.in_features + self.embedded * (self.embed_dim - 1)

    def entries(self) -> list[tuple[str, tuple[int, ...]]]:
        """Per plain layer i: w{i} [in, out], b{i}, then its norm's g{i}, be{i}. Per residual block
        i: the norm of its input (g{i}, be{i}), then w{i} [w, e*w], b{i}, u{i} [e*w, w], c{i}.
        With a periodic embedding of n columns, its frequencies pf [n, k], matrices pw [n, 2k, d]
        and biases pb [n, d] first; with a feature scale, fs [input_width] next. With an ensemble of k,
        every vector but fs is one per ensemble member ([k, out]), each shared matrix w{i} has the
        members' input and output scalings r{i} [k, in] and s{i} [k, out] (a block's u{i}: ru{i},
        su{i}), and the head is one per member: wh [k, width, n_classes], bh [k, n_classes]."""
        k = self.ensemble
        member = (k,) if k > 1 else ()

        def scales(r: str, n_in: int, s: str, n_out: int) -> list[tuple[str, tuple[int, ...]]]:
            return [(r, (k, n_in)), (s, (k, n_out))] if k > 1 else []

        out: list[tuple[str, tuple[int, ...]]] = []
        if n := self.embedded:
            f, d = self.frequencies, self.embed_dim
            out += [("pf", (n, f)), ("pw", (n, 2 * f, d)), ("pb", (n, d))]
        out += [("fs", (self.input_width,))] if self.feature_scale else []
        width = self.input_width
        norms = self.batchnorm or self.layernorm
        for i, w in enumerate(self.widths):
            norm = [(f"g{i}", (*member, w)), (f"be{i}", (*member, w))] if norms else []
            if self.expansion and i:
                inner = self.expansion * w
                out += norm + [(f"w{i}", (w, inner)), *scales(f"r{i}", w, f"s{i}", inner)]
                out += [(f"b{i}", (*member, inner)), (f"u{i}", (inner, w))]
                out += [*scales(f"ru{i}", inner, f"su{i}", w), (f"c{i}", (*member, w))]
                continue
            out += [(f"w{i}", (width, w)), *scales(f"r{i}", width, f"s{i}", w), (f"b{i}", (*member, w))]
            out += norm
            width = w
        return out + [("wh", (*member, width, self.n_classes)), ("bh", (*member, self.n_classes))]

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
        """Multiply-adds of one sample's forward pass through one member's padded layers (each of
        its ensemble members multiplies by the shared matrices; the head is theirs already) and
        its embedding's matrices (once: the ensemble members share them)."""
        return sum(
            math.prod(shape) * (1 if name in ("wh", "pw") else self.ensemble)
            for name, shape in self.entries()
            if name[0] in "wu" or name == "pw"
        )


def layout_of(
    configs: list[TrainConfig], in_features: int, n_classes: int, numeric_features: int = 0
) -> Layout:
    """The layout of these configs (which share a stack key) on inputs of `in_features` columns,
    the first `numeric_features` of them numeric."""
    c = configs[0]
    widths = tuple(max(m.hidden[i] for m in configs) for i in range(len(c.hidden)))
    expansion = c.expansion if c.residual else 0  # shared: the stack key holds it
    norms = any(m.batchnorm for m in configs), any(m.layernorm for m in configs)
    scale = any(m.feature_scale for m in configs)
    n = embedded_columns(c, numeric_features)
    return Layout(
        in_features, n_classes, widths, *norms, expansion=expansion, ensemble=c.ensemble_k,
        feature_scale=scale, embedded=n, frequencies=c.plr_frequencies if n else 0,
        embed_dim=c.plr_dim if n else 0,
    )  # fmt: skip


def member_slices(config: TrainConfig, layout: Layout) -> dict[str, tuple[slice, ...]]:
    """Where a member's own (unpadded) tensors lie inside each padded entry, BN statistics
    (`rm`, `rv`) included; norm entries only for a member with that norm."""
    names = {"batch": ("b", "g", "be", "rm", "rv"), "layer": ("b", "g", "be"), "none": ("b",)}[config.norm]
    d = (layout.input_width, *config.hidden, layout.n_classes)
    lead = (slice(None),) * (layout.ensemble > 1)  # every ensemble member's row of a vector
    every = (slice(None),)
    out: dict[str, tuple[slice, ...]] = {"fs": every} if config.feature_scale else {}
    if layout.embedded:  # every member's embedding has the stack's sizes
        out.update(pf=every, pw=every, pb=every)
    for i in range(len(config.hidden)):
        unit, stream = slice(0, d[i + 1]), slice(0, d[i])
        out.update({f"{n}{i}": (*lead, unit) for n in names})
        if layout.expansion and i:  # a block: its norm and output on the stream, w{i} -> inner
            inner = slice(0, config.expansion * d[i + 1])
            out[f"w{i}"], out[f"b{i}"] = (stream, inner), (*lead, inner)
            out[f"u{i}"], out[f"c{i}"] = (inner, unit), (*lead, unit)
            if lead:
                out[f"r{i}"], out[f"s{i}"] = (*lead, stream), (*lead, inner)
                out[f"ru{i}"], out[f"su{i}"] = (*lead, inner), (*lead, unit)
        else:
            out[f"w{i}"] = (stream, unit)
            if lead:
                out[f"r{i}"], out[f"s{i}"] = (*lead, stream), (*lead, unit)
    out["wh"] = (*lead, slice(0, d[-2]), slice(None))
    out["bh"] = (*lead, slice(None))
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
    weights as transposed views: the stack keeps them [in, out]; an ensemble's per-member
    BatchNorm vectors as [k, width] views)."""
    views = _modules(model, EnsembleView)
    k = views[0].k if views else 1
    # the first hidden layer (if any) and the head
    linears = _modules(model, (nn.Linear, BatchEnsembleLinear, EnsembleLinear))
    norms = _modules(model, (nn.BatchNorm1d, nn.LayerNorm, EnsembleLayerNorm))
    out: dict[str, torch.Tensor] = {}
    for scale in _modules(model, FeatureScale):
        out["fs"] = scale.weight
    for embedding in _modules(model, PeriodicEmbedding):
        out["pf"], out["pw"], out["pb"] = embedding.frequencies, embedding.weight, embedding.bias

    def per_member(t: torch.Tensor) -> torch.Tensor:
        return t.view(k, -1) if k > 1 else t

    def norm_tensors(i: int, norm: nn.Module) -> None:
        if isinstance(norm, (nn.BatchNorm1d, nn.LayerNorm, EnsembleLayerNorm)):
            out[f"g{i}"], out[f"be{i}"] = per_member(norm.weight), per_member(norm.bias)
        if isinstance(norm, nn.BatchNorm1d):
            assert norm.running_mean is not None and norm.running_var is not None  # build_mlp tracks them
            out[f"rm{i}"], out[f"rv{i}"] = per_member(norm.running_mean), per_member(norm.running_var)

    def linear_tensors(lin: nn.Linear | BatchEnsembleLinear, w: str, b: str, r: str, s: str) -> None:
        out[w], out[b] = lin.weight.T, lin.bias
        if isinstance(lin, BatchEnsembleLinear):
            out[r], out[s] = lin.r, lin.s

    for i, lin in enumerate(linears[:-1]):
        linear_tensors(lin, f"w{i}", f"b{i}", f"r{i}", f"s{i}")
        if norms:
            norm_tensors(i, norms[i])
    for i, block in enumerate(_modules(model, Block), start=len(linears) - 1):
        norm_tensors(i, block.norm)
        linear_tensors(block.fc1, f"w{i}", f"b{i}", f"r{i}", f"s{i}")
        linear_tensors(block.fc2, f"u{i}", f"c{i}", f"ru{i}", f"su{i}")
    head = linears[-1]
    out["wh"], out["bh"] = head.weight if isinstance(head, EnsembleLinear) else head.weight.T, head.bias
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
        self.running = {}  # BatchNorm running statistics, [K, width] per layer ([K, k, width] in ensembles)
        member = (layout.ensemble,) if layout.ensemble > 1 else ()
        if layout.batchnorm:
            for i, w in enumerate(layout.widths):
                self.running[f"rm{i}"] = torch.zeros(k, *member, w, device=device, dtype=dtype)
                self.running[f"rv{i}"] = torch.ones(k, *member, w, device=device, dtype=dtype)
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

        vector = 2 if layout.ensemble == 1 else 3  # a bias or running statistic's dims: [K, (k,) width]
        self.has_bn = column([c.batchnorm for c in configs]).bool()
        self.all_bn = all(c.batchnorm for c in configs)
        self.no_bn = column([not c.batchnorm for c in configs], dims=vector)  # zeroes pre-BN bias grads
        self.bn_momentum = column([c.bn_momentum for c in configs], dims=vector)
        self.has_fs = column([c.feature_scale for c in configs], dims=2).bool()
        self.all_fs = all(c.feature_scale for c in configs)
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
        `first` the first layer's weights as one [in, K*width] matrix) -> logits [K, B, n_classes]
        ([K, k*B, n_classes] with an ensemble of k: member j's rows are j*B to (j+1)*B); in
        training, BatchNorm's running stats move."""
        v, h = self.views, x
        k, e = len(self.configs), self.layout.ensemble
        if h.dim() == 2 and first is None:  # scoring without the one-matmul first layer
            h = h.expand(k, *h.shape)
        if self.layout.embedded:  # each member's own embedding of the numeric columns
            h = periodic(h, v["pf"], v["pw"], v["pb"])
        if self.layout.feature_scale and h.dim() == 3:
            h = h * self._feature_scales().unsqueeze(1)
        shared = True  # h is one batch per member, not yet one per ensemble member
        for i in range(len(self.layout.widths)):
            if self.layout.expansion and i:
                h = self._block(h, i, train=train, drop_gens=drop_gens)
                continue
            w, b = v[f"w{i}"], v[f"b{i}"]
            if e > 1:
                z = self._scaled(h, w, v[f"r{i}"], v[f"s{i}"], b, shared=shared)
                shared = False
            elif h.dim() == 2:  # one input for all members: one matmul against all their weights
                z = torch.addmm(b.reshape(-1), h, first).view(len(h), k, -1).transpose(0, 1)
            else:
                z = torch.baddbmm(b.unsqueeze(1), h, w)
            z = self._activate(self._normalize(z, i, train=train))
            h = self._masked(z, self.unit_masks[i], self.unit_widths[i], train=train, drop_gens=drop_gens)
        if h.dim() == 2:  # a linear model scoring one input
            h = h.expand(k, *h.shape)
        if e == 1:
            return torch.baddbmm(v["bh"].unsqueeze(1), h, v["wh"])
        width, n_out = v["wh"].shape[2:]
        if shared:  # a linear ensemble: each member's head sees the one batch
            h = h.unsqueeze(1).expand(k, e, *h.shape[1:])
        rows = h.reshape(k * e, -1, width)  # each ensemble member's own head
        heads = torch.baddbmm(v["bh"].reshape(k * e, 1, n_out), rows, v["wh"].reshape(k * e, width, n_out))
        return heads.view(k, -1, n_out)

    def _feature_scales(self) -> torch.Tensor:
        """Each member's input scale [K, in]: 1 for the members without one (their entry, unused,
        gets no gradient)."""
        fs = self.views["fs"]
        return fs if self.all_fs else torch.where(self.has_fs, fs, torch.ones_like(fs))

    def _scaled(self, h, w, r, s, b, *, shared: bool) -> torch.Tensor:
        """BatchEnsemble's layer for every member of every model: ((h * r_j) @ w) * s_j + b_j, the
        `tabm` package's `LinearBatchEnsemble` arithmetic. h [K, k*B, in], or [K, B, in] when all k
        members take the same rows (`shared`) -> [K, k*B, out]."""
        k, e, d = len(self.configs), self.layout.ensemble, h.shape[-1]
        x = h.view(k, 1 if shared else e, -1, d) * r.unsqueeze(2)  # [K, k, B, in]
        z = torch.bmm(x.reshape(k, -1, d), w).view(k, e, -1, w.shape[2])
        return torch.addcmul(b.unsqueeze(2), z, s.unsqueeze(2)).view(k, -1, w.shape[2])

    def _block(self, h: torch.Tensor, i: int, *, train: bool, drop_gens) -> torch.Tensor:
        """Residual block i on the stream h [K, B, width]: h + u(dropout(act(w(norm(h))))). The
        padding of h stays zero: u's padded output columns and c's padded entries never move."""
        v, z = self.views, self._normalize(h, i, train=train)
        if self.layout.ensemble > 1:
            a = self._scaled(z, v[f"w{i}"], v[f"r{i}"], v[f"s{i}"], v[f"b{i}"], shared=False)
        else:
            a = torch.baddbmm(v[f"b{i}"].unsqueeze(1), z, v[f"w{i}"])
        a = self._masked(self._activate(a), self.inner_masks[i], self.inner_widths[i], train=train,
                         drop_gens=drop_gens)  # fmt: skip
        if self.layout.ensemble > 1:
            return h + self._scaled(a, v[f"u{i}"], v[f"ru{i}"], v[f"su{i}"], v[f"c{i}"], shared=False)
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
        the arithmetic `nn.BatchNorm1d` does; K*k*width with an ensemble of k, each of its members
        normalized over its own rows); the running statistics move with each member's own
        momentum."""
        k, n, w = z.shape
        e = self.layout.ensemble
        b = n // e
        rm, rv = self.running[f"rm{i}"], self.running[f"rv{i}"]
        dtype = rm.dtype
        channels = z.to(dtype).view(k, e, b, w).permute(2, 0, 1, 3).reshape(b, k * e * w)
        gamma, beta = self.views[f"g{i}"].reshape(-1), self.views[f"be{i}"].reshape(-1)
        if train:
            normed, mean, invstd = torch.native_batch_norm(
                channels, gamma, beta, None, None, True, 0.0, BN_EPS
            )
            with torch.no_grad():
                m = self.bn_momentum
                var = (invstd.view_as(rm).double().pow(-2) - BN_EPS).to(dtype) * (b / max(1, b - 1))
                rm.mul_(1 - m).add_(m * mean.view_as(rm))
                rv.mul_(1 - m).add_(m * var)
        else:
            normed = F.batch_norm(channels, rm.reshape(-1), rv.reshape(-1), gamma, beta, eps=BN_EPS)
        normed = normed.view(b, k, e, w).permute(1, 2, 0, 3).reshape(k, n, w)
        return normed if self.all_bn else torch.where(self.has_bn, normed, z)

    def _layernorm(self, z: torch.Tensor, i: int) -> torch.Tensor:
        """nn.LayerNorm's arithmetic over each member's own units: a padded member's mean and
        variance count only its real ones, and its padding gets no gradient through them."""
        k, n, w = z.shape
        x = z.to(self.param.dtype)
        mask = self.unit_masks[i]
        if mask is None:
            normed = F.layer_norm(x, (w,), eps=LN_EPS)
        else:
            count = mask.sum(2, keepdim=True)
            x = x * mask
            centred = (x - x.sum(2, keepdim=True) / count) * mask
            normed = centred * torch.rsqrt(centred.pow(2).sum(2, keepdim=True) / count + LN_EPS)
        e = self.layout.ensemble  # each ensemble member's own affine weights: [K, k, 1, width]
        g, be = self.views[f"g{i}"].view(k, e, 1, w), self.views[f"be{i}"].view(k, e, 1, w)
        normed = torch.addcmul(be, normed.view(k, e, -1, w), g).reshape(k, n, w)
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
        if self.layout.ensemble > 1:  # each ensemble member's loss on the same batch, averaged
            y = y.repeat(1, self.layout.ensemble)
            partner = None if partner is None else partner.repeat(1, self.layout.ensemble)
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
            weights = [v for name, v in self.views.items() if name[0] in "wu"]  # an ensemble's wh: 4-d
            magnitudes = [w.abs().sum(tuple(range(1, w.dim()))) for w in weights]
            loss = loss + self.l1 * torch.stack(magnitudes).sum(0)
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
        """Every member's outputs for one input x [N, in], in eval mode: [K, N, outputs]; an
        ensemble's members averaged as the portable model's `MemberMean` averages them."""
        first, e = None, self.layout.ensemble
        if self.layout.widths and e == 1 and not self.layout.embedded:  # one matmul for all members
            w0 = self.views["w0"]
            if self.layout.feature_scale:  # (x * fs) @ w0 as x @ (fs w0)
                w0 = w0 * self._feature_scales().unsqueeze(2)
            first = w0.transpose(0, 1).reshape(w0.shape[1], -1)
        passes = []
        for at in range(0, len(x), rows_per_pass):
            out = self.forward(x[at : at + rows_per_pass], train=False, first=first).to(self.param.dtype)
            if e > 1:  # [K, k, N, outputs] -> [K, N, outputs]
                out = out.view(len(out), e, -1, out.shape[2])
                out = mean_over_members(out, 1, regression=self.regression)
            passes.append(out)
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
        new = layout_of(configs, old.in_features, old.n_classes, old.embedded)
        index = torch.tensor(rows, device=self.param.device)

        def move(flat: torch.Tensor) -> torch.Tensor:
            out = flat.new_zeros(len(flat), new.size)
            transfer(flat.detach(), old, out, new)
            return out

        with torch.no_grad():
            self.param = move(self.param.index_select(0, index))
            self.grad = torch.zeros_like(self.param)
            self.running = {
                name: t.index_select(0, index)[..., : new.widths[int(name[2:])]].contiguous()
                for name, t in self.running.items()
                if new.batchnorm
            }
        self.configs, self.layout = configs, new
        self._prepare()
        return move
