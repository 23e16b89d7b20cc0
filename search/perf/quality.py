"""`python -m search.bench --quality`: does the search beat random sampling at the same wall time?

For each seed, the same study (space, baseline, epochs) is searched twice in this process on the
same data, each for `budget_s` seconds: (1) as a run searches it, TPE with the study's pruner, and
(2) random sampling with no pruning, every trial trained to the end. Which arm goes first
alternates by seed, so a busy neighbour slows both. Each arm's curve is its best validation
accuracy so far against seconds since its start; a trial counts only if it ended within the
budget, so the two arms are compared at exactly the same wall time.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from search.data.datasets import Dataset
from search.device import describe
from search.schema import ATTR_BASELINE
from search.tuning.objective import Objective
from search.tuning.runner import run_trials
from search.tuning.strategy import make_pruner, make_sampler
from search.tuning.study_file import StudySpec

ARMS = ("tpe", "random")
GRID_POINTS = 101  # where the mean curve is sampled, from 0 to the budget


def random_subset(data: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """`n` training rows drawn at random (seeded); validation stays whole. An image tree's rows come
    class by class, so its first n rows would hold only the first few classes."""
    if n is None or n >= len(data.x_train):
        return data
    keep = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed))[:n]
    keep = keep.sort().values.to(data.device)
    return dataclasses.replace(
        data, x_train=data.x_train.index_select(0, keep), y_train=data.y_train.index_select(0, keep)
    )


def shortened(spec: StudySpec, epochs: int) -> StudySpec:
    """The study at a shorter epoch budget, its pruner's first rung at the same share of it: a
    rung at epoch 4 of 12 judges a third of the way in, so at 6 epochs it judges at epoch 2.
    Kept at epoch 4 it would judge two thirds in and save little of a stopped trial's time."""
    first = spec.min_epochs
    if first and epochs != spec.epochs:
        first = max(1, min(epochs, round(first * epochs / spec.epochs)))
    return spec.with_overrides(epochs=epochs, min_epochs=first)


def search_curve(arm: str, spec: StudySpec, data: Dataset, *, seed: int, budget_s: float) -> dict[str, Any]:
    """One arm's search for `budget_s` seconds: every trial's end time, state and value."""
    if arm == "tpe":
        sampler = make_sampler(spec.sampler, seed, startup_trials=spec.startup_trials)
        pruner = make_pruner(spec.pruner, spec.epochs, min_epochs=spec.min_epochs)
    else:
        sampler, pruner = optuna.samplers.RandomSampler(seed=seed), optuna.pruners.NopPruner()
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    baseline = spec.baseline_params()
    if baseline is not None:  # both arms start from the study's baseline, as a run does
        study.enqueue_trial(baseline, user_attrs={ATTR_BASELINE: True})
    objective = Objective(spec=spec, data=data, seed=seed)
    started = time.perf_counter()
    ended: list[tuple[float, str, float | None]] = []

    def record(trial: optuna.trial.FrozenTrial) -> None:
        ended.append((time.perf_counter() - started, trial.state.name, trial.value))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental-feature notes, once per study
        run_trials(study, objective, timeout=budget_s, on_told=record)
    in_budget = [e for e in ended if e[0] <= budget_s]
    curve = best_so_far(ended, budget_s)
    return {
        "seed": seed,
        "trials": [{"end_s": t, "state": s, "value": v} for t, s, v in ended],
        "trials_in_budget": len(in_budget),
        "pruned_in_budget": sum(s == TrialState.PRUNED.name for _, s, _ in in_budget),
        "best_so_far": curve,  # (seconds, best value) at each improvement
        "final_best": curve[-1][1] if curve else None,
    }


def best_so_far(ended: list[tuple[float, str, float | None]], budget_s: float) -> list[tuple[float, float]]:
    """The step curve of the best value so far: (seconds, value) at each improvement, from the
    trials that completed within the budget, given as (seconds at their end, state, value)."""
    best, curve = -math.inf, []
    for t, state, value in ended:
        if t <= budget_s and state == TrialState.COMPLETE.name and value is not None and value > best:
            best = value
            curve.append((t, value))
    return curve


def best_at(curve: list[tuple[float, float]], t: float) -> float | None:
    """The best value reached by time t on a best-so-far step curve."""
    reached = [v for s, v in curve if s <= t]
    return reached[-1] if reached else None


def run_quality(
    spec: StudySpec,
    data: Dataset,
    *,
    budget_s: float,
    seeds: tuple[int, ...] = (0, 1, 2),
    progress=lambda line: None,
) -> dict[str, Any]:
    """Both arms over every seed, alternated; every figure in a JSON-ready dict."""
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for i, seed in enumerate(seeds):
        for arm in ARMS if i % 2 == 0 else ARMS[::-1]:
            progress(f"seed {seed}: {arm} for {budget_s:.0f} s")
            run = search_curve(arm, spec, data, seed=seed, budget_s=budget_s)
            runs[arm].append(run)
            progress(
                f"seed {seed}: {arm} best {run['final_best']}, {run['trials_in_budget']} trials "
                f"({run['pruned_in_budget']} pruned)"
            )
    grid = [budget_s * k / (GRID_POINTS - 1) for k in range(GRID_POINTS)]
    out: dict[str, Any] = {
        "study": spec.name,
        "dataset": spec.dataset,
        "device": describe(data.device),
        "n_train": len(data.x_train),
        "n_val": len(data.x_val),
        "epochs": spec.epochs,
        "pruner": spec.pruner,
        "min_epochs": spec.min_epochs,
        "budget_s": budget_s,
        "seeds": list(seeds),
        "timing": "each arm searches for budget_s seconds in this process; trials ending later "
        "do not count; arms alternate which runs first by seed",
        "grid_s": grid,
    }
    for arm in ARMS:
        finals = [r["final_best"] for r in runs[arm] if r["final_best"] is not None]
        per_seed = [[best_at(r["best_so_far"], t) for t in grid] for r in runs[arm]]
        mean_curve = [
            statistics.fmean(vals)
            if len(vals := [v for v in col if v is not None]) == len(per_seed)
            else None
            for col in zip(*per_seed, strict=True)
        ]
        out[arm] = {
            "runs": runs[arm],
            "final_best": [r["final_best"] for r in runs[arm]],
            "final_best_mean": statistics.fmean(finals) if len(finals) == len(runs[arm]) else None,
            "trials_mean": statistics.fmean(r["trials_in_budget"] for r in runs[arm]),
            "mean_best_so_far": mean_curve,  # on grid_s; None until every seed has a value
        }
    t, r = out["tpe"]["final_best_mean"], out["random"]["final_best_mean"]
    out["tpe_ahead"] = t is not None and r is not None and t > r
    return out


def plot_quality(result: dict[str, Any], path: Path) -> Path:
    """Best-so-far against wall time for both arms (mean thick, each seed thin), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    colors = {"tpe": "tab:green", "random": "tab:gray"}
    labels = {"tpe": f"TPE + {result['pruner']} pruning", "random": "random, no pruning"}
    for arm in ARMS:
        for run in result[arm]["runs"]:
            if run["best_so_far"]:
                xs, ys = zip(*run["best_so_far"], strict=True)
                ax.step(
                    [*xs, result["budget_s"]], [*ys, ys[-1]], where="post", color=colors[arm], alpha=0.3, lw=1
                )
        pts = [
            (t, v)
            for t, v in zip(result["grid_s"], result[arm]["mean_best_so_far"], strict=True)
            if v is not None
        ]
        if pts:
            xs, ys = zip(*pts, strict=True)
            mean = result[arm]["final_best_mean"]
            ax.plot(xs, ys, color=colors[arm], lw=2.5, label=f"{labels[arm]} (final mean {mean:.4f})")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title(
        f"{result['study']}: {result['n_train']:,} training images, {result['epochs']} epochs, "
        f"{len(result['seeds'])} seeds"
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def format_quality(r: dict[str, Any]) -> str:
    lines = [
        f"search quality: {r['study']}, {r['budget_s']:.0f} s per arm, seeds {r['seeds']}, {r['device']}"
    ]
    for arm in ARMS:
        a = r[arm]
        finals = ", ".join("-" if v is None else f"{v:.4f}" for v in a["final_best"])
        mean = "-" if a["final_best_mean"] is None else f"{a['final_best_mean']:.4f}"
        lines.append(f"  {arm:<7} final best mean {mean}  ({finals}); {a['trials_mean']:.1f} trials per run")
    lines.append(
        "  TPE + pruning is ahead of random" if r["tpe_ahead"] else "  TPE + pruning is NOT ahead of random"
    )
    return "\n".join(lines)
