"""Training and evaluation. Knows nothing of Optuna: the search and retraining call the same `fit`.

The data already lives on the training device (search.data); a batch is an index_select of it, so
the loop runs no DataLoader, no per-sample transform, and syncs with the host once per epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from search.config import TrainConfig
from search.data import Dataset
from search.device import autocast, optimizer_flags
from search.model import build_mlp, count_params, l1_penalty, l1_weights

EVAL_BATCH = 8192  # samples per forward pass when scoring; memory-bound, not a hyperparameter


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float  # mean per-batch loss over the epoch, L1 term included
    val_loss: float  # mean cross-entropy on the validation split
    val_acc: float  # fraction correct on the validation split


# Called after every epoch; returning True asks fit to stop (a pruner's verdict, a time limit).
EpochCallback = Callable[[EpochMetrics], bool | None]


@dataclass
class FitResult:
    model: nn.Module
    history: list[EpochMetrics] = field(default_factory=list)
    stopped: bool = False  # on_epoch asked to stop before the epoch budget ran out
    diverged: str | None = None  # why training ended early with a non-finite loss
    train_seconds: float = 0.0  # time in training and validation, not in on_epoch callbacks
    n_params: int = 0

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    @property
    def val_acc(self) -> float:
        """Accuracy of the final weights, the ones a checkpoint saves."""
        return self.history[-1].val_acc if self.history else float("nan")


def make_optimizer(config: TrainConfig, model: nn.Module, device: torch.device):
    flags = optimizer_flags(device, config.optimizer)
    common = dict(lr=config.lr, weight_decay=config.weight_decay, **flags)
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, momentum=config.momentum, **common)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, momentum=config.momentum, **common)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, **common)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, **common)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def fit(
    config: TrainConfig,
    data: Dataset,
    *,
    on_epoch: EpochCallback | None = None,
    include_val: bool = False,
) -> FitResult:
    """Train a fresh model on `data` (train split; with `include_val`, train + validation).

    Reports after each epoch through `on_epoch`. A loss that turns NaN or inf ends training and
    sets `diverged`; it does not raise, so the caller decides what a diverged run means.
    """
    device = data.device
    torch.manual_seed(config.seed)
    model = build_mlp(config, in_features=data.in_features, n_classes=data.n_classes).to(device)
    optimizer = make_optimizer(config, model, device)
    weights = l1_weights(model) if config.l1 > 0 else []
    x, y = data.x_train, data.y_train
    if include_val:
        x, y = torch.cat([x, data.x_val]), torch.cat([y, data.y_val])
    gen = torch.Generator(device=device).manual_seed(config.seed)
    result = FitResult(model=model, n_params=count_params(model))
    n, bs = len(x), config.batch_size
    # A last batch of one sample would break BatchNorm's batch statistics: fold it away.
    n_batches = max(1, n // bs + (1 if n % bs > 1 else 0))
    started, callback_seconds = time.perf_counter(), 0.0
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(n, device=device, generator=gen)
        loss_sum = torch.zeros((), device=device)
        for b in range(n_batches):
            idx = order[b * bs : (b + 1) * bs]
            with autocast(device):
                loss = F.cross_entropy(model(x.index_select(0, idx)), y.index_select(0, idx))
            if weights:
                loss = loss + config.l1 * l1_penalty(weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
        train_loss = loss_sum.item() / n_batches  # the epoch's one host sync for training
        if not math.isfinite(train_loss):
            result.diverged = f"training loss became {train_loss} in epoch {epoch}"
            break
        val_loss, val_acc = evaluate(model, data.x_val, data.y_val)
        metrics = EpochMetrics(epoch, train_loss, val_loss, val_acc)
        result.history.append(metrics)
        if on_epoch is not None:
            t0 = time.perf_counter()
            stop = on_epoch(metrics)
            callback_seconds += time.perf_counter() - t0
            if stop and epoch < config.epochs:
                result.stopped = True
                break
    result.train_seconds = time.perf_counter() - started - callback_seconds
    return result


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits in float32 for every row of x, in eval mode (running BN stats, no dropout)."""
    model.eval()
    device = x.device
    outs = []
    for i in range(0, len(x), EVAL_BATCH):
        with autocast(device):
            outs.append(model(x[i : i + EVAL_BATCH]).float())
    return torch.cat(outs) if outs else torch.empty(0, device=device)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on (x, y)."""
    if len(x) == 0:
        return float("nan"), float("nan")
    logits = predict_logits(model, x)
    loss = F.cross_entropy(logits, y, reduction="sum")
    correct = (logits.argmax(1) == y).sum()
    stats = torch.stack([loss, correct.float()]).tolist()  # one host sync
    return stats[0] / len(x), stats[1] / len(x)
