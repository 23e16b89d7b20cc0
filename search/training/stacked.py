"""`fit_stacked`: train K configs at once as one stacked model, returning what K `fit` calls return.

One trial of a small MLP is bound by per-operation overhead (kernel launches and Python on a GPU,
the dispatcher on a CPU), not arithmetic: a stack runs every layer, the loss and the optimizer
for all K members in the operations one trial needs (HFTA, MLSys 2021; `torch.func`'s
stack_module_state). The contract is that stacking changes nothing: each member is built, seeded,
batched, augmented, dropped out and stepped exactly as `fit` trains it alone, so on the CPU its
per-epoch figures equal `fit`'s to float32 rounding (tests/training/test_stacked.py states the
tolerance) and `search.train` retrains a stacked trial alone. On CUDA, dropout draws differ
from `nn.Dropout`'s fused kernel, so a retrained trial is as close as two seeds' runs, no closer.

A member that is stopped (`on_epoch` returned True), diverges or ends its budget leaves the stack
after that epoch, and the padding only it needed goes with it. A CUDA out-of-memory error splits
the stack in two and trains each half again from the start; epochs a member already reported
are not reported twice. Resuming a stacked fit from saved state is not supported.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch

from search.data.datasets import Dataset
from search.data.whiten import fold_into_first_linear, whitened, zca_matrix
from search.training.augment import StackAugmenter, check_augmentable
from search.training.config import TrainConfig
from search.training.device import autocast, free_bytes, free_memory
from search.training.model import build_mlp, param_count
from search.training.stack_model import StackedMLP, layout_of, member_flops
from search.training.stack_optim import MemberOptimizers
from search.training.trainer import EpochMetrics, FitResult

# Called after every epoch with each training member's metrics, keyed by its index in `configs`
# (all of them at once, so a pruner may judge each member against the others); returns the
# indices of the members to stop (a pruner's verdicts).
StackCallback = Callable[[dict[int, EpochMetrics]], Collection[int] | None]

EVAL_ELEMENTS = 1 << 24  # activations per scoring pass of the whole stack: bounds its memory
MEMORY_SHARE = 0.5  # of the device's free memory, what a stack may plan to use


def stack_key(config: TrainConfig) -> tuple:
    """What members of one stack share: depth, batch size, input transform and epochs."""
    zca = config.zca_eps if config.whiten == "zca" else None
    return (len(config.hidden), config.batch_size, config.whiten, zca, config.epochs)


def member_bytes(config: TrainConfig, data: Dataset) -> int:
    """A generous estimate of one member's memory in a stack: weights, gradient and optimizer
    state (float32), plus one batch's activations and inputs kept for the backward pass."""
    states = 1 if config.optimizer == "sgd" else 2
    weights = 4 * param_count(config, in_features=data.in_features, n_classes=data.n_classes) * (2 + states)
    activations = 4 * config.batch_size * (8 * sum(config.hidden) + 3 * data.in_features + 4 * data.n_classes)
    return weights + activations


def stack_capacity(config: TrainConfig, data: Dataset) -> int:
    """How many members like `config` fit in the training device's free memory (at least 1)."""
    return max(1, int(free_bytes(data.device) * MEMORY_SHARE) // member_bytes(config, data))


def padding_of(configs: list[TrainConfig], in_features: int, n_classes: int) -> float:
    """The share of a stack's matmul work (multiply-adds) spent on padding: 0 when all members
    have the same widths."""
    padded = layout_of(configs, in_features, n_classes).flops() * len(configs)
    real = sum(member_flops(c, in_features, n_classes) for c in configs)
    return 1.0 - real / padded if padded else 0.0


@dataclass
class _Member:
    index: int  # position in fit_stacked's `configs`
    config: TrainConfig
    model: torch.nn.Module  # built as `fit` builds it; gets the trained weights when it leaves
    batches: torch.Generator  # batch order, as `fit`'s
    dropout: torch.Generator  # the global stream `nn.Dropout` would draw from after the init


def fit_stacked(
    configs: list[TrainConfig], data: Dataset, *, on_epoch: StackCallback | None = None
) -> list[FitResult]:
    """Train every config on `data`'s train split, all at once; one `FitResult` per config.

    The configs must share `stack_key` (search.tuning.stacking groups them so)."""
    configs = list(configs)
    if not configs:
        return []
    if len({stack_key(c) for c in configs}) > 1:
        raise ValueError("stacked configs must share depth, batch size, whitening and epochs")
    for c in configs:
        check_augmentable(c, data.image_shape, data.name)
    run = _StackRun(configs, data, on_epoch)
    run.train_halving(list(range(len(configs))))
    return run.results


class _StackRun:
    def __init__(self, configs: list[TrainConfig], data: Dataset, on_epoch: StackCallback | None):
        self.configs, self.data, self.on_epoch = configs, data, on_epoch
        self.results = [FitResult(model=None) for _ in configs]  # type: ignore[arg-type]
        self.reported = [0] * len(configs)  # epochs each member has reported through on_epoch
        self.done = [False] * len(configs)
        c = configs[0]
        self.source = whitened(data, c.zca_eps) if c.whiten == "zca" else data

    def train_halving(self, indices: list[int]) -> None:
        """Train these members; on running out of device memory, each half on its own."""
        try:
            self.train(indices)
        except torch.OutOfMemoryError:
            left = [i for i in indices if not self.done[i]]
            if len(left) <= 1:
                raise
            free_memory(self.data.device)
            half = len(left) // 2
            self.train_halving(left[:half])
            self.train_halving(left[half:])

    def _build(self, indices: list[int]) -> list[_Member]:
        device, data = self.data.device, self.data
        members = []
        for i in indices:
            c = self.configs[i]
            torch.manual_seed(c.seed)
            model = build_mlp(c, in_features=data.in_features, n_classes=data.n_classes).to(device)
            dropout = torch.Generator(device=device)
            dropout.set_state(
                torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()
            )
            members.append(_Member(i, c, model, torch.Generator(device=device).manual_seed(c.seed), dropout))
        # Neighbours share an optimizer, then an activation: each is a few whole-run operations.
        members.sort(key=lambda m: (m.config.optimizer, m.config.activation))
        return members

    def train(self, indices: list[int]) -> None:
        data, source = self.data, self.source
        device = data.device
        started = time.perf_counter()
        for i in indices:
            self.results[i] = FitResult(model=None)  # type: ignore[arg-type]
        members = self._build(indices)
        configs = [m.config for m in members]
        x, y = source.x_train, source.y_train
        n, bs, epochs = len(x), configs[0].batch_size, configs[0].epochs
        n_batches = max(1, n // bs + (1 if n % bs > 1 else 0))  # as fit folds a last batch of one
        stack = StackedMLP(
            configs, [m.model for m in members], layout_of(configs, data.in_features, data.n_classes), device
        )
        optimizer = MemberOptimizers(configs, stack.param, stack.grad, epochs * n_batches)
        augment = StackAugmenter(configs, data.image_shape, x) if any(c.augments for c in configs) else None
        loss_sum = torch.zeros(len(members), device=device)
        self._charge(members, time.perf_counter() - started, train=True)
        padded_work = real_work = 0  # multiply-adds per sample, summed over the epochs

        for epoch in range(1, epochs + 1):
            epoch_started = time.perf_counter()
            k = len(members)
            padded_work += stack.layout.flops() * k
            real_work += sum(member_flops(m.config, data.in_features, data.n_classes) for m in members)
            orders = torch.stack([torch.randperm(n, device=device, generator=m.batches) for m in members])
            loss_sum.zero_()
            drop_gens = [m.dropout for m in members]
            for b in range(n_batches):
                idx = orders[:, b * bs : (b + 1) * bs]
                flat = idx.reshape(-1)
                xb = augment.take(idx) if augment is not None else x.index_select(0, flat)
                with autocast(device):
                    logits = stack.forward(xb.view(k, idx.shape[1], -1), train=True, drop_gens=drop_gens)
                loss = stack.loss(logits, y.index_select(0, flat).view(k, -1))
                stack.grad.zero_()
                with warnings.catch_warnings():
                    # Each weight's gradient is a view of one [K, P] tensor, which autograd adds
                    # into in place; it warns that such a view is not "dense". Harmless here.
                    warnings.filterwarnings("ignore", message=".*gradient layout contract.*")
                    loss.sum().backward()
                optimizer.step()
                loss_sum += loss.detach()
            train_losses = (loss_sum / n_batches).tolist()  # the epoch's one host sync for training
            epoch_seconds = time.perf_counter() - epoch_started
            self._charge(members, epoch_seconds, train=True)

            val_started = time.perf_counter()
            rows = max(1, EVAL_ELEMENTS // (k * max((*stack.layout.widths, data.in_features))))
            val_losses, val_accs = stack.evaluate(source.x_val, source.y_val, rows)
            self._charge(members, time.perf_counter() - val_started, train=False)

            fresh: dict[int, EpochMetrics] = {}  # epochs not reported before an out-of-memory retry
            for row, m in enumerate(members):
                result, loss = self.results[m.index], train_losses[row]
                if not math.isfinite(loss):
                    result.diverged = f"training loss became {loss} in epoch {epoch}"
                    continue
                metrics = EpochMetrics(epoch, loss, val_losses[row], val_accs[row], seconds=epoch_seconds / k)
                result.history.append(metrics)
                if epoch > self.reported[m.index]:
                    self.reported[m.index] = epoch
                    fresh[m.index] = metrics
            stop = set(self.on_epoch(fresh) or ()) if self.on_epoch is not None and fresh else set()
            staying = []
            for row, m in enumerate(members):
                result = self.results[m.index]
                result.stopped = m.index in stop and epoch < epochs
                if result.diverged or result.stopped or epoch == epochs:
                    self._leave(stack, row, m, optimizer.steps)
                else:
                    staying.append(row)
            if not staying:
                break
            if len(staying) < len(members):
                move = stack.keep(staying)
                optimizer.keep(staying, stack.param, stack.grad, move)
                if augment is not None:
                    augment.keep(staying)
                members = [members[r] for r in staying]
                loss_sum = torch.zeros(len(members), device=device)
        for i in indices:
            self.results[i].stack_padding = 1.0 - real_work / padded_work if padded_work else 0.0

    def _charge(self, members: list[_Member], seconds: float, *, train: bool) -> None:
        """Each member's share of the stack's time: a search's overhead figures stay per trial."""
        for m in members:
            r = self.results[m.index]
            if train:
                r.train_seconds += seconds / len(members)
            else:
                r.val_seconds += seconds / len(members)

    def _leave(self, stack: StackedMLP, row: int, member: _Member, steps: int) -> None:
        stack.write_member(row, member.model, steps)
        if member.config.whiten == "zca":
            fold_into_first_linear(member.model, *zca_matrix(self.data, member.config.zca_eps))
        self.results[member.index].model = member.model
        self.done[member.index] = True
