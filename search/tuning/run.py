"""From what a user asked for to a running search: every check before any storage is touched.

`prepare_run` is what `python -m search.run` and `search.optimize` both call first: the study file
and its overrides, the device, the study name, the storage URL and the data are all checked (and
the data loaded) before a database is opened, so bad input never changes one. `bar_events` turns
the runner's trial events into a progress bar's updates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from search.data.tables import TableSpec
from search.device import resolve_device, split_cpu_threads
from search.errors import UserError
from search.schema import RESULTS_DIR, study_dir
from search.storage.connect import DEFAULT_HEARTBEAT_S, DEFAULT_STORAGE, check_storage
from search.tuning.runner import RunOptions, TrialEvent, preload_data
from search.tuning.study_file import load_study

DEFAULT_TRIALS = 100  # finished trials a run adds when neither --trials nor --timeout is given
NO_TRIAL_LIMIT = 2**31 - 1  # --timeout alone: the clock ends the run (a C int: the workers' counter)


def prepare_run(
    *,
    study: str | None = None,
    study_name: str | None = None,
    storage: str = DEFAULT_STORAGE,
    results_dir: str | Path = RESULTS_DIR,
    data_dir: str | None = None,
    trials: int | None = None,
    timeout: float | None = None,
    jobs: int = 1,
    device: str = "auto",
    seed: int = 0,
    dataset: str | None = None,
    epochs: int | None = None,
    sampler: str | None = None,
    pruner: str | None = None,
    stack: int | None = None,
    objectives: Sequence[str] | None = None,
    max_params: int | None = None,
    max_latency_ms: float | None = None,
    heartbeat: int | None = DEFAULT_HEARTBEAT_S,
    resume_every: float | None = 30.0,
    table: TableSpec | None = None,
    progress: bool = True,
) -> RunOptions:
    """The run's options, everything checked and the data loaded; raises UserError otherwise.
    `table` names a table for a `dataset = "table"` study: with no `study`, the shipped table study
    searches it, in a study named after the file and the target (diamonds-price). Without
    `trials`, a run adds DEFAULT_TRIALS finished trials, or with a `timeout` as many as fit in it.
    `progress`: a bar while a first load decodes the images. `objectives`, `max_params` and
    `max_latency_ms` override the study file's (search.tuning.costs)."""
    spec = load_study(study or ("table" if table is not None else "cifar10")).with_overrides(
        dataset=dataset, epochs=epochs, sampler=sampler, pruner=pruner, stack=stack, table=table,
        objectives=None if objectives is None else tuple(objectives), max_params=max_params,
        max_latency_ms=max_latency_ms,
    )  # fmt: skip
    if spec.dataset == "table" and spec.table is None:
        raise UserError(f"study {spec.name!r} reads a table: pass --data PATH and --target COLUMN")
    where = resolve_device(device)
    name = study_name or (f"{Path(table.train).stem}-{table.target}" if table and not study else spec.name)
    study_dir(results_dir, name)  # a name that cannot be a results folder fails now
    storage_url = check_storage(storage)
    if jobs == 1:
        split_cpu_threads(1)
    task, metric = preload_data(spec, data_dir=data_dir, device=where, jobs=jobs, progress=progress)
    if trials is None:
        trials = NO_TRIAL_LIMIT if timeout is not None else DEFAULT_TRIALS
    return RunOptions(
        task=task, metric=metric,
        spec=spec, storage_url=storage_url, study_name=name, trials=trials, timeout=timeout,
        data_dir=data_dir, device=str(where) if jobs == 1 else device, seed=seed, jobs=jobs,
        heartbeat_s=heartbeat, results_dir=Path(results_dir), resume_every=resume_every,
    )  # fmt: skip


def bar_total(opts: RunOptions) -> int | None:
    """The progress bar's length: the trials asked for, or none when only the clock limits them."""
    return None if opts.trials == NO_TRIAL_LIMIT else opts.trials


def bar_events(bar, *, on_failure: Callable[[str], None] | None = None) -> Callable[[TrialEvent], None]:
    """An `on_event` for `run_search` that moves `bar` one step per finished trial and shows the
    best value so far; a failed trial's reason goes to `on_failure`."""
    best: list[float] = []

    def on_event(e: TrialEvent) -> None:
        if e.state == "FAIL":
            if on_failure is not None:
                on_failure(f"trial {e.number} failed: {e.reason}")
            return
        if e.state == "COMPLETE" and e.value is not None and (not best or e.value > best[0]):
            best[:] = [e.value]
        if best:
            bar.set_postfix(best=f"{best[0]:.4f}", refresh=False)
        bar.update(1)

    return on_event
