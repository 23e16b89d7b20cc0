"""Training and evaluation. Knows nothing of Optuna: the search and retraining call the same `fit`.

The data already lives on the training device (search.data.datasets); a batch is an index_select of it, so
the loop runs no DataLoader, no per-sample transform, and syncs with the host once per epoch.
With SEARCH_CUDA_GRAPHS=1 (or `fit(..., cuda_graphs=True)`), on CUDA each full batch's step
(forward, backward, optimizer) is captured once as a CUDA graph and replayed: one launch per step
instead of ~40 from Python (`_GraphedStep`). `python -m search.bench` measures all of this.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from search.data.datasets import Dataset
from search.data.whiten import fold_into_first_linear, whitened, zca_matrix
from search.errors import described
from search.training.augment import Augmenter, check_augmentable
from search.training.config import TrainConfig
from search.training.device import autocast, cuda_graphs_enabled, optimizer_flags
from search.training.model import build_mlp, l1_penalty, l1_weights
from search.training.resume import TrainState, capture, restore
from search.training.schedule import is_constant, make_scheduler

EVAL_BATCH = 8192  # samples per forward pass when scoring; memory-bound, not a hyperparameter
GRAPH_WARMUP_STEPS = 3  # eager steps before capture: they create the optimizer state, cuBLAS handles
GRAPH_MIN_STEPS = 50  # fewer full-batch steps in a whole fit than this: capturing cannot pay off


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float  # mean per-batch loss over the epoch: label smoothing and L1 term included
    val_loss: float  # mean cross-entropy on the validation split
    val_acc: float  # fraction correct on the validation split
    seconds: float = 0.0  # this epoch's training pass (its steps and one host sync), not validation


# Called after every epoch; returning True asks fit to stop (a pruner's verdict, a time limit).
EpochCallback = Callable[[EpochMetrics], bool | None]


@dataclass
class FitResult:
    model: nn.Module
    history: list[EpochMetrics] = field(default_factory=list)
    stopped: bool = False  # on_epoch asked to stop before the epoch budget ran out
    diverged: str | None = None  # why training ended early with a non-finite loss
    train_seconds: float = 0.0  # building the model and its training passes: not validation, not on_epoch
    val_seconds: float = 0.0  # scoring the validation split after each epoch
    cuda_graphs: bool = False  # full batches were replayed from a captured CUDA graph
    stack_padding: float = 0.0  # fit_stacked only: share of its stack's matmul work that was padding

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    @property
    def val_acc(self) -> float:
        """Accuracy of the final weights, the ones a checkpoint saves."""
        return self.history[-1].val_acc if self.history else float("nan")


def make_optimizer(config: TrainConfig, model, device: torch.device, *, capturable: bool = False):
    """The config's optimizer for `model` (a module, or a list of tensors), with the fastest
    kernels this device has. `capturable` keeps the optimizer's step counters on the device,
    which capturing its step in a CUDA graph requires."""
    flags = optimizer_flags(device, config.optimizer)
    common = dict(lr=config.lr, weight_decay=config.weight_decay, **flags)
    if capturable and config.optimizer != "sgd":  # SGD keeps no step counter: nothing to move
        common["capturable"] = True
    params = model.parameters() if isinstance(model, nn.Module) else model
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, momentum=config.momentum, **common)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, momentum=config.momentum, **common)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, **common)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, **common)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def import_lazy_parts() -> None:
    """Load what PyTorch imports on first use of an optimizer (torch._dynamo, about 2 s here),
    so that the first trial's `train_seconds` measure training rather than an import."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def fit(
    config: TrainConfig,
    data: Dataset,
    *,
    on_epoch: EpochCallback | None = None,
    include_val: bool = False,
    cuda_graphs: bool | None = None,
    resume: TrainState | None = None,
    on_state: Callable[[TrainState], None] | None = None,
) -> FitResult:
    """Train a fresh model on `data` (train split; with `include_val`, train + validation).

    Reports after each epoch through `on_epoch`. A loss that turns NaN or inf ends training and
    sets `diverged`; it does not raise, so the caller decides what a diverged run means.
    `cuda_graphs`: None follows `search.training.device.cuda_graphs_enabled` (on for CUDA) where the fit has
    enough full batches to repay the capture; True forces it; False never. True on another device
    runs the same capture-and-replay bookkeeping with a stand-in that re-runs the step, so the CPU
    tests exercise it and get bit-identical results to the plain loop. Graphs capture a fixed
    step, so a fit with an lr schedule or augmentation always runs eagerly.

    With `whiten = "zca"` the model trains on whitened inputs (search.data.whiten) and the returned
    model has the whitening folded into its first layer: it takes `data`'s normalized inputs.

    `on_state`, if given, receives the fit's state after every epoch but the last (a copy: the
    caller may keep it); `resume` starts from such a state, its epochs already in the history.
    """
    check_augmentable(config, data.image_shape, data.name)
    device = data.device
    build_started = time.perf_counter()
    source = whitened(data, config.zca_eps) if config.whiten == "zca" else data
    torch.manual_seed(config.seed)
    model = build_mlp(config, in_features=data.in_features, n_classes=data.n_classes).to(device)
    x, y = source.x_train, source.y_train
    if include_val:
        x, y = torch.cat([x, source.x_val]), torch.cat([y, source.y_val])
    n, bs = len(x), config.batch_size
    # A last batch of one sample would break BatchNorm's batch statistics: fold it away.
    n_batches = max(1, n // bs + (1 if n % bs > 1 else 0))
    full_steps = config.epochs * min(n_batches, n // bs)
    if cuda_graphs is None:  # automatic: only where capturing can pay for itself
        graphs = cuda_graphs_enabled(device) and full_steps >= GRAPH_MIN_STEPS + GRAPH_WARMUP_STEPS
    else:
        graphs = cuda_graphs and full_steps > GRAPH_WARMUP_STEPS
    graphs = graphs and is_constant(config) and not config.augments
    optimizer = make_optimizer(config, model, device, capturable=graphs and device.type == "cuda")
    scheduler = make_scheduler(optimizer, config, config.epochs * n_batches)  # the full budget's steps
    augment = Augmenter(config, data.image_shape, x) if config.augments else None
    smoothing = config.label_smoothing
    weights = l1_weights(model) if config.l1 > 0 else []
    gen = torch.Generator(device=device).manual_seed(config.seed)
    result = FitResult(model=model)
    first_epoch = 1
    if resume is not None:
        if resume.config != config.to_dict():
            raise ValueError(f"the saved state after epoch {resume.epoch} belongs to another config")
        aug_gen = augment.gen if augment is not None else None
        restore(
            resume, model=model, optimizer=optimizer, scheduler=scheduler, batch_gen=gen, augment_gen=aug_gen
        )
        result.history = [EpochMetrics(**m) for m in resume.history]
        # train_seconds counts this attempt only: a worker's share of time in training stays true
        first_epoch = resume.epoch + 1
    loss_sum = torch.zeros((), device=device)  # one tensor for the whole fit: a graph writes to it

    def step(idx: torch.Tensor) -> None:
        xb = augment.take(idx) if augment is not None else x.index_select(0, idx)
        with autocast(device):
            loss = F.cross_entropy(model(xb), y.index_select(0, idx), label_smoothing=smoothing)
        if weights:
            loss = loss + config.l1 * l1_penalty(weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum.add_(loss.detach())

    graphed = _GraphedStep(step, bs, device) if graphs else None
    result.train_seconds += time.perf_counter() - build_started
    for epoch in range(first_epoch, config.epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        order = torch.randperm(n, device=device, generator=gen)
        loss_sum.zero_()
        for b in range(n_batches):
            idx = order[b * bs : (b + 1) * bs]
            if graphed is not None and len(idx) == bs:
                graphed(idx)
            else:
                step(idx)
        train_loss = loss_sum.item() / n_batches  # the epoch's one host sync for training
        epoch_seconds = time.perf_counter() - epoch_started
        result.train_seconds += epoch_seconds
        if not math.isfinite(train_loss):
            result.diverged = f"training loss became {train_loss} in epoch {epoch}"
            break
        val_started = time.perf_counter()
        val_loss, val_acc = evaluate(model, source.x_val, source.y_val)
        result.val_seconds += time.perf_counter() - val_started
        metrics = EpochMetrics(epoch, train_loss, val_loss, val_acc, seconds=epoch_seconds)
        result.history.append(metrics)
        if on_epoch is not None:
            stop = on_epoch(metrics)
            if stop and epoch < config.epochs:
                result.stopped = True
                break
        if on_state is not None and epoch < config.epochs:
            aug_gen = augment.gen if augment is not None else None
            state = capture(
                epoch=epoch, config=config.to_dict(), model=model, optimizer=optimizer,
                scheduler=scheduler, batch_gen=gen, augment_gen=aug_gen, history=result.history,
                seconds=result.train_seconds,
            )  # fmt: skip
            on_state(state)
    if graphed is not None:
        result.cuda_graphs = graphed.graph is not None
        graphed.close()
        optimizer.zero_grad(set_to_none=True)  # the grads live in the graph's memory pool
    if source is not data:
        fold_into_first_linear(model, *zca_matrix(data, config.zca_eps))
    return result


class _GraphedStep:
    """Runs `step(idx)` for full batches: eagerly for the first few, then as a captured graph.

    Capture records the step's kernels against fixed addresses: the batch indices are copied into
    `self.idx` before each replay, and the model, optimizer state, data and loss accumulator never
    move. Gradients are set to None before each backward, so capture allocates them in the graph's
    pool and each replay writes them afresh; eager steps (a short last batch) allocate their own.
    On a device without CUDA graphs, `_StandInGraph` replays by calling the step again.
    """

    def __init__(self, step: Callable[[torch.Tensor], None], batch_size: int, device: torch.device):
        self.step, self.device = step, device
        self.idx = torch.empty(batch_size, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | _StandInGraph | None = None
        self.failed: str | None = None  # capture raised: the rest of the fit runs eagerly
        self.eager_steps = 0
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def __call__(self, idx: torch.Tensor) -> None:
        if self.graph is None and self.failed is None:
            if self.eager_steps < GRAPH_WARMUP_STEPS:
                self.eager_steps += 1
                return self._side_stream(self.step, idx)
            self._capture(idx)
        if self.graph is None:
            return self.step(idx)
        self.idx.copy_(idx)
        self.graph.replay()

    def _side_stream(self, fn, *args) -> None:
        """Warm-up steps run on the capture stream, as PyTorch's CUDA graph recipe asks."""
        if self.stream is None:
            return fn(*args)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream), warnings.catch_warnings():
            # Adam & co. warn when a capturable optimizer steps outside a capture.
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            fn(*args)
        torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def _capture(self, idx: torch.Tensor) -> None:
        self.idx.copy_(idx)
        if self.stream is None:
            self.graph = _StandInGraph(lambda: self.step(self.idx))
            return
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                self.step(self.idx)
        except Exception as e:  # a kernel that cannot be captured: train on without graphs
            self.failed = described(e)
            warnings.warn(
                f"CUDA graph capture failed, training without graphs: {self.failed}",
                RuntimeWarning,
                stacklevel=3,
            )
            torch.cuda.synchronize(self.device)
            return
        self.graph = graph  # capturing ran nothing: the caller replays for this batch now

    def close(self) -> None:
        self.graph = None


class _StandInGraph:
    """What `_GraphedStep` captures on a device without CUDA graphs: replay re-runs the step."""

    def __init__(self, fn: Callable[[], None]):
        self.fn = fn

    def replay(self) -> None:
        self.fn()


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits in float32 for every row of x, in eval mode (running BN stats, no dropout)."""
    model.eval()
    device = x.device
    outs = []
    for i in range(0, len(x), EVAL_BATCH):
        with autocast(device):
            outs.append(model(x[i : i + EVAL_BATCH]).float())
    if len(outs) == 1:
        return outs[0]
    return torch.cat(outs) if outs else torch.empty(0, device=device)


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on (x, y)."""
    if len(x) == 0:
        return float("nan"), float("nan")
    logits = predict_logits(model, x)
    loss = F.cross_entropy(logits, y, reduction="sum")
    correct = (logits.argmax(1) == y).sum()
    stats = torch.stack([loss, correct.float()]).tolist()  # one host sync
    return stats[0] / len(x), stats[1] / len(x)
