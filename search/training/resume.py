"""A fit's state at the end of an epoch, so a fit killed later can carry on from there.

Everything the next epoch depends on is captured: the model (weights and BatchNorm's running
statistics), the optimizer's state (momentum buffers, Adam's moments and step counts), the lr
schedule's position, the three random streams (batch order, augmentation, and PyTorch's global
one, which dropout draws from) and the epochs already run. On the CPU a fit resumed from epoch k
then trains exactly the epochs an uninterrupted fit trains (tests/training/test_resume.py).

Files are written atomically (a temporary file renamed over the old one): a process killed while
writing leaves the previous state, never half of one.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

FORMAT = 1  # bump when a field changes meaning


@dataclass
class TrainState:
    epoch: int  # epochs completed; the resumed fit starts with epoch + 1
    config: dict[str, Any]  # the TrainConfig it belongs to, as a dict: a state fits only its config
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    batch_rng: torch.Tensor  # the generator that shuffles each epoch's batches
    augment_rng: torch.Tensor | None
    torch_rng: torch.Tensor  # PyTorch's global CPU generator (dropout on the CPU)
    cuda_rng: list[torch.Tensor] | None = None  # the CUDA generators (dropout on a GPU)
    history: list[dict[str, Any]] = field(default_factory=list)  # EpochMetrics as dicts
    train_seconds: float = 0.0  # what the epochs so far cost (the resumed attempt counts its own)


def _cpu(value: Any) -> Any:
    """A deep copy on the CPU: the live tensors go on changing after the capture."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    return value


def capture(
    *,
    epoch: int,
    config: dict[str, Any],
    model,
    optimizer,
    scheduler,
    batch_gen,
    augment_gen,
    history,
    seconds,
) -> TrainState:
    cuda = (
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    )
    return TrainState(
        epoch=epoch,
        config=config,
        model=_cpu(model.state_dict()),
        optimizer=_cpu(optimizer.state_dict()),
        scheduler=_cpu(scheduler.state_dict()) if scheduler is not None else None,
        batch_rng=batch_gen.get_state().clone(),
        augment_rng=augment_gen.get_state().clone() if augment_gen is not None else None,
        torch_rng=torch.get_rng_state(),
        cuda_rng=cuda,
        history=[dataclasses.asdict(m) for m in history],
        train_seconds=seconds,
    )


def restore(state: TrainState, *, model, optimizer, scheduler, batch_gen, augment_gen) -> None:
    """Put a captured state back into freshly built training parts."""
    model.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    if scheduler is not None and state.scheduler is not None:
        scheduler.load_state_dict(state.scheduler)
    batch_gen.set_state(state.batch_rng)
    if augment_gen is not None and state.augment_rng is not None:
        augment_gen.set_state(state.augment_rng)
    torch.set_rng_state(state.torch_rng)
    if state.cuda_rng is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state.cuda_rng)


def save_state(path: Path, state: TrainState) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"format": FORMAT, **dataclasses.asdict(state)}, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_state(path: Path) -> TrainState | None:
    """The state saved at `path`, or None if there is none (or it is from another format)."""
    if not path.is_file():
        return None
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and numbers only
    if not isinstance(raw, dict) or raw.pop("format", None) != FORMAT:
        return None
    return TrainState(**raw)
