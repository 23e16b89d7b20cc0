"""`python -m search.bench --overhead`: what the batched storage and the trial snapshot buy.

The same search (`python -m search.run --study digits --trials N`, one worker, a fresh SQLite
file each time) runs with each of the four combinations of the two parts on or off, in separate
processes, alternated round by round so a busy neighbour slows every variant alike. Each run
reports its wall time and its search overhead (the share of worker time outside training passes,
as the run's own summary computes it). A part that does not cut either is not worth its code.

    both        BatchedStorage and TrialsAtStart, as a run uses them
    no-batch    Optuna's RDBStorage for every write and read
    no-snapshot Optuna's own TPESampler and MedianPruner reading the storage per question
    neither     both of the above
    public      every Optuna internal off (SEARCH_OPTUNA_INTERNALS=off): the path a newer Optuna
                than search was tested with takes (search.optuna_versions)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from typing import Any

VARIANTS = ("both", "no-batch", "no-snapshot", "neither", "public")

# Runs in a child process: switch the parts off, run the search, print its summary as JSON.
_CHILD = r"""
import json, sys, time
variant, trials, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
import functools, os
if variant == "public":
    os.environ["SEARCH_OPTUNA_INTERNALS"] = "off"
from search.tuning import runner, strategy
if variant in ("no-batch", "neither"):
    runner.open_worker_storage = functools.partial(runner.open_worker_storage, batched=False)
if variant in ("no-snapshot", "neither"):
    import optuna
    def plain_sampler(name, seed, *, snapshot=None, startup_trials=10, **_):
        strategy.use_compiled_log_ndtr()  # the same TPE arithmetic: only the reads differ
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=startup_trials)
    def plain_pruner(name, epochs, *, snapshot=None, min_epochs=0, **_):
        warmup = min_epochs or max(1, epochs // 5)
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup)
    runner.make_sampler, runner.make_pruner = plain_sampler, plain_pruner
import optuna, torch
optuna.logging.set_verbosity(optuna.logging.ERROR)
torch.set_num_threads(1)
from search.tuning.study_file import load_study
from pathlib import Path
opts = runner.RunOptions(spec=load_study("digits"), storage_url=f"sqlite:///{folder}/s.db",
                         study_name="digits", trials=trials, device="cpu", heartbeat_s=None,
                         results_dir=Path(folder))
summary = runner.run_search(opts)
from search.optuna_versions import internals_allowed
print(json.dumps({"wall_s": summary.wall_seconds, "overhead": summary.overhead,
                  "best": summary.best_value, "states": summary.states, "internals": internals_allowed()}))
"""


def run_overhead(*, trials: int = 100, rounds: int = 3, progress=lambda line: None) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            with tempfile.TemporaryDirectory(prefix="search-overhead-") as folder:
                proc = subprocess.run(
                    [sys.executable, "-c", _CHILD, variant, str(trials), folder],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
            if proc.returncode != 0:
                raise RuntimeError(f"{variant} run failed: {proc.stderr.strip().splitlines()[-1:]}")
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            runs[variant].append(run)
            progress(
                f"round {r + 1}/{rounds} {variant}: {run['wall_s']:.1f} s, overhead {run['overhead']:.1%}"
            )
    out: dict[str, Any] = {"study": "digits", "trials": trials, "rounds": rounds, "runs": runs}
    for v in VARIANTS:
        out[v] = {
            "wall_s_median": statistics.median(r["wall_s"] for r in runs[v]),
            "overhead_median": statistics.median(r["overhead"] for r in runs[v]),
        }
    return out


def format_overhead(r: dict[str, Any]) -> str:
    lines = [f"search overhead, digits, {r['trials']} trials, medians of {r['rounds']} alternated runs:"]
    base = r["both"]["wall_s_median"]
    for v in VARIANTS:
        m = r[v]
        lines.append(
            f"  {v:<12} wall {m['wall_s_median']:6.1f} s ({m['wall_s_median'] / base:4.2f}x)  "
            f"overhead {m['overhead_median']:.1%}"
        )
    return "\n".join(lines)
