"""Every study in a storage, side by side, as one plain-text table.

    study   trials  complete  pruned  failed  running  best    vs baseline        trial time  ...
    digits      40        31       8       1        0  0.9721  +4.2 pts (0.9304)       3m12s  ...

"vs baseline" is the best value's gain over the study file's baseline trial, in points. A
two-objective study's "best" is its best validation score, which lies on its Pareto front.

"trial time" adds up the trials' own durations (with several workers it exceeds the wall time);
"wall time" runs from the first trial's start to the last one's end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from search.pages.sections import short_params
from search.storage.connect import check_storage, open_readonly
from search.tuning.trials import baseline_trial, best_complete, state_counts, value_of

PARAMS_WIDTH = 70  # characters of the best params shown; the report page has them all


@dataclass(frozen=True)
class StudyRow:
    name: str
    states: dict[str, int]  # TrialState name -> count
    best_value: float | None  # None: no complete trial; with two objectives, the best score
    best_number: int | None
    best_params: dict[str, Any] = field(default_factory=dict)
    trial_seconds: float = 0.0  # sum of the durations of trials that have ended
    wall_seconds: float | None = None  # first start .. last end; None if no trial has ended
    baseline_value: float | None = None  # the study file's baseline trial, if it has one

    @property
    def n_trials(self) -> int:
        return sum(self.states.values())


def study_row(study: optuna.Study) -> StudyRow:
    trials = study.get_trials(deepcopy=False)
    states = state_counts(trials)
    ended = [
        (t.datetime_start, t.datetime_complete) for t in trials if t.datetime_start and t.datetime_complete
    ]
    # With two objectives the first is the score, maximized (search.tuning.costs).
    maximize = len(study.directions) > 1 or study.direction == optuna.study.StudyDirection.MAXIMIZE
    best = best_complete(trials, maximize=maximize)
    wall = None
    if ended:
        first = min(t.datetime_start for t in trials if t.datetime_start)
        wall = (max(end for _, end in ended) - first).total_seconds()
    return StudyRow(
        name=study.study_name,
        states=states,
        best_value=value_of(best) if best else None,
        best_number=best.number if best else None,
        best_params=dict(best.params) if best else {},
        trial_seconds=sum((end - start).total_seconds() for start, end in ended),
        wall_seconds=wall,
        baseline_value=value_of(base) if (base := baseline_trial(trials)) else None,
    )


def compare_studies(storage_url: str) -> list[StudyRow]:
    """One row per study in the storage, sorted by name. The storage must exist."""
    storage = open_readonly(check_storage(storage_url))  # a comparison never changes a file
    names = sorted(optuna.get_all_study_names(storage))
    return [study_row(optuna.load_study(study_name=n, storage=storage)) for n in names]


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, s = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, m = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{m:02d}m"
    days, h = divmod(hours, 24)
    return f"{days}d{h:02d}h"


COLUMNS = ("study", "trials", "complete", "pruned", "failed", "running", "best", "vs baseline",
           "trial time", "wall time", "best params")  # fmt: skip
LEFT = {"study", "best params"}  # text columns; the numbers align on the right


def _gain(r: StudyRow) -> str:
    """Points over the baseline trial, e.g. `+8.1 pts (0.5310)`."""
    if r.best_value is None or r.baseline_value is None:
        return "-"
    return f"{100 * (r.best_value - r.baseline_value):+.1f} pts ({r.baseline_value:.4f})"


def format_table(rows: Sequence[StudyRow]) -> str:
    cells = [
        (
            r.name,
            str(r.n_trials),
            str(r.states.get("COMPLETE", 0)),
            str(r.states.get("PRUNED", 0)),
            str(r.states.get("FAIL", 0)),
            str(r.states.get("RUNNING", 0) + r.states.get("WAITING", 0)),
            "-" if r.best_value is None else f"{r.best_value:.4f}",
            _gain(r),
            format_duration(r.trial_seconds if r.wall_seconds is not None else None),
            format_duration(r.wall_seconds),
            short_params(r.best_params, limit=PARAMS_WIDTH) or "-",
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in [COLUMNS, *cells]) for i in range(len(COLUMNS))]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.ljust(w) if name in LEFT else v.rjust(w)
            for name, v, w in zip(COLUMNS, values, widths, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join(line(c) for c in [COLUMNS, *cells])
