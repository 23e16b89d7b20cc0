"""The notebook's training loop against the project's, in one process (`python -m search.bench`).

Both paths train the same model (the notebook's 3072-512-256-10 MLP, SGD lr 0.001 momentum 0.9)
on the same training images, on the same device, at the same batch size; only the data pipeline
and the loop differ:

(a) notebook: torchvision `ImageFolder` over the image files, every sample through PIL ->
    `ToTensor` -> `Normalize`, `DataLoader(shuffle=True, num_workers=2)`, `.to(device)` per batch,
    `zero_grad / backward / step` and `loss.item()` per step;
(b) search:   `search.training.fit.fit` on `search.data.datasets.load_dataset` (decoded once,
    on the device).

Timing covers training passes only: neither path's validation is timed. (b) is one `fit` of
1 + N epochs whose per-epoch times come from `EpochMetrics.seconds`; (a)'s epochs run in fit's
epoch callback, so the two alternate (a warm-up epoch of each, then a, b, a, b, ...) and a busy
neighbour on a shared machine slows both rather than one. Each figure is the median of the N.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from search.data.datasets import Dataset, split_indices
from search.device import describe, resolve_device
from search.errors import UserError
from search.perf.flops import matmul_floor
from search.perf.images import Images, Progress, load_bench_data
from search.training.config import TrainConfig
from search.training.fit import fit
from search.training.model import architecture, build_mlp

NOTEBOOK = TrainConfig(
    hidden=(512, 256), batchnorm=False, dropout=0.0, optimizer="sgd", lr=1e-3, momentum=0.9
)
SUITE_BATCH_SIZES = (128, 512)
SUITE_BUDGET_S = 250  # seconds from the command's start: the searches stop by then (5-minute slot)


@dataclass(frozen=True)
class BenchOptions:
    device: str = "auto"
    data_dir: str | None = None
    batch_size: int = 128
    epochs: int = 3  # measured, after one warm-up epoch
    synthetic: bool = False
    limit: int | None = None
    workers: int = 2  # the notebook's DataLoader workers
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    seed: int = 0

    def config(self) -> TrainConfig:
        return NOTEBOOK.replace(
            optimizer=self.optimizer,
            lr=self.lr,
            momentum=self.momentum,
            batch_size=self.batch_size,
            epochs=1 + self.epochs,
            seed=self.seed,
        )


# ---------------------------------------------------------------------------- (a) the notebook


class NotebookLoop:
    """The seed notebook's training loop, as it wrote it, over the same images as `data`."""

    def __init__(self, opts: BenchOptions, images: Images, data: Dataset, device: torch.device):
        from torch.utils.data import DataLoader, Subset
        from torchvision import datasets, transforms

        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(data.mean, data.std)])
        folder = datasets.ImageFolder(str(images.root / "train"), transform=transform)
        train_idx, _ = split_indices(len(folder), val_fraction=data.val_fraction, seed=data.split_seed)
        train_idx = train_idx[: len(data.x_train)]
        # Both paths must train the very same images: same split, same labels, same order.
        targets = np.asarray(folder.targets)[train_idx]
        if tuple(folder.classes) != data.classes or not np.array_equal(targets, data.y_train.cpu().numpy()):
            raise RuntimeError(
                f"{images.root}: ImageFolder and search.data.datasets disagree on the training images"
            )
        self.n = len(train_idx)
        self.device = device
        self.loader = DataLoader(
            Subset(folder, train_idx.tolist()),
            batch_size=opts.batch_size,
            shuffle=True,
            num_workers=opts.workers,
        )
        torch.manual_seed(opts.seed)
        config = opts.config()
        self.model = build_mlp(config, in_features=data.in_features, n_classes=data.n_classes)
        self.model.to(device)
        params = self.model.parameters()
        opt_class = {
            "sgd": torch.optim.SGD,
            "adam": torch.optim.Adam,
            "adamw": torch.optim.AdamW,
            "rmsprop": torch.optim.RMSprop,
        }[opts.optimizer]
        kwargs = {"momentum": opts.momentum} if opts.optimizer in ("sgd", "rmsprop") else {}
        self.optimizer = opt_class(params, lr=opts.lr, **kwargs)  # the optimizer's own defaults
        self.criterion = torch.nn.CrossEntropyLoss()

    def epoch(self) -> tuple[float, float]:
        """(seconds, mean training loss) of one pass, worker start-up included as in a notebook."""
        started = time.perf_counter()
        self.model.train()
        running_loss, steps = 0.0, 0
        for images, labels in self.loader:
            images, labels = images.to(self.device), labels.to(self.device)
            images = images.view(images.size(0), -1)
            self.optimizer.zero_grad()
            outputs = self.model(images)
            loss = self.criterion(outputs, labels)
            loss.backward()
            self.optimizer.step()
            running_loss += loss.item()
            steps += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - started, running_loss / max(1, steps)


# ---------------------------------------------------------------------------- the bench


def run_bench(opts: BenchOptions, images: Images, progress: Progress) -> dict[str, Any]:
    """Time (a) and (b), interleaved; every figure in a JSON-ready dict."""
    device = resolve_device(opts.device)
    config = opts.config()
    data = load_bench_data(images, device, opts.limit)
    notebook = NotebookLoop(opts, images, data, device)
    n = len(data.x_train)
    total = 1 + opts.epochs
    base_times: list[float] = []
    base_losses: list[float] = []

    def notebook_epoch(m) -> None:  # runs between (b)'s epochs, outside their timing
        seconds, loss = notebook.epoch()
        base_times.append(seconds)
        base_losses.append(loss)
        what = "warm-up" if m.epoch == 1 else f"epoch {m.epoch - 1}/{opts.epochs}"
        progress(f"batch {opts.batch_size} {what}: notebook {seconds:.2f} s, search {m.seconds:.2f} s")

    progress(
        f"bench on {describe(device)}: {n:,} training images, batch {opts.batch_size}, "
        f"1 warm-up + {opts.epochs} epochs per path"
    )
    result = fit(config, data, on_epoch=notebook_epoch)
    if result.diverged or len(result.history) < total:
        raise UserError(f"the search path stopped early ({result.diverged}); try a smaller --lr")
    search_times = [m.seconds for m in result.history]
    out: dict[str, Any] = {
        "device": describe(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "torchvision": _torchvision_version(),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "batch_size": opts.batch_size,
        "n_train": n,
        "limit": opts.limit,
        "synthetic": images.synthetic,
        "data_dir": str(images.root) if not images.synthetic else None,
        "model": architecture(config, in_features=data.in_features, n_classes=data.n_classes),
        "config": {k: v for k, v in config.to_dict().items() if k != "epochs"},
        "warmup_epochs": 1,
        "epochs_measured": opts.epochs,
        "timing": "training passes only (validation excluded from both paths); epochs alternate "
        "a, b, a, b after one warm-up epoch each; figures are medians",
        "baseline": "ImageFolder + PIL -> ToTensor -> Normalize, "
        f"DataLoader(batch_size={opts.batch_size}, shuffle=True, num_workers={opts.workers}), "
        ".to(device), loss.item() per step",
        "baseline_workers": opts.workers,
        "baseline_warmup_s": base_times[0],
        "baseline_epoch_times_s": base_times[1:],
        "baseline_epoch_s": statistics.median(base_times[1:]),
        "baseline_train_loss": base_losses,
        "search_warmup_s": search_times[0],
        "search_epoch_times_s": search_times[1:],
        "search_epoch_s": statistics.median(search_times[1:]),
        "search_train_loss": [m.train_loss for m in result.history],
    }
    floor = matmul_floor(config, data.in_features, data.n_classes, n, device)
    out.update(floor)
    out["search_gflops"] = floor["epoch_gflop"] / out["search_epoch_s"]
    out["floor_share"] = floor["floor_epoch_s"] / out["search_epoch_s"]
    out["baseline_samples_per_s"] = n / out["baseline_epoch_s"]
    out["search_samples_per_s"] = n / out["search_epoch_s"]
    out["speedup"] = out["baseline_epoch_s"] / out["search_epoch_s"]
    return out


def _torchvision_version() -> str:
    import torchvision

    return torchvision.__version__


def format_bench(r: dict[str, Any]) -> str:
    notes = []
    if r["synthetic"]:
        notes.append("SYNTHETIC random images, not CIFAR-10")
    if r["limit"] is not None:
        notes.append(f"--limit {r['limit']}: only the first {r['n_train']:,} training images")
    lines = [
        f"device {r['device']}, torch {r['torch']}, {r['threads']} CPU thread(s); "
        f"model {r['model']}, {r['config']['optimizer']} lr {r['config']['lr']:g}, "
        f"batch {r['batch_size']}, {r['n_train']:,} training images",
        *(f"note: {x}" for x in notes),
        f"seconds per epoch: median of {r['epochs_measured']} after 1 warm-up epoch each, "
        "training passes only (validation excluded from both), epochs interleaved",
        "",
        f"{'path':<58} {'s/epoch':>8} {'samples/s':>10} {'speedup':>8}",
        _row(
            f"(a) notebook: ImageFolder+PIL, DataLoader({r['baseline_workers']} workers)",
            r["baseline_epoch_s"],
            r["n_train"],
            1.0,
        ),
        _row(
            "(b) search: training.fit on data.load_dataset",
            r["search_epoch_s"],
            r["n_train"],
            r["speedup"],
        ),
    ]
    lines.append(
        f"matmul floor: (b) achieves {r['search_gflops']:,.1f} GFLOP/s; torch.mm at the layer shapes "
        f"runs {r['mm_gflops']:,.1f} GFLOP/s here: an epoch's matmuls alone take {r['floor_epoch_s']:.3f} s, "
        f"{r['floor_share']:.0%} of (b)'s epoch"
    )
    warm = f"warm-up epochs (not in the medians): notebook {r['baseline_warmup_s']:.2f} s, "
    warm += f"search {r['search_warmup_s']:.2f} s"
    lines.append(warm)
    return "\n".join(lines)


def _row(label: str, seconds: float, n: int, speedup: float) -> str:
    return f"{label:<58} {seconds:>8.3f} {n / seconds:>10,.0f} {speedup:>7.2f}x"
