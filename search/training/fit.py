"""The training engine: `fit_stacked` trains K configs as one stacked model; `fit` is its K = 1 case.

One engine, because every knob written twice drifts: a lone trial, a stack, retraining, export,
certify and audit all train here, so the forward pass, the loss, the optimizers and schedules,
seeding, batching, augmentation, the whitening fold and the saved state exist once. The stacked
form is the general one: a small MLP's step is bound by per-operation overhead, and a stack runs
each operation once for K members (HFTA, MLSys 2021); at K = 1 it is a plain loop over one
contiguous parameter row, as fast as `nn.Sequential` (`python -m search.bench`). Each member draws
its batches, dropout and augmentation from its own streams, so it trains as it would alone, to
float rounding (tests/training/test_stack.py); the same seed on the CPU retrains bit for bit.

A member that is stopped (`on_epoch` said so), diverges or ends its budget leaves the stack after
that epoch, with the padding only it needed. A CUDA out-of-memory error splits the stack in two
and trains each half again; no epoch is reported twice. `on_state` receives each member's state
after every epoch but its last; `resume` starts members from such states (all at one epoch).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim.sgd import sgd

from search.data.datasets import Dataset
from search.data.targets import losses_and_scores
from search.data.whiten import whitened, zca_matrix
from search.device import autocast, free_memory
from search.training.augment import Augmenter, check_augmentable
from search.training.config import TrainConfig
from search.training.mix import Mixer
from search.training.model import build_mlp, fold_whitening, mean_of_probabilities, member_flops, mirrored
from search.training.optim import MemberOptimizers
from search.training.plan import stack_key
from search.training.stack import StackedMLP, layout_of
from search.training.state import TrainState, padded, unpadded

EVAL_ELEMENTS = 1 << 24  # activations per scoring pass of a whole stack: bounds its memory
DROPOUT_SEED = 0xD209  # added to a config's seed: the dropout stream's own seed


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float  # mean per-batch loss over the epoch: label smoothing and L1 term included
    val_loss: float  # the training loss's validation mean: cross-entropy, or the scaled target's MSE
    val_score: float  # the study's metric on the validation split, higher better: accuracy, R², ...
    seconds: float = 0.0  # this epoch's training pass (its steps and one host sync), not validation


# Called after every epoch; returning True asks fit to stop (a pruner's verdict, a time limit).
EpochCallback = Callable[[EpochMetrics], bool | None]
# Called after every epoch with each training member's metrics, keyed by its index in `configs`
# (all of them at once, so a pruner may judge each member against the others); returns the
# indices of the members to stop.
StackCallback = Callable[[dict[int, EpochMetrics]], Collection[int] | None]
StateCallback = Callable[[int, TrainState], None]  # (index in `configs`, its state)


@dataclass
class FitResult:
    model: nn.Module | None  # the portable model (search.training.model), its final weights
    history: list[EpochMetrics] = field(default_factory=list)
    stopped: bool = False  # on_epoch asked to stop before the epoch budget ran out
    diverged: str | None = None  # why training ended early with a non-finite loss
    train_seconds: float = 0.0  # its share of building and training passes: not validation, not on_epoch
    stack_padding: float = 0.0  # share of its stack's matmul work that was padding

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    @property
    def val_score(self) -> float:
        """Accuracy of the final weights, the ones a checkpoint saves."""
        return self.history[-1].val_score if self.history else float("nan")


def import_lazy_parts() -> None:
    """Load what PyTorch imports on an optimizer's first use (torch._dynamo, about 2 s here), so
    the first trial's `train_seconds` measure training rather than an import."""
    p = torch.zeros(1)
    sgd([p], [torch.zeros(1)], [None], momentum=0.0, dampening=0.0, nesterov=False, lr=0.1,
        weight_decay=0.0, maximize=False, foreach=False)  # fmt: skip


def fit(
    config: TrainConfig,
    data: Dataset,
    *,
    on_epoch: EpochCallback | None = None,
    include_val: bool = False,
    resume: TrainState | None = None,
    on_state: Callable[[TrainState], None] | None = None,
) -> FitResult:
    """Train a fresh model on `data` (train split; with `include_val`, train + validation): a
    stack of one. A loss that turns NaN or inf ends training and sets `diverged`; it does not
    raise. With `whiten = "zca"` the returned model has the whitening folded into its first layer:
    it takes `data`'s normalized inputs."""
    stop = None if on_epoch is None else (lambda ms: [0] if on_epoch(ms[0]) else [])
    state = None if on_state is None else (lambda _i, s: on_state(s))
    return fit_stacked(
        [config], data, on_epoch=stop, include_val=include_val, resume=[resume], on_state=state
    )[0]


def fit_stacked(
    configs: Sequence[TrainConfig],
    data: Dataset,
    *,
    on_epoch: StackCallback | None = None,
    include_val: bool = False,
    resume: Sequence[TrainState | None] | None = None,
    on_state: StateCallback | None = None,
) -> list[FitResult]:
    """Train every config on `data`, all at once; one `FitResult` per config. The configs must
    share `stack_key` (search.tuning.stacking groups them so)."""
    configs = list(configs)
    if not configs:
        return []
    resume = list(resume) if resume is not None else [None] * len(configs)
    if len({stack_key(c) for c in configs}) > 1:
        raise ValueError(
            "stacked configs must share depth, blocks, ensemble size, batch size, input transforms "
            "(whitening, numeric scaling and embedding) and epochs"
        )
    for c, state in zip(configs, resume, strict=True):
        check_augmentable(c, data.image_shape, data.name)
        if state is not None and state.config != c.to_dict():
            raise ValueError(f"the saved state after epoch {state.epoch} belongs to another config")
    if len({s.epoch if s is not None else 0 for s in resume}) > 1:
        raise ValueError("stacked members must resume from the same epoch")
    run = _StackRun(configs, data, on_epoch, on_state, resume, include_val)
    run.train_halving(list(range(len(configs))))
    return run.results


@dataclass
class _Member:
    index: int  # position in fit_stacked's `configs`
    config: TrainConfig
    model: nn.Sequential  # the portable model: its initial weights, and the trained ones when it leaves
    batches: torch.Generator  # each epoch's batch order
    dropout: torch.Generator
    state: TrainState | None  # where it resumes from


class _StackRun:
    def __init__(self, configs, data: Dataset, on_epoch, on_state, resume, include_val: bool):
        self.configs, self.data, self.on_epoch, self.on_state = configs, data, on_epoch, on_state
        self.resume = resume
        self.results = [FitResult(model=None) for _ in configs]
        self.reported = [s.epoch if s is not None else 0 for s in resume]  # epochs reported so far
        self.done = [False] * len(configs)
        c = configs[0]
        self.source = data.variant(c.numeric)
        self.source = whitened(self.source, c.zca_eps) if c.whiten == "zca" else self.source
        self.x, self.y = self.source.x_train, self.source.y_train
        # every member's model's sizes: the inputs (numeric columns first) and outputs
        self.shape = dict(in_features=self.source.in_features, n_classes=data.n_classes,
                          numeric_features=self.source.numeric_features)  # fmt: skip
        self.mirror: torch.Tensor | None = None  # the validation split mirrored, for tta_hflip
        if include_val:
            self.x = torch.cat([self.x, self.source.x_val])
            self.y = torch.cat([self.y, self.source.y_val])

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
        device, data, dtype = self.data.device, self.data, self.x.dtype
        members = []
        for i in indices:
            c, state = self.configs[i], self.resume[i]
            torch.manual_seed(c.seed)
            model = build_mlp(c, image_shape=data.image_shape, **self.shape)
            model = model.to(device=device, dtype=dtype)
            batches = torch.Generator(device=device).manual_seed(c.seed)
            dropout = torch.Generator(device=device).manual_seed(c.seed + DROPOUT_SEED)
            if state is not None:
                batches.set_state(state.rngs["batches"])
                dropout.set_state(state.rngs["dropout"])
            members.append(_Member(i, c, model, batches, dropout, state))
        # Neighbours share an optimizer, then an activation: each is a few whole-run operations.
        members.sort(key=lambda m: (m.config.optimizer, m.config.activation))
        return members

    def train(self, indices: list[int]) -> None:
        data, x, y = self.data, self.x, self.y
        device = data.device
        started = time.perf_counter()
        for i in indices:
            state = self.resume[i]
            history = [EpochMetrics(**m) for m in state.history] if state is not None else []
            self.results[i] = FitResult(model=None, history=history)
        members = self._build(indices)
        configs = [m.config for m in members]
        n, bs, epochs = len(x), configs[0].batch_size, configs[0].epochs
        # A last batch of one sample would break BatchNorm's batch statistics: fold it away.
        n_batches = max(1, n // bs + (1 if n % bs > 1 else 0))
        first = members[0].state.epoch if members[0].state is not None else 0
        stack = StackedMLP(
            configs, [m.model for m in members], layout_of(configs, **self.shape),
            device, x.dtype, regression=data.task == "regression",
        )  # fmt: skip
        optimizer = MemberOptimizers(configs, stack.param, stack.grad, epochs * n_batches, first * n_batches)
        augment = None
        if any(c.augments for c in configs):
            assert data.image_shape is not None  # check_augmentable refused augments without images
            augment = Augmenter(configs, data.image_shape, x)
        mixer = Mixer(configs, data.image_shape) if any(c.mixes for c in configs) else None
        for row, m in enumerate(members):
            if m.state is not None:
                with torch.no_grad():
                    for name, tensor in stack.member_tensors(row).items():
                        tensor.copy_(m.state.weights[name])
                optimizer.set_buffers(row, {
                    name: padded(named, m.config, stack.layout, stack.param[row])
                    for name, named in m.state.optimizer.items()
                })  # fmt: skip
                if augment is not None and "augment" in m.state.rngs:
                    augment.gens[row].set_state(m.state.rngs["augment"])
                if mixer is not None and "mix" in m.state.rngs:
                    mixer.gens[row].set_state(m.state.rngs["mix"])
        loss_sum = torch.zeros(len(members), device=device, dtype=x.dtype)
        self._charge(members, time.perf_counter() - started)
        padded_work = real_work = 0  # multiply-adds per sample, summed over the epochs

        for epoch in range(first + 1, epochs + 1):
            epoch_started = time.perf_counter()
            k = len(members)
            padded_work += stack.layout.flops() * k
            real_work += sum(member_flops(m.config, **self.shape) for m in members)
            orders = torch.stack([torch.randperm(n, device=device, generator=m.batches) for m in members])
            loss_sum.zero_()
            drop_gens = [m.dropout for m in members]
            for b in range(n_batches):
                idx = orders[:, b * bs : (b + 1) * bs]
                flat = idx.reshape(-1)
                xb = augment.take(idx) if augment is not None else x.index_select(0, flat)
                xb, yb = xb.view(k, idx.shape[1], -1), y.index_select(0, flat).view(k, -1)
                partner = lam = None
                if mixer is not None:
                    xb, partner, lam = mixer.mix(xb, yb)
                with autocast(device):
                    logits = stack.forward(xb, train=True, drop_gens=drop_gens)
                loss = stack.loss(logits, yb, partner, lam)
                stack.grad.zero_()
                with warnings.catch_warnings():
                    # Each weight's gradient is a view of one [K, P] tensor, which autograd adds
                    # into in place; it warns that such a view is not "dense". Harmless here.
                    warnings.filterwarnings("ignore", message=".*gradient layout contract.*")
                    loss.sum().backward()
                stack.drop_bn_bias_grads()
                optimizer.step()
                loss_sum += loss.detach()
            train_losses = (loss_sum / n_batches).tolist()  # the epoch's one host sync for training
            epoch_seconds = time.perf_counter() - epoch_started
            self._charge(members, epoch_seconds)

            layout = stack.layout  # an embedding's widest step: its [2 * frequencies] per column
            inputs = max(layout.input_width, 2 * layout.embedded * layout.frequencies)
            widest = k * layout.ensemble * max((*layout.widths, inputs))
            rows = max(1, EVAL_ELEMENTS // widest)
            with stack.weights_from(optimizer.averages()):  # members with `ema` score the average
                outputs = stack.predict(self.source.x_val, rows)
                flips = [row for row, m in enumerate(members) if m.config.tta_hflip]
                if flips:  # as the portable model scores: each image's and its mirror's mean probability
                    mirror = stack.predict(self._mirrored_val(), rows)
                    outputs[flips] = mean_of_probabilities(outputs[flips], mirror[flips])
            val_losses, val_scores = losses_and_scores(
                outputs, self.source.y_val, task=data.task, metric=data.metric, target=data.target
            )

            fresh: dict[int, EpochMetrics] = {}  # epochs not reported before an out-of-memory retry
            for row, m in enumerate(members):
                result, loss = self.results[m.index], train_losses[row]
                if not math.isfinite(loss):
                    result.diverged = f"training loss became {loss} in epoch {epoch}"
                    continue
                metrics = EpochMetrics(
                    epoch, loss, val_losses[row], val_scores[row], seconds=epoch_seconds / k
                )
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
                    average = optimizer.averages().get(row)
                    with stack.weights_from({} if average is None else {row: average}):
                        self._leave(stack, row, m, optimizer.steps)
                    continue
                staying.append(row)
                if self.on_state is not None:
                    self.on_state(m.index, self._capture(m, row, stack, optimizer, (augment, mixer), epoch))
            if not staying:
                break
            if len(staying) < len(members):
                move = stack.keep(staying)
                optimizer.keep(staying, stack.param, stack.grad, move)
                if augment is not None:
                    augment.keep(staying)
                if mixer is not None:
                    mixer.keep(staying)
                members = [members[r] for r in staying]
                loss_sum = torch.zeros(len(members), device=device, dtype=x.dtype)
        for i in indices:
            self.results[i].stack_padding = 1.0 - real_work / padded_work if padded_work else 0.0

    def _mirrored_val(self) -> torch.Tensor:
        """The validation images mirrored, then whitened if the stack whitens: what a model with
        the whitening folded into its first layer computes for mirrored inputs."""
        if self.mirror is None:
            c, base = self.configs[0], self.data.variant(self.configs[0].numeric)
            assert base.image_shape is not None  # check_augmentable refused tta_hflip without images
            x = mirrored(base.x_val, base.image_shape[2])
            if c.whiten == "zca":
                mean, w = zca_matrix(base, c.zca_eps)
                x = (x - mean.to(x.dtype)) @ w.to(x.dtype)
            self.mirror = x
        return self.mirror

    def _capture(self, m: _Member, row: int, stack: StackedMLP, optimizer, streams, epoch: int) -> TrainState:
        """Member `row`'s state after `epoch`: copies, in its own unpadded shapes."""
        rngs = {"batches": m.batches.get_state(), "dropout": m.dropout.get_state()}
        for name, owner in zip(("augment", "mix"), streams, strict=True):
            if owner is not None:
                rngs[name] = owner.gens[row].get_state()
        result = self.results[m.index]
        return TrainState(
            epoch=epoch,
            config=m.config.to_dict(),
            weights={k: v.detach().to("cpu", copy=True) for k, v in stack.member_tensors(row).items()},
            optimizer={
                name: unpadded(buf, m.config, stack.layout) for name, buf in optimizer.buffers(row).items()
            },
            rngs=rngs,
            history=[vars(h).copy() for h in result.history],
            train_seconds=result.train_seconds,
        )

    def _charge(self, members: list[_Member], seconds: float) -> None:
        """Each member's share of the stack's training time: overhead figures stay per trial."""
        for m in members:
            self.results[m.index].train_seconds += seconds / len(members)

    def _leave(self, stack: StackedMLP, row: int, member: _Member, steps: int) -> None:
        stack.write_member(row, member.model, steps)
        if member.config.whiten == "zca":
            fold_whitening(member.model, *zca_matrix(self.data, member.config.zca_eps))
        self.results[member.index].model = member.model
        self.done[member.index] = True
