"""What a run did: each worker's report, the study's state at the end, and the summary's text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna

from search.schema import ATTR_ARCH, ATTR_REASON, STUDY_METRIC, STUDY_OBJECTIVES
from search.storage.connect import dashboard_command
from search.tuning.costs import REJECTED
from search.tuning.trials import baseline_gain, best_complete, pareto_front, state_counts, value_of

FRONT_LINES = 10  # Pareto-front trials the summary lists


@dataclass
class WorkerReport:
    worker: int
    wall_seconds: float = 0.0  # from before data loading (after imports) to after the last trial
    train_seconds: float = 0.0  # the trials' recorded train_seconds (training passes), summed
    finished: int = 0
    failed: int = 0
    error: str | None = None  # why the worker stopped early, if it did
    interrupted: str | None = None  # "SIGINT" or "SIGTERM"
    stacks: list[tuple[int, float]] = field(default_factory=list)  # (trials, padding share) per stack


@dataclass
class RunSummary:
    study_name: str
    storage_url: str
    wall_seconds: float
    workers: list[WorkerReport] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)  # the whole study, by state
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_number: int | None = None
    best_attrs: dict[str, Any] = field(default_factory=dict)
    baseline_gain: str | None = None  # "best ... vs the baseline ...: +x points", if it has one
    metric: str = "accuracy"  # what the trials' values score
    pool: tuple[int, int, int] | None = None  # the ensemble pool: weights bytes, outputs bytes, bound
    cost: str | None = None  # a two-objective study's second objective: params or latency
    # a two-objective study's Pareto front: (trial, score, cost), cheapest first
    front: list[tuple[int, float, float]] = field(default_factory=list)
    rejected: int = 0  # trials over a hard limit, never trained (search.tuning.costs)

    @property
    def finished(self) -> int:
        return sum(w.finished for w in self.workers)

    @property
    def overhead(self) -> float | None:
        """Share of worker time spent outside training: sampler, storage, evaluation, data loading."""
        wall = sum(w.wall_seconds for w in self.workers)
        train = sum(w.train_seconds for w in self.workers)
        return None if wall <= 0 or train <= 0 else max(0.0, 1.0 - train / wall)

    @property
    def stacking(self) -> tuple[float, float] | None:
        """(mean trials per stack, share of the stacks' matmul work spent on padding), if the
        run trained stacks of more than one; the share weights each stack by its size."""
        stacks = [s for w in self.workers for s in w.stacks]
        if all(n == 1 for n, _ in stacks):
            return None
        trials = sum(n for n, _ in stacks)
        return trials / len(stacks), sum(n * p for n, p in stacks) / trials

    @property
    def error(self) -> str | None:
        return next((w.error for w in self.workers if w.error), None)

    @property
    def interrupted(self) -> str | None:
        return next((w.interrupted for w in self.workers if w.interrupted), None)


def summarize(
    study_name: str, storage_url: str, storage, reports: list[WorkerReport], wall: float
) -> RunSummary:
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    summary = RunSummary(study_name, storage_url, wall, workers=reports)
    summary.states = {state: n for state, n in state_counts(trials).items() if n}
    summary.metric = study.user_attrs.get(STUDY_METRIC, "accuracy")
    best = best_complete(trials)
    if best is not None:
        summary.best_value, summary.best_params = value_of(best), dict(best.params)
        summary.best_number, summary.best_attrs = best.number, dict(best.user_attrs)
        summary.baseline_gain = baseline_gain(trials, value_of(best))
    objectives = study.user_attrs.get(STUDY_OBJECTIVES) or ["score"]
    if len(objectives) > 1:
        summary.cost = objectives[1]
        summary.front = [(t.number, t.values[0], t.values[1]) for t in pareto_front(trials)]
    summary.rejected = sum(str(t.user_attrs.get(ATTR_REASON) or "").startswith(REJECTED) for t in trials)
    return summary


def format_summary(s: RunSummary, *, jobs: int = 1) -> str:
    failed = sum(w.failed for w in s.workers)
    by_state = ", ".join(f"{k.lower()} {v}" for k, v in sorted(s.states.items()))
    lines = [
        f"study {s.study_name}: this run finished {s.finished} trial(s), {failed} failed, "
        f"in {s.wall_seconds:.1f} s with {jobs} worker(s)",
        f"the study now holds: {by_state or 'nothing'}",
    ]
    if s.interrupted:
        lines.append(f"interrupted by {s.interrupted}: the running trial(s) were marked FAIL")
    if s.rejected:
        lines.append(f"rejected over a hard limit, untrained (pruned): {s.rejected}")
    if s.best_value is not None:
        by = " (the best score on the Pareto front)" if s.cost is not None else ""
        lines.append(f"best: trial {s.best_number}, validation {s.metric} {s.best_value:.4f}{by}")
        for k, v in sorted(s.best_params.items()):
            lines.append(f"  {k} = {v:.4g}" if isinstance(v, float) else f"  {k} = {v}")
        arch = s.best_attrs.get(ATTR_ARCH)
        if arch:
            lines.append(f"  architecture: {arch}")
        if s.baseline_gain:
            lines.append(s.baseline_gain)
    if s.front:
        unit = "parameters" if s.cost == "params" else "ms"
        at = (lambda c: f"{int(c):,}") if s.cost == "params" else (lambda c: f"{c:.3g}")
        shown = [f"trial {n}: {score:.4f} at {at(cost)} {unit}" for n, score, cost in s.front[:FRONT_LINES]]
        more = f" (and {len(s.front) - FRONT_LINES} more)" if len(s.front) > FRONT_LINES else ""
        against = "parameters" if s.cost == "params" else "latency"
        lines.append(f"Pareto front, validation {s.metric} against {against}, cheapest first{more}:")
        lines += [f"  {x}" for x in shown]
    if s.stacking is not None:
        size, padding = s.stacking
        lines.append(
            f"stacks: {size:.1f} trials each on average, {padding:.1%} of their matmul work on padding"
        )
    if s.pool is not None:
        kept, outputs, bound = s.pool
        lines.append(
            f"ensemble pool: {kept / 1e6:.1f} MB of half-precision weights (at most {bound} trials'), "
            f"{outputs / 1e6:.1f} MB of validation outputs"
        )
    if s.overhead is not None:
        lines.append(
            f"search overhead: {s.overhead:.1%} of worker time outside training "
            "(sampler, storage, evaluation, data loading)"
        )
    lines.append(f"dashboard: {dashboard_command(s.storage_url)}")
    return "\n".join(lines)
