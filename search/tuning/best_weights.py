"""Keep the best trial's weights during a search: one file per study, replaced only by a better one.

Several workers (processes, or machines on a shared filesystem) may finish trials at once, so the
compare-and-replace runs under an exclusive file lock, and each file is written atomically
(search.files): a reader never sees half a checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.files import atomic_write, locked
from search.schema import BEST_META, BEST_WEIGHTS


def read_meta(directory: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(directory) / BEST_META).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def load_best(directory: str | Path) -> dict[str, Any] | None:
    """The saved checkpoint {trial_number, value, state_dict}, or None if there is none."""
    path = Path(directory) / BEST_WEIGHTS
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def save_if_best(
    directory: str | Path,
    *,
    value: float,
    trial_number: int,
    model: nn.Module,
    meta: dict[str, Any] | None = None,
) -> bool:
    """Save `model`'s state_dict if `value` beats the saved one (higher is better). True if saved."""
    directory = Path(directory)
    with locked(directory):
        current = read_meta(directory)
        if current is not None and current.get("value", float("-inf")) >= value:
            return False
        record = {**(meta or {}), "value": value, "trial_number": trial_number}
        # The weights file carries its own trial number and value, so it is self-describing
        # even if a crash falls between the two writes; the JSON is for people and quick checks.
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        payload = {"trial_number": trial_number, "value": value, "state_dict": state}
        atomic_write(directory / BEST_WEIGHTS, lambda fh: torch.save(payload, fh))
        atomic_write(directory / BEST_META, json.dumps(record, indent=2))
        return True
