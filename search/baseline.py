"""The study file's baseline trial, and what the search gained over it.

A study whose file has a `[baseline]` table starts with that config as trial 0 (enqueued by the
runner, never pruned), so every summary can say how far the search got beyond it:
"best 0.6120 vs the baseline 0.5310: +8.1 points".
"""

from __future__ import annotations

from collections.abc import Sequence

from optuna.trial import FrozenTrial, TrialState

from search.objective import ATTR_BASELINE


def baseline_trial(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """The study's completed baseline trial (the first, should it have been retried)."""
    return next(
        (t for t in trials if t.user_attrs.get(ATTR_BASELINE) and t.state == TrialState.COMPLETE),
        None,
    )


def gain_text(best: float, baseline: float) -> str:
    """Accuracy points gained, e.g. `best 0.6120 vs the baseline 0.5310: +8.1 points`."""
    return f"best {best:.4f} vs the baseline {baseline:.4f}: {100 * (best - baseline):+.1f} points"


def baseline_gain(trials: Sequence[FrozenTrial], best_value: float | None) -> str | None:
    base = baseline_trial(trials)
    if base is None or best_value is None or base.value is None:
        return None
    return gain_text(best_value, base.value) + f" (baseline: trial {base.number})"
