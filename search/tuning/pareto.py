"""Pruning a two-objective study: MO-ASHA (Schmucker et al. 2021, arXiv 2106.12639).

Optuna's pruners judge one value, and `Trial.report` and `should_prune` refuse a study with two
objectives. A two-objective study here maximizes the validation score and minimizes a cost (the
parameter count or the latency, search.tuning.costs) that is known before the first epoch and
never changes. `ParetoPruner` is asynchronous successive halving with Pareto ranks in place of
values:

- Rungs are the epochs `min_resource * reduction_factor**k` below the budget (1, 3, 9 by
  default), as Optuna's `SuccessiveHalvingPruner` places them. A trial is judged only when it
  reports a rung's epoch.
- Its reference at a rung is every trial that reached that rung: its own score at the rung and
  cost, the RUNNING, COMPLETE and PRUNED trials of the study that reported that epoch (read from
  the storage at the rung), and its peers (a stack's members that reported the same epoch and
  those of earlier sub-stacks, search.tuning.stacking), each once. FAIL trials are left out:
  a failed trial's retry carries its reports.
- Those n points (score at the rung, cost) are sorted by non-dominated sorting (front 1: no
  point dominates them; front 2: only front 1's do; ...), within a front by crowding distance
  (NSGA-II's: the two ends of a front first, then the points whose neighbours on the front lie
  furthest apart, each objective scaled by its range on the front), then by score, then by
  trial number. The first n // reduction_factor + 1 go on, as in Syne Tune's MO-ASHA (a trial
  goes on where its place p, from 0, has p / n <= 1 / reduction_factor), and never fewer than
  the first front's two ends (its best score and its lowest cost): the trial is pruned if it is
  not among them. A NaN score is pruned.

A point (s1, c1) dominates (s2, c2) when s1 >= s2 and c1 <= c2, one of them strictly.
A two-objective trial keeps its per-epoch scores in the user attr `epoch_scores` (search.schema),
which the pruner reads for the trials it did not see report.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search.schema import ATTR_EPOCH_SCORES, ATTR_LATENCY, ATTR_PARAMS

COST_ATTRS = {"params": ATTR_PARAMS, "latency": ATTR_LATENCY}  # where a trial records its cost
REFERENCE_STATES = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
READ_TTL_S = 1.0  # a stack's members judged at one rung share one read of the study's trials


@dataclass(frozen=True)
class Point:
    """A trial at a rung: its score there (maximized) and its cost (minimized)."""

    number: int
    score: float
    cost: float


def dominates(a: Point, b: Point) -> bool:
    return a.score >= b.score and a.cost <= b.cost and (a.score > b.score or a.cost < b.cost)


def front_ranks(points: Sequence[Point]) -> list[int]:
    """Each point's front, 0 for the non-dominated ones (non-dominated sorting; NaN scores count
    as the worst score)."""
    s = np.array([-math.inf if math.isnan(p.score) else p.score for p in points], dtype=float)
    c = np.array([p.cost for p in points], dtype=float)
    beats = (s[:, None] >= s[None, :]) & (c[:, None] <= c[None, :])
    beats &= (s[:, None] > s[None, :]) | (c[:, None] < c[None, :])  # beats[i, j]: i dominates j
    dominated_by = beats.sum(axis=0)
    ranks = np.full(len(points), -1)
    rank = 0
    while (ranks < 0).any():
        front = (dominated_by == 0) & (ranks < 0)
        ranks[front] = rank
        dominated_by = dominated_by - beats[front].sum(axis=0)
        rank += 1
    return [int(r) for r in ranks]


def crowding(points: Sequence[Point]) -> list[float]:
    """NSGA-II's crowding distance of each point of one front: inf at either end of an
    objective, else the gap between its two neighbours on that objective over the objective's
    range on the front, summed over the two objectives."""
    n = len(points)
    distance = [0.0] * n
    if n <= 2:
        return [math.inf] * n
    for values in ([p.score for p in points], [p.cost for p in points]):
        order = sorted(range(n), key=lambda i: (values[i], points[i].number))
        lo, hi = values[order[0]], values[order[-1]]
        distance[order[0]] = distance[order[-1]] = math.inf
        if hi == lo:
            continue
        for k in range(1, n - 1):
            distance[order[k]] += (values[order[k + 1]] - values[order[k - 1]]) / (hi - lo)
    return distance


def ranked(points: Sequence[Point]) -> list[Point]:
    """The points best first: by front, then crowding distance (larger first), score (higher
    first), trial number (lower first)."""
    ranks = front_ranks(points)
    distance = [0.0] * len(points)
    for r in set(ranks):
        members = [i for i, x in enumerate(ranks) if x == r]
        for i, d in zip(members, crowding([points[i] for i in members]), strict=True):
            distance[i] = d
    score = [-math.inf if math.isnan(p.score) else p.score for p in points]
    order = sorted(range(len(points)), key=lambda i: (ranks[i], -distance[i], -score[i], points[i].number))
    return [points[i] for i in order]


def survivors(points: Sequence[Point], reduction_factor: int) -> set[int]:
    """The numbers of the trials that go on from a rung reached by `points`: the first
    n // reduction_factor + 1 of `ranked(points)`, and at least the first front's ends (the
    first two of `ranked` where that front holds two points or more)."""
    ends = min(2, front_ranks(points).count(0))
    keep = max(len(points) // reduction_factor + 1, ends)
    return {p.number for p in ranked(points)[:keep]}


def epoch_score(trial: FrozenTrial, epoch: int) -> float | None:
    """The validation score a trial reported at `epoch`, if it did."""
    scores = trial.user_attrs.get(ATTR_EPOCH_SCORES)
    if isinstance(scores, dict) and str(epoch) in scores:
        return float(scores[str(epoch)])
    return trial.intermediate_values.get(epoch)


def trial_cost(trial: FrozenTrial, cost: str) -> float | None:
    value = trial.user_attrs.get(COST_ATTRS[cost])
    return None if value is None else float(value)


class ParetoPruner(optuna.pruners.BasePruner):
    """MO-ASHA over (validation score, `cost`), as the module's docstring says."""

    def __init__(self, *, cost: str, max_resource: int, min_resource: int = 1, reduction_factor: int = 3):
        if cost not in COST_ATTRS:
            raise ValueError(f"cost {cost!r}: expected one of {', '.join(COST_ATTRS)}")
        self.cost = cost
        self.reduction_factor = reduction_factor
        self.rungs: tuple[int, ...] = ()
        rung = max(1, min_resource)
        while rung < max_resource:
            self.rungs += (rung,)
            rung *= reduction_factor
        self._read: tuple[str, int, float, list[FrozenTrial]] | None = None

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Optuna's entry point (its `should_prune` never calls it for two objectives): the
        trial's recorded scores and cost."""
        raw = trial.user_attrs.get(ATTR_EPOCH_SCORES) or {}
        cost = trial_cost(trial, self.cost)
        if cost is None:
            return False
        return self.decide(study, trial.number, {int(k): float(v) for k, v in raw.items()}, cost)

    def decide(
        self,
        study: optuna.Study,
        number: int,
        reported: Mapping[int, float],
        cost: float,
        peers: Mapping[int, tuple[Mapping[int, float], float]] | None = None,
    ) -> bool:
        """Whether trial `number`, having reported `reported` (epoch -> score) at cost `cost`,
        stops now. `peers`: trial number -> (reports, cost) of the trials training beside it."""
        if not reported:
            return False
        epoch = max(reported)
        if epoch not in self.rungs:
            return False
        score = reported[epoch]
        if math.isnan(score):
            return True
        points = {number: Point(number, score, cost)}
        for n, (theirs, c) in (peers or {}).items():
            if n != number and epoch in theirs:
                points[n] = Point(n, theirs[epoch], c)
        for t in self._trials(study, epoch):
            if t.number in points:
                continue
            at, price = epoch_score(t, epoch), trial_cost(t, self.cost)
            if at is not None and price is not None:
                points[t.number] = Point(t.number, at, price)
        return number not in survivors(list(points.values()), self.reduction_factor)

    def _trials(self, study: optuna.Study, epoch: int) -> list[FrozenTrial]:
        """The study's trials that may have reached a rung: one read per rung and moment, shared
        by a stack's members judged one after another."""
        now = time.monotonic()
        if self._read is not None:
            name, at_epoch, when, trials = self._read
            if (name, at_epoch) == (study.study_name, epoch) and now - when < READ_TTL_S:
                return trials
        trials = study.get_trials(deepcopy=False, states=REFERENCE_STATES)
        self._read = (study.study_name, epoch, now, trials)
        return trials
