"""Edges of the search space: does a study's best trials crowd a bound of a range?

When the best values of a numeric knob sit at one end of its range, the optimum may lie outside
it; the report warns ("best lr values are at the upper bound 0.1: widen the range").
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial

from search.errors import UserError
from search.schema import STUDY_SPACE
from search.tuning.space import FLOAT_KNOBS, INT_KNOBS, Param, parse_space

EDGE_MARGIN = 0.1  # within 10% of a range's span (log span for log ranges) is "at the bound"
EDGE_SHARE = 0.5  # ...and at least half of the best values sitting there is worth a warning
EDGE_MIN_VALUES = 3  # fewer best values than this say nothing about a bound
_WIDTH = re.compile(r"width_\d+")  # per-layer widths, all drawn from the `width` range


@dataclass(frozen=True)
class EdgeWarning:
    param: str  # the knob, e.g. "lr" or "width" (for width_0, width_1, ...)
    bound: str  # "lower" or "upper"
    value: float  # the bound itself
    hits: int  # best values within the margin of that bound
    total: int  # best values of this knob

    def message(self) -> str:
        return (
            f"best {self.param} values are at the {self.bound} bound {self.value:g} "
            f"({self.hits} of {self.total}): widen the range"
        )


def knob_of(param: str, space: Mapping[str, Param]) -> str:
    return "width" if _WIDTH.fullmatch(param) and "width" in space else param


def _position(v: float, p: Param) -> float:
    """Where `v` sits in p's range: 0 at low, 1 at high; log ranges measure in log space."""
    if p.log:
        return (math.log(v) - math.log(p.low)) / (math.log(p.high) - math.log(p.low))
    return (v - p.low) / (p.high - p.low)


def edge_warnings(
    best_params: Sequence[Mapping[str, Any]],
    space: Mapping[str, Param],
    *,
    margin: float = EDGE_MARGIN,
    share: float = EDGE_SHARE,
    min_values: int = EDGE_MIN_VALUES,
) -> list[EdgeWarning]:
    """Numeric knobs whose best values crowd a bound of their range.

    A bound is crowded when at least `share` of the best values lie within `margin` of it, and
    at least twice what uniform sampling would put there (for a small int range such as
    n_layers 1..3, a third of all draws hit each end by chance). A bound that is the knob's hard
    limit (dropout 0, say) is not reported: it cannot be widened.
    """
    values: dict[str, list[float]] = {}
    for params in best_params:
        for name, v in params.items():
            knob = knob_of(name, space)
            p = space.get(knob)
            if p is None or p.kind not in ("int", "float") or not p.high > p.low:
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                values.setdefault(knob, []).append(float(v))
    found = []
    for knob, vs in values.items():
        if len(vs) < min_values:
            continue
        p = space[knob]
        chance = margin
        if p.kind == "int":
            chance = max(margin, 1.0 / ((p.high - p.low) // (p.step or 1) + 1))
        needed = max(share, 2 * chance) * len(vs)
        pos = [_position(v, p) for v in vs]
        limits = INT_KNOBS.get(knob) or FLOAT_KNOBS.get(knob) or (None, None)
        for bound, value, hits, limit in (
            ("lower", p.low, sum(u <= margin + 1e-9 for u in pos), limits[0]),
            ("upper", p.high, sum(u >= 1 - margin - 1e-9 for u in pos), limits[1]),
        ):
            if hits >= needed and value != limit:
                found.append(EdgeWarning(knob, bound, value, hits, len(vs)))
    return found


def study_space(study: optuna.Study, trials: Sequence[FrozenTrial]) -> dict[str, Param]:
    """The ranges searched: the study file's [space] stored by search.run, else Optuna's own."""
    raw = study.user_attrs.get(STUDY_SPACE)
    if isinstance(raw, dict) and raw:
        try:
            return parse_space(raw, where=f"study {study.study_name}")
        except UserError:
            pass  # a space this version cannot read: fall back to the stored distributions
    space: dict[str, Param] = {}
    for t in trials:
        for name, d in t.distributions.items():
            knob = "width" if _WIDTH.fullmatch(name) else name  # width_i share one range
            if isinstance(d, (IntDistribution, FloatDistribution)) and knob not in space:
                kind = "int" if isinstance(d, IntDistribution) else "float"
                step = None if d.step in (None, 1) and kind == "int" else d.step
                space[knob] = Param(knob, kind, low=d.low, high=d.high, log=d.log, step=step)
    return space
