"""What each completed trial keeps for the export's ensemble: its validation predictions, and the
weights of the trials still in contention, in half precision, within a bound.

A study trains dozens of good, different MLPs and the search keeps one; greedy ensemble selection
(Caruana et al. 2004; search.artifacts.ensemble) needs only each trial's predictions on the
validation split to choose a weighted set of them, and the chosen trials' weights to build it. So
every COMPLETE trial writes `pool/val-<n>.pt` (its validation outputs: log-probabilities, or the
standardized regression output), and the best `size` of them by value also keep
`pool/weights-<n>.pt`; a better trial evicts the worst one's weights. The disk bound is `size`
half-precision copies of the space's largest model, and it holds after every write: the index
(`pool/index.json`) is the truth, and weight files it does not name are removed under the lock.
Pruned trials keep nothing.

The predictions are taken with the weights rounded to half precision, as they are kept: what the
selection scores is what the export builds, exactly. Several workers share the folder under a
file lock (search.files), every file written atomically.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.data.datasets import Dataset
from search.files import atomic_write, locked
from search.schema import POOL_DIR, POOL_INDEX
from search.training.config import TrainConfig
from search.training.model import predict_logits


@dataclass(frozen=True)
class Entry:
    """One completed trial's record in the pool."""

    trial_number: int
    value: float  # its validation score in the search
    config: TrainConfig
    outputs: torch.Tensor  # float32 [N_val, C]: log-probabilities, or [N_val, 1] regression outputs


def pool_dir(results: str | Path) -> Path:
    return Path(results) / POOL_DIR


def _val_path(directory: Path, n: int) -> Path:
    return directory / f"val-{n}.pt"


def _weights_path(directory: Path, n: int) -> Path:
    return directory / f"weights-{n}.pt"


def half_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict on the CPU, floating tensors in half precision (counters stay integers)."""
    return {
        k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu())
        for k, v in model.state_dict().items()
    }


def validation_outputs(model: nn.Module, data: Dataset, config: TrainConfig) -> torch.Tensor:
    """What the selection scores: the model's outputs on the validation split with its weights
    rounded to half precision (a copy; `model` is untouched), as float32 on the CPU."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for v in rounded.state_dict().values():
            if v.is_floating_point():
                v.copy_(v.half())
    logits = predict_logits(rounded, data.variant(config.numeric).x_val).float()
    out = logits if data.task == "regression" else torch.log_softmax(logits, dim=1)
    return out.cpu()


def _read_index(directory: Path) -> dict[str, float]:
    try:
        saved = json.loads((directory / POOL_INDEX).read_text())["weights"]
        return {str(k): float(v) for k, v in saved.items()}
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return {}


def keep(
    directory: str | Path, *, trial_number: int, value: float, config: TrainConfig, model: nn.Module,
    data: Dataset, size: int,
) -> bool:  # fmt: skip
    """Record a COMPLETE trial: its validation outputs always, its weights if it is among the
    best `size` so far (evicting the worst). True if its weights were kept."""
    directory = Path(directory)
    outputs = validation_outputs(model, data, config)
    record = {"trial_number": trial_number, "value": value, "config": config.to_dict(), "outputs": outputs}
    with locked(directory):
        atomic_write(_val_path(directory, trial_number), lambda fh: torch.save(record, fh))
        index = _read_index(directory)
        ranked = sorted(index.items(), key=lambda kv: (kv[1], -int(kv[0])))  # worst first
        kept = size > 0 and (len(index) < size or value > ranked[0][1])
        if kept:
            state = {"trial_number": trial_number, "state_dict": half_state(model)}
            atomic_write(_weights_path(directory, trial_number), lambda fh: torch.save(state, fh))
            index[str(trial_number)] = value
            while len(index) > size:
                worst = min(index.items(), key=lambda kv: (kv[1], -int(kv[0])))[0]
                del index[worst]
        atomic_write(directory / POOL_INDEX, json.dumps({"size": size, "weights": index}, indent=1))
        for path in directory.glob("weights-*.pt"):  # evicted, or orphaned by a crash
            if path.stem.removeprefix("weights-") not in index:
                path.unlink(missing_ok=True)
    return kept


def candidates(directory: str | Path, completed: dict[int, float]) -> list[Entry]:
    """The pool's trials that still hold weights and are COMPLETE in the study with the value
    they were kept with (`completed`: number -> value), best first. A pool left by another study
    of the same name holds none of these."""
    directory = Path(directory)
    out = []
    for key in _read_index(directory):
        n = int(key)
        if n not in completed or not _weights_path(directory, n).is_file():
            continue
        try:
            record = torch.load(_val_path(directory, n), map_location="cpu", weights_only=True)
        except (FileNotFoundError, RuntimeError, EOFError, ValueError):
            continue
        if record.get("value") != completed[n]:
            continue
        out.append(Entry(n, record["value"], TrainConfig.from_dict(record["config"]), record["outputs"]))
    return sorted(out, key=lambda e: (-e.value, e.trial_number))


def load_weights(directory: str | Path, trial_number: int) -> dict[str, torch.Tensor]:
    """A kept trial's state_dict, in half precision."""
    saved: dict[str, Any] = torch.load(
        _weights_path(Path(directory), trial_number), map_location="cpu", weights_only=True
    )
    return saved["state_dict"]


def disk_bytes(directory: str | Path) -> tuple[int, int]:
    """(bytes of kept weights, bytes of validation outputs) in the pool folder."""
    directory = Path(directory)
    size = lambda pattern: sum(p.stat().st_size for p in directory.glob(pattern))  # noqa: E731
    return size("weights-*.pt"), size("val-*.pt")
