"""The learning-rate schedule: a multiplier of the config's `lr` at each optimizer step.

The schedule is sized for the full epoch budget, whatever happens to the trial: a trial the
pruner stops after 3 of 15 epochs trained the first fifth of the same curve a full trial trains,
so its reported values are the ones a full run would have reported at those epochs.

    warm-up   the first `warmup` of the steps ramp linearly from lr/steps up to lr
    constant  then lr
    cosine    then a half cosine from lr down to 0 (Loshchilov & Hutter's SGDR, one cycle)
    onecycle  then a straight line down to 0: with a warm-up, the triangular one-cycle policy
              (Smith & Topin) that airbench and fast CIFAR-10 recipes train with
"""

from __future__ import annotations

import math

from search.training.config import SCHEDULES


def lr_factor(schedule: str, warmup: float, step: int, total: int) -> float:
    """The multiplier of the base lr for 0-based `step` of `total` steps."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}")
    total = max(1, total)
    warm = int(round(warmup * total))
    if step < warm:
        return (step + 1) / warm
    if schedule == "constant":
        return 1.0
    progress = (step - warm) / max(1, total - warm)  # 0 at the peak, towards 1 at the end
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress
