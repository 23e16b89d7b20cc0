"""A member's training state at the end of an epoch, so a fit killed later can carry on from there.

Kept per member, in its own unpadded shapes (it resumes alone or in any stack) and named as the
stack's layout names them: the weights and BatchNorm's statistics, the optimizer's buffers, the
three random streams (batches, dropout, augmentation) and the epochs run; the step count, which
places it on its lr schedule, follows from the epoch. On the CPU a fit resumed from epoch k trains
exactly the epochs an uninterrupted one trains (tests/training/test_state.py), alone or stacked.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from search.files import atomic_write
from search.training.config import TrainConfig
from search.training.stack import Layout, member_slices

FORMAT = 4  # bump when a field changes meaning


@dataclass
class TrainState:
    epoch: int  # epochs completed; the resumed fit starts with epoch + 1
    config: dict[str, Any]  # the TrainConfig it belongs to, as a dict: a state fits only its config
    weights: dict[str, torch.Tensor]  # w0, b0, g0, be0, rm0, rv0, ..., wh, bh: its own shapes
    optimizer: dict[str, dict[str, torch.Tensor]]  # buffer -> tensor name -> its unpadded values
    rngs: dict[str, torch.Tensor]  # generator states: "batches", "dropout", "augment", "mix"
    history: list[dict[str, Any]] = field(default_factory=list)  # EpochMetrics as dicts
    train_seconds: float = 0.0  # what the epochs so far cost (the resumed attempt counts its own)


def unpadded(row: torch.Tensor, config: TrainConfig, layout: Layout) -> dict[str, torch.Tensor]:
    """A [P] row of a stack's layout as the member's own named tensors (CPU copies)."""
    views = layout.views(row.unsqueeze(0))
    return {
        name: views[name][0][where].detach().to("cpu", copy=True)
        for name, where in member_slices(config, layout).items()
        if name in views
    }


def padded(
    named: dict[str, torch.Tensor], config: TrainConfig, layout: Layout, like: torch.Tensor
) -> torch.Tensor:
    """The inverse of `unpadded`: a [P] row of `layout`, zero where the member has nothing."""
    row = torch.zeros_like(like)
    views = layout.views(row.unsqueeze(0))
    for name, where in member_slices(config, layout).items():
        if name in named:
            views[name][0][where].copy_(named[name])
    return row


def save_state(path: Path, state: TrainState) -> Path:
    return atomic_write(path, lambda fh: torch.save({"format": FORMAT, **dataclasses.asdict(state)}, fh))


def load_state(path: Path) -> TrainState | None:
    """The state saved at `path`, or None if there is none (or it is from another format)."""
    if not path.is_file():
        return None
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and numbers only
    if not isinstance(raw, dict) or raw.pop("format", None) != FORMAT:
        return None
    return TrainState(**raw)
