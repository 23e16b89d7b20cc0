"""`python -m search.bench --suite`: the one GPU check, in one call of at most five minutes.

The bench (search.bench) at batch 128 and 512, then short searches through `python -m search.run`
with 1 and 4 worker processes (--suite-jobs) and one worker at stack 32 (--suite-stacks), timed in
trials per hour; one table at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from search.device import describe, resolve_device
from search.perf.images import Images, Progress
from search.perf.notebook import SUITE_BATCH_SIZES, SUITE_BUDGET_S, BenchOptions, run_bench
from search.schema import ATTR_SECONDS


def run_suite(
    opts: BenchOptions,
    images: Images,
    progress: Progress,
    *,
    study: str,
    trials: int,
    study_epochs: int,
    jobs: Sequence[int],
    stacks: Sequence[int] = (1, 32),
    budget_s: float = SUITE_BUDGET_S,
) -> dict[str, Any]:
    """The bench at each of SUITE_BATCH_SIZES, then one timed search per entry of `jobs`, and one
    with 1 worker per stack size of `stacks` beyond 1 (stack 1 is the first run); searches stop at
    the budget."""
    device = resolve_device(opts.device)
    started = time.perf_counter()
    deadline = started + budget_s
    benches = [
        run_bench(dataclasses.replace(opts, batch_size=bs), images, progress) for bs in SUITE_BATCH_SIZES
    ]
    runs: list[tuple[int, int]] = [(j, 1) for j in jobs]
    runs += [(1, k) for k in stacks if k > 1]  # what stacking buys one worker
    studies = []
    with tempfile.TemporaryDirectory(prefix="search-suite-") as tmp:
        for j, stack in runs:
            left = deadline - time.perf_counter()
            if left < 5:
                studies.append(
                    {"jobs": j, "stack": stack, "finished": 0, "wall_s": 0.0,
                     "trials_per_hour_wall": None, "error": "skipped: suite budget spent"}
                )  # fmt: skip
                continue
            studies.append(
                run_study(
                    Path(tmp),
                    study=study,
                    trials=max(trials, stack),  # a stack of K needs K trials to fill
                    epochs=study_epochs,
                    device=str(device),
                    jobs=j,
                    stack=stack,
                    images=images,
                    progress=progress,
                    timeout_s=left,
                )
            )
    return {
        "suite": True,
        "device": describe(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "bench": benches,
        "study": study,
        "study_trials": trials,
        "study_epochs": study_epochs,
        "studies": studies,
        "wall_s": time.perf_counter() - started,
    }


def run_study(
    tmp: Path,
    *,
    study: str,
    trials: int,
    epochs: int,
    device: str,
    jobs: int,
    images: Images | None,
    progress: Progress,
    timeout_s: float,
    stack: int = 1,
) -> dict[str, Any]:
    """One `python -m search.run` in a subprocess, and its pace in finished trials per hour.

    Past `timeout_s` its process group (it and its workers) gets SIGTERM, which fails the running
    trials cleanly; the finished ones still count.
    """
    import optuna

    name = f"suite-{study}-jobs{jobs}-stack{stack}"
    storage = f"sqlite:///{tmp / 'suite.db'}"
    cmd = [
        sys.executable, "-m", "search.run", "--study", study, "--trials", str(trials),
        "--epochs", str(epochs), "--device", device, "--storage", storage, "--jobs", str(jobs),
        "--study-name", name, "--results-dir", str(tmp / "results"), "--no-progress",
        "--stack", str(stack),
    ]  # fmt: skip
    env = dict(os.environ)
    if images is not None:
        if study != "digits":
            cmd += ["--data-dir", str(images.root)]
        if images.cache_dir is not None:
            env["SEARCH_CACHE_DIR"] = str(images.cache_dir)
    progress(f"study {study}: {trials} trials x {epochs} epochs, {jobs} worker(s), stack {stack}")
    started = time.perf_counter()
    rc, err = _run_group(cmd, cwd=tmp, env=env, timeout_s=timeout_s)
    wall = time.perf_counter() - started
    out: dict[str, Any] = {
        "jobs": jobs,
        "stack": stack,
        "command": " ".join(cmd),
        "returncode": rc,
        "wall_s": wall,
        "finished": 0,
    }
    if rc != 0:
        last = (err or "").strip().splitlines()[-1:]
        out["error"] = (last[0] if last else f"exit code {rc}")[:300]
    with contextlib.suppress(Exception):  # nothing stored if the run failed early
        done = [
            t
            for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
            if t.state.name in ("COMPLETE", "PRUNED") and t.datetime_start and t.datetime_complete
        ]
        out["finished"] = len(done)
        out["pruned"] = sum(t.state.name == "PRUNED" for t in done)
        values = [t.value for t in done if t.state.name == "COMPLETE" and t.value is not None]
        out["best"] = max(values) if values else None
        if done:
            first = min(t.datetime_start for t in done if t.datetime_start)  # all have both: narrows
            span = (max(t.datetime_complete for t in done if t.datetime_complete) - first).total_seconds()
            out["trials_span_s"] = span
            out["trials_per_hour"] = len(done) / span * 3600 if span > 0 else None
            seconds = [float(t.user_attrs.get(ATTR_SECONDS, 0.0)) for t in done]
            out["mean_train_seconds"] = statistics.mean(seconds)
            out["training_s"] = sum(seconds)  # the trials' own training (a stack's shared among them)
    out["trials_per_hour_wall"] = out["finished"] / wall * 3600 if wall > 0 else None
    return out


def _run_group(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout_s: float):
    """(exit code or None, stderr) of `cmd` run in its own process group, stopped at the timeout."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        _, err = proc.communicate(timeout=timeout_s)
        return proc.returncode, err
    except subprocess.TimeoutExpired:
        for sig, wait in ((signal.SIGTERM, 20), (_SIGKILL, 5)):
            _signal_group(proc, sig)
            try:
                proc.communicate(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        return None, f"stopped after {timeout_s:.0f} s (suite budget)"
    except BaseException:  # Ctrl-C: take the search and its workers down with us
        _signal_group(proc, _SIGKILL)
        proc.wait()
        raise


_SIGKILL = getattr(signal, "SIGKILL", signal.SIGTERM)  # Windows has no SIGKILL; its SIGTERM kills


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send `sig` to the process group `proc` leads (POSIX), or to `proc` alone (Windows)."""
    with contextlib.suppress(ProcessLookupError):
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)


def format_suite(r: dict[str, Any]) -> str:
    lines = [f"suite on {r['device']}, torch {r['torch']}, {r['wall_s']:.0f} s in all"]
    b0 = r["bench"][0]
    notes = []
    if b0["synthetic"]:
        notes.append("SYNTHETIC random images")
    if b0["limit"] is not None:
        notes.append(f"--limit {b0['limit']}")
    lines.append(
        f"bench: {b0['model']}, {b0['n_train']:,} training images"
        + (f" ({', '.join(notes)})" if notes else "")
        + f", median of {b0['epochs_measured']} epochs, training passes only"
    )
    lines.append(
        f"{'batch':>5} {'notebook s/ep':>14} {'search s/ep':>12} {'speedup':>8} {'search samples/s':>17}"
    )
    for b in r["bench"]:
        lines.append(
            f"{b['batch_size']:>5} {b['baseline_epoch_s']:>14.3f} {b['search_epoch_s']:>12.3f} "
            f"{b['speedup']:>7.2f}x {b['search_samples_per_s']:>17,.0f}"
        )
    lines.append(
        f"study {r['study']}: {r['study_trials']} trials x {r['study_epochs']} epochs per run "
        "(trials/hour: first trial start to last trial end; wall: whole command)"
    )
    lines.append(
        f"{'jobs':>4} {'stack':>5} {'finished':>8} {'pruned':>6} {'wall s':>7} "
        f"{'trials/hour':>12} {'(wall)':>8}  note"
    )
    for s in r["studies"]:
        tph = s.get("trials_per_hour")
        lines.append(
            f"{s['jobs']:>4} {s.get('stack', 1):>5} {s['finished']:>8} "
            f"{s.get('pruned', 0):>6} {s['wall_s']:>7.1f} "
            f"{(f'{tph:,.0f}' if tph else '-'):>12} {s['trials_per_hour_wall'] or 0:>8,.0f}  "
            f"{s.get('error', '')}"
        )
    return "\n".join(lines)
