"""`Dataset`: what the trainer consumes, every split a tensor already on the training device.

Images (search.data.datasets) and tables (search.data.tables) both produce one; this module
imports neither, so the two loaders depend on it and not on each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from search.data.targets import TargetScale


@dataclass(frozen=True, eq=False)
class Dataset:
    """What the trainer consumes; every tensor already lives on the training device."""

    name: str
    classes: tuple[str, ...]  # class names; () for regression
    image_shape: tuple[int, int, int] | None  # (C, H, W); None for a table
    mean: tuple[float, ...]  # per channel, [0, 1] pixel units, from the train split only (images)
    std: tuple[float, ...]
    x_train: torch.Tensor = field(repr=False)  # float32 [N, features], normalized (C,H,W order)
    y_train: torch.Tensor = field(repr=False)  # int64 [N] class indices, or float32 standardized target
    x_val: torch.Tensor = field(repr=False)
    y_val: torch.Tensor = field(repr=False)
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    split_seed: int
    val_fraction: float
    task: str = "classification"  # or "regression" (search.data.targets)
    metric: str = "accuracy"  # what a trial's value scores (search.data.targets.METRICS)
    target: TargetScale | None = None  # regression: how y_* were standardized from the target
    table: Any = field(default=None, repr=False)  # search.data.tables.Table: rows and preprocessing
    numeric: str = "standard"  # a table's numeric transform that x_* were encoded with
    # The leading columns of x_* that each hold one numeric column's scaled value (a table's
    # numeric columns come first: search.data.tables), which a periodic embedding takes
    # (search.training.embeddings); 0 for images, and for a piecewise-linear encoding's bins.
    numeric_features: int = 0

    @property
    def in_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def n_classes(self) -> int:
        """The model's outputs: one per class, or one value for regression."""
        return 1 if self.task == "regression" else len(self.classes)

    def variant(self, numeric: str) -> Dataset:
        """This table encoded with another numeric transform (memoized); images are their own."""
        if self.table is None or numeric == self.numeric:
            return self
        return self.table.encoded(self, numeric)

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized rows [N, C*H*W] -> pixels [N, C, H, W] in [0, 1] on the CPU, for pictures."""
        assert self.image_shape is not None, f"{self.name} is a table: it has no images"
        x = x.detach().to("cpu", torch.float32).reshape(-1, *self.image_shape)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x * std + mean).clamp_(0.0, 1.0)
