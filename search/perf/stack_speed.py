"""`python -m search.bench --stack`: what training K trials as one stacked model buys a search.

The same search (`python -m search.run --study S --trials N --stack K`, one worker, a fresh
SQLite file each time) runs at each stack size, in separate processes, alternated round by
round (the order reverses every round) so a busy neighbour slows every size alike. Each run
gives its wall time, its pace in finished trials per hour, and the best validation accuracy it
found: stacking must buy speed without costing the search its quality. Beside the wall time, two
parts of it: the span from the first trial's start to the last one's end (the command less its
start-up: imports, data loading, opening the study), and the training, the trials' own training
and scoring passes; the rest of the span is sampling, storage and reporting.
"""

from __future__ import annotations

import math
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from search.perf.images import Images, Progress
from search.perf.suite import run_study

STACKS = (1, 4, 16, 64)
RUN_TIMEOUT_S = 3600.0  # one search; a run that long has gone wrong


def run_stack_bench(
    *,
    study: str,
    trials: int,
    epochs: int,
    device: str,
    stacks: Sequence[int] = STACKS,
    rounds: int = 3,
    images: Images | None = None,
    progress: Progress = lambda line: None,
) -> dict[str, Any]:
    runs: dict[int, list[dict[str, Any]]] = {k: [] for k in stacks}
    for r in range(rounds):
        order = list(stacks) if r % 2 == 0 else list(stacks)[::-1]
        for k in order:
            with tempfile.TemporaryDirectory(prefix="search-stack-") as tmp:
                run = run_study(
                    Path(tmp), study=study, trials=trials, epochs=epochs, device=device, jobs=1,
                    stack=k, images=images, progress=lambda line: None,
                    timeout_s=RUN_TIMEOUT_S,
                )  # fmt: skip
            if run.get("error"):
                raise RuntimeError(f"the stack {k} run failed: {run['error']}")
            runs[k].append(run)
            progress(
                f"round {r + 1}/{rounds} stack {k}: {run['wall_s']:.1f} s, {run['finished']} trials, "
                f"best {run['best']:.4f}"
            )
    out: dict[str, Any] = {
        "study": study, "trials": trials, "epochs": epochs, "device": device, "rounds": rounds,
        "stacks": list(stacks), "runs": {str(k): v for k, v in runs.items()},
    }  # fmt: skip
    base = statistics.median(r["wall_s"] for r in runs[stacks[0]])
    for k in stacks:
        wall = statistics.median(r["wall_s"] for r in runs[k])
        out[str(k)] = {
            "wall_s_median": wall,
            "span_s_median": statistics.median(r.get("trials_span_s", math.nan) for r in runs[k]),
            "training_s_median": statistics.median(r.get("training_s", math.nan) for r in runs[k]),
            "trials_per_hour": trials / wall * 3600,
            "speedup": base / wall,
            "best_median": statistics.median(r["best"] for r in runs[k]),
            "failed": sum(trials - r["finished"] for r in runs[k]),
        }
    for key in ("span_s", "training_s"):
        first = out[str(stacks[0])][f"{key}_median"]
        for k in stacks:
            out[str(k)][f"{key}_speedup"] = first / out[str(k)][f"{key}_median"]
    return out


def format_stack_bench(r: dict[str, Any]) -> str:
    lines = [
        f"stacked search, {r['study']}, {r['trials']} trials x {r['epochs']} epochs on {r['device']}, "
        f"medians of {r['rounds']} alternated runs (wall: the whole command):",
        f"{'stack':>6} {'wall s':>8} {'trials/hour':>12} {'speedup':>8} {'best':>7}"
        f" {'trials span s':>14} {'training s':>16}",
    ]
    for k in r["stacks"]:
        m = r[str(k)]
        lines.append(
            f"{k:>6} {m['wall_s_median']:>8.1f} {m['trials_per_hour']:>12,.0f} {m['speedup']:>7.2f}x "
            f"{m['best_median']:>7.4f} {m['span_s_median']:>7.1f} ({m['span_s_speedup']:.2f}x)"
            f" {m['training_s_median']:>8.1f} ({m['training_s_speedup']:.2f}x)"
            + (f"  {m['failed']} trial(s) not finished" if m["failed"] else "")
        )
    return "\n".join(lines)
