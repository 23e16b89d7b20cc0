"""Picking trials out of a study: the complete ones, the best, the top few, the baseline, and how
many of each state there are.

A study whose file has a `[baseline]` table starts with that config as trial 0 (enqueued by the
runner, never pruned), so every summary can say how far the search got beyond it:
"best 0.6120 vs the baseline 0.5310: +8.1 points".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from optuna.trial import FrozenTrial, TrialState

from search.schema import ATTR_BASELINE
from search.tuning.pareto import Point, front_ranks

TOP_FRACTION, TOP_MIN = 0.1, 5  # "the best trials": the top 10% of complete trials, at least 5


def state_counts(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    """How many trials are in each state, by TrialState name (COMPLETE, PRUNED, ...), every
    state present (0 where none)."""
    return {s.name: sum(t.state == s for t in trials) for s in TrialState}


def counts_text(trials: Sequence[FrozenTrial]) -> str:
    """`3 complete, 2 pruned, 1 fail`, the states with none left out; `no trials` for none."""
    return ", ".join(f"{n} {k.lower()}" for k, n in state_counts(trials).items() if n) or "no trials"


def complete_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The COMPLETE trials that hold a value, in the study's order."""
    return [t for t in trials if t.state == TrialState.COMPLETE and t.values]


def value_of(t: FrozenTrial) -> float:
    """The validation score of a trial `complete_trials` keeps (a COMPLETE one): its value, or
    with two objectives its first (the second is a cost, search.tuning.costs)."""
    assert t.values, f"trial {t.number} has no value"
    return t.values[0]


def best_complete(trials: Sequence[FrozenTrial], *, maximize: bool = True) -> FrozenTrial | None:
    """The best COMPLETE trial; among equals the earliest, as the search's checkpoint keeps it
    (it is replaced only by a strictly better trial)."""
    pick = max if maximize else min
    return pick(complete_trials(trials), key=value_of, default=None)


def pareto_front(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """A two-objective study's COMPLETE trials that no other dominates (a higher or equal score
    at a lower or equal cost, one of them strictly), cheapest first; [] for one objective."""
    done = [t for t in complete_trials(trials) if len(t.values) == 2]
    ranks = front_ranks([Point(t.number, t.values[0], t.values[1]) for t in done])
    return sorted(
        (t for t, r in zip(done, ranks, strict=True) if r == 0), key=lambda t: (t.values[1], t.number)
    )


def best_trials(
    trials: Sequence[FrozenTrial],
    *,
    maximize: bool = True,
    fraction: float = TOP_FRACTION,
    minimum: int = TOP_MIN,
) -> list[FrozenTrial]:
    """The top `fraction` of COMPLETE trials (at least `minimum` of them), best first."""
    complete = sorted(complete_trials(trials), key=value_of, reverse=maximize)
    return complete[: max(minimum, math.ceil(fraction * len(complete)))]


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
    if base is None or best_value is None or not base.values:
        return None
    return gain_text(best_value, value_of(base)) + f" (baseline: trial {base.number})"
