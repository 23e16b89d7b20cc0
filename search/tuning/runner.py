"""Run a search: one or more worker processes pull trials from one shared Optuna study.

A run adds `trials` *finished* trials (complete or pruned) to the study. Workers claim a slot
before each trial and give it back if the trial fails, so failures, crashes and retries never
shrink the run. Each worker loads the dataset once and trains trial after trial in-process.

Nothing here prints: progress goes out as `TrialEvent`s, the end as a `RunSummary`.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import queue as queue_mod
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from search.data.datasets import Dataset, import_loaders, load_dataset, load_raw
from search.device import resolve_device, split_cpu_threads, worker_device
from search.errors import UserError
from search.schema import (
    ATTR_BASELINE,
    ATTR_LATENCY,
    ATTR_PARAMS,
    ATTR_REASON,
    ATTR_SECONDS,
    ATTR_START,
    RESULTS_DIR,
    RESUME_DIR,
    study_dir,
)
from search.storage import running
from search.storage.connect import open_storage, open_worker_storage
from search.training.fit import import_lazy_parts
from search.tuning import interrupts, pool
from search.tuning.binding import check_resumable, study_attrs
from search.tuning.costs import REJECTED
from search.tuning.objective import Objective
from search.tuning.recovery import fail_orphans, retry_dead_local_workers, retry_trials
from search.tuning.stacking import run_stack
from search.tuning.strategy import TrialsAtStart, make_pruner, make_sampler, snapshot_of
from search.tuning.study_file import StudySpec
from search.tuning.summary import RunSummary, WorkerReport, summarize

MAX_CONSECUTIVE_FAILURES = 5
# Configs in a row over a hard limit before a worker stops: rejecting costs milliseconds, so a
# limit below the space's smallest models would otherwise spin through thousands of them.
MAX_CONSECUTIVE_REJECTIONS = 200


@dataclass(frozen=True)
class RunOptions:
    spec: StudySpec  # the study file, with command-line overrides applied
    storage_url: str  # checked by search.storage.connect.check_storage
    study_name: str
    trials: int  # finished trials this run adds
    timeout: float | None = None  # seconds; no new trial starts after it
    data_dir: str | None = None
    device: str = "auto"
    seed: int = 0
    jobs: int = 1  # worker processes on this machine
    heartbeat_s: int | None = 30
    results_dir: Path = Path(RESULTS_DIR)
    save_best: bool = True  # keep the best trial's weights in results/<study>/
    resume_every: float | None = 30.0  # seconds between saves of a trial's state; None = no resuming
    task: str = "classification"  # as the data was read: recorded on the study, with the metric
    metric: str = "accuracy"


@dataclass(frozen=True)
class TrialEvent:
    worker: int
    number: int
    state: str  # COMPLETE, PRUNED or FAIL
    value: float | None  # the validation score (a two-objective trial's first value)
    reason: str | None


def open_study(opts: RunOptions, *, worker: int = 0, storage=None) -> optuna.Study:
    """The run's study, created if new. Without a given storage, a worker's own: its trial
    writes batched where this Optuna allows (search.storage.connect.open_worker_storage)."""
    if storage is None:
        storage = open_worker_storage(opts.storage_url, heartbeat_s=opts.heartbeat_s)
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    n_before = 0
    snapshot = TrialsAtStart()  # one read of the trials per trial, for sampler and pruner
    spec = opts.spec
    study = optuna.create_study(
        storage=storage,
        study_name=opts.study_name,
        # The score is maximized; a second objective, a cost, minimized (search.tuning.costs).
        directions=[StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE][: len(spec.objectives)],
        load_if_exists=True,
        sampler=optuna.samplers.RandomSampler(),  # replaced below, once we know the trial count
        pruner=make_pruner(
            spec.pruner, spec.epochs, snapshot=snapshot, min_epochs=spec.min_epochs, cost=spec.cost
        ),
    )
    running.bind(study, storage)  # the public path's way to the storage (search.storage.running)
    attrs = study_attrs(opts.spec, opts.data_dir, opts.seed, task=opts.task, metric=opts.metric)
    if opts.study_name in existing:
        n_before = len(study.get_trials(deepcopy=False))
        if len(study.directions) != len(spec.objectives):  # Optuna loads it as it was created
            raise UserError(
                f"study {opts.study_name!r} has {len(study.directions)} objective(s), not "
                f"{len(spec.objectives)} ({', '.join(spec.objectives)}); "
                "pass --study-name NEW to start another study"
            )
        check_resumable(study, attrs)
    if not study.user_attrs:
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        baseline = opts.spec.baseline_params()
        if baseline is not None and n_before == 0:  # a new study: the baseline is its trial 0
            study.enqueue_trial(baseline, user_attrs={ATTR_BASELINE: True})
        if n_before == 0:  # then the warm start's configs, in the file's order
            for params in opts.spec.start_params():
                study.enqueue_trial(params, user_attrs={ATTR_START: True})
    # A fresh seed per run and per worker: a resumed random search must not replay old params.
    seed = opts.seed * 7919 + n_before * 31 + worker
    study.sampler = make_sampler(
        opts.spec.sampler, seed, snapshot=snapshot, startup_trials=opts.spec.startup_trials
    )
    return study


class _Slots:
    """Finished-trial slots of one run, shared by its workers (a counter under a lock), and how
    many each worker holds right now, so a worker that dies mid-trial can hand them back."""

    def __init__(self, target: int, jobs: int = 1, ctx=None):
        ctx = ctx or mp.get_context("spawn")
        self.target = target
        self.claimed = ctx.Value("i", 0)
        self.holding = ctx.Array("i", jobs)

    def claim(self, worker: int, n: int = 1) -> int:
        """Claim up to n slots (a stack claims several); returns how many were granted."""
        with self.claimed.get_lock():
            granted = max(0, min(n, self.target - self.claimed.value))
            self.claimed.value += granted
            self.holding[worker] += granted
            return granted

    def done(self, worker: int, *, counted: bool) -> None:
        """One of the worker's trials ended: keep its slot if it finished, give it back if not."""
        with self.claimed.get_lock():
            if self.holding[worker] > 0:
                self.holding[worker] -= 1
                if not counted:
                    self.claimed.value -= 1

    def release(self, worker: int) -> None:
        """The worker stopped: the slots it still holds go back."""
        with self.claimed.get_lock():
            self.claimed.value -= self.holding[worker]
            self.holding[worker] = 0

    @property
    def left(self) -> int:
        return self.target - self.claimed.value


def _worker_tag(worker: int) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{worker}"


def run_trials(
    study: optuna.Study,
    objective: Objective,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    stack: int = 1,
    on_told: Callable[[optuna.trial.FrozenTrial], None] = lambda frozen: None,
) -> None:
    """`study.optimize`'s loop for these trials: stacks of `stack` until `n_trials` have been
    asked, or until `timeout` seconds have passed (running trials stop after that epoch)."""
    asked = 0
    if timeout is not None:
        objective = dataclasses.replace(objective, deadline=time.time() + timeout)
    while n_trials is None or asked < n_trials:
        if objective.deadline is not None and time.time() >= objective.deadline:
            break
        left = None if n_trials is None else n_trials - asked - 1
        granted = [1]

        def claim(n: int, left=left, granted=granted) -> int:
            more = n if left is None else max(0, min(n, left))
            granted[0] += more
            return more

        run_stack(study, objective, stack, claim=claim, on_told=on_told, interrupted=[])
        asked += granted[0]


def run_worker(
    opts: RunOptions,
    worker: int,
    slots: _Slots,
    emit: Callable[[TrialEvent], None],
    deadline: float | None,
) -> WorkerReport:
    report = WorkerReport(worker=worker)
    # The clock starts after the imports a worker makes on first use (3-4 s once per process):
    # the overhead share is about what each trial costs, not about Python starting up.
    import_loaders()
    import_lazy_parts()
    started = time.perf_counter()
    device = worker_device(resolve_device(opts.device), worker)
    study = None
    interrupted_trials: list[int] = []
    try:
        data = study_data(opts.spec, data_dir=opts.data_dir, device=device)
        study = open_study(opts, worker=worker)
        folder = study_dir(opts.results_dir, opts.study_name)
        snapshot = snapshot_of(study)
        objective = Objective(
            spec=opts.spec, data=data, seed=opts.seed, worker=_worker_tag(worker),
            checkpoint_dir=folder if opts.save_best else None,
            resume_dir=folder / RESUME_DIR if opts.resume_every is not None else None,
            resume_every=opts.resume_every or 0.0, deadline=deadline, pool_size=opts.spec.ensemble,
        )  # fmt: skip
        consecutive, last_reason = 0, None
        rejected: list[optuna.trial.FrozenTrial] = []  # the current run of rejected configs

        def after(frozen: optuna.trial.FrozenTrial) -> None:
            nonlocal consecutive, last_reason
            report.train_seconds += float(frozen.user_attrs.get(ATTR_SECONDS, 0.0))
            reason = frozen.user_attrs.get(ATTR_REASON)
            if str(reason or "").startswith(REJECTED):
                rejected.append(frozen)
            else:
                rejected.clear()
            failed = frozen.state == TrialState.FAIL
            slots.done(worker, counted=not failed)
            if failed:
                report.failed += 1
                consecutive, last_reason = consecutive + 1, reason or "unknown error"
            else:
                report.finished += 1
                consecutive = 0
            score = frozen.values[0] if frozen.values else None  # with two objectives, the score
            emit(TrialEvent(worker, frozen.number, frozen.state.name, score, reason))

        while deadline is None or time.time() < deadline:
            interrupts.check()
            if not slots.claim(worker):
                break
            if snapshot is not None:
                snapshot.prime(study)  # the one read of the trials this trial's sampling needs
            report.stacks += run_stack(
                study, objective, opts.spec.stack, claim=lambda n: slots.claim(worker, n),
                on_told=after, interrupted=interrupted_trials,
            )  # fmt: skip
            if consecutive >= MAX_CONSECUTIVE_FAILURES:
                report.error = f"{consecutive} trials failed in a row; the last: {last_reason}"
                break
            if len(rejected) >= MAX_CONSECUTIVE_REJECTIONS:
                report.error = _rejections_note(rejected, opts.spec)
                break
    except KeyboardInterrupt as e:
        report.interrupted = interrupts.caught(e)
    except UserError as e:
        report.error = str(e)
    finally:
        slots.release(worker)
        if report.interrupted and study is not None:
            fail_orphans(study, {_worker_tag(worker)})
            if opts.resume_every is not None:  # the next run carries on from their saved epoch
                retry_trials(study, set(interrupted_trials))
        report.wall_seconds = time.perf_counter() - started
    return report


def _rejections_note(rejected: list[optuna.trial.FrozenTrial], spec: StudySpec) -> str:
    """One line for a worker that met only configs over the limits: the smallest it saw."""
    sizes = [int(t.user_attrs.get(ATTR_PARAMS, 0)) for t in rejected]
    times = [float(t.user_attrs[ATTR_LATENCY]) for t in rejected if ATTR_LATENCY in t.user_attrs]
    smallest = f"the smallest had {min(sizes):,} parameters" + (
        f", the fastest {min(times):.3g} ms" if times else ""
    )
    limits = []
    if spec.max_params is not None:
        limits.append(f"max_params {spec.max_params:,}")
    if spec.max_latency_ms is not None:
        limits.append(f"max_latency_ms {spec.max_latency_ms:g}")
    return (
        f"{len(rejected)} configs in a row broke {' or '.join(limits)}, untrained "
        f"({smallest}): loosen the limit or search smaller models"
    )


def _worker_process(opts, worker, slots, events, reports, deadline) -> None:
    interrupts.install_worker_handlers()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    split_cpu_threads(opts.jobs)
    report = run_worker(opts, worker, slots, events.put, deadline)
    reports.put(report)


def study_data(spec: StudySpec, *, data_dir: str | None, device, progress: bool = False) -> Dataset:
    """The study's dataset and split, on `device` (memoized per process)."""
    return load_dataset(
        spec.dataset, table=spec.table, data_dir=data_dir, device=device, val_fraction=spec.val_fraction,
        split_seed=spec.split_seed, progress=progress,
    )  # fmt: skip


def preload_data(
    spec: StudySpec, *, data_dir: str | None, device, jobs: int, progress: bool = True
) -> tuple[str, str]:
    """Load the study's data before any storage is touched, so bad data changes no database;
    returns its (task, metric). One worker reuses this (memoized) dataset; with several, each
    worker loads its own and this process only decodes (and caches) the images once, on the
    host, then lets them go (a table is read whole: its task and metric come from its target)."""
    if jobs == 1 or spec.dataset == "table":
        data = study_data(spec, data_dir=data_dir, device=device if jobs == 1 else "cpu", progress=progress)
        return data.task, data.metric
    load_raw(spec.dataset, data_dir=data_dir, progress=progress)
    return "classification", "accuracy"


def run_search(opts: RunOptions, *, on_event: Callable[[TrialEvent], None] | None = None) -> RunSummary:
    """Create or resume the study, run `opts.trials` finished trials over `opts.jobs` workers."""
    emit = on_event or (lambda _e: None)
    started = time.perf_counter()
    deadline = time.time() + opts.timeout if opts.timeout else None
    storage = open_storage(opts.storage_url, heartbeat_s=opts.heartbeat_s)
    study = open_study(opts, storage=storage)  # create it once, before workers race to
    retry_dead_local_workers(study)
    if opts.jobs == 1:
        reports = [run_worker(opts, 0, _Slots(opts.trials), emit, deadline)]
    else:
        reports = _run_processes(opts, emit, deadline)
        retry_dead_local_workers(study)  # a killed worker's trial: FAIL and retried now, not next run
    summary = summarize(opts.study_name, opts.storage_url, storage, reports, time.perf_counter() - started)
    if opts.save_best:
        kept, outputs = pool.disk_bytes(pool.pool_dir(study_dir(opts.results_dir, opts.study_name)))
        summary.pool = (kept, outputs, opts.spec.ensemble)
    return summary


MAX_RESPAWNS = 3  # per worker slot: a worker that keeps dying points at a real problem
STOP_GRACE_S = 60.0  # for a stopped worker to record its interrupted trial before it is killed


def stop_workers(procs: dict[int, mp.process.BaseProcess], grace: float) -> list[int]:
    """SIGTERM the live workers, give them `grace` seconds in all to record their interrupted
    trials, then kill the rest: a child left alive would hold the command open at exit
    (multiprocessing joins its children). Returns the keys of the killed."""
    for p in procs.values():
        if p.is_alive():
            p.terminate()
    end = time.monotonic() + grace
    for p in procs.values():
        p.join(timeout=max(0.0, end - time.monotonic()))
    killed = [i for i, p in procs.items() if p.is_alive()]
    for i in killed:
        procs[i].kill()
        procs[i].join()
    return killed


def _run_processes(opts: RunOptions, emit, deadline) -> list[WorkerReport]:
    ctx = mp.get_context("spawn")  # CUDA cannot be forked; spawn also isolates torch threads
    slots = _Slots(opts.trials, opts.jobs, ctx)
    events, reports_q = ctx.Queue(), ctx.Queue()

    def start(i: int):
        p = ctx.Process(target=_worker_process, args=(opts, i, slots, events, reports_q, deadline))
        p.start()
        return p

    procs = {i: start(i) for i in range(opts.jobs)}
    respawns = dict.fromkeys(procs, 0)
    reports: dict[int, WorkerReport] = {}
    interrupted = None

    def drain(block: float = 0.0) -> None:
        try:
            emit(events.get(timeout=block) if block else events.get_nowait())
        except queue_mod.Empty:
            return
        while True:
            try:
                emit(events.get_nowait())
            except queue_mod.Empty:
                break

    def collect() -> None:
        while True:
            try:
                r = reports_q.get_nowait()
            except queue_mod.Empty:
                return
            reports[r.worker] = r

    try:
        while True:
            interrupts.check()
            drain(block=0.2)
            collect()
            for i, p in list(procs.items()):
                if p.is_alive() or i in reports:
                    continue
                collect()  # its report may have arrived just now
                if i in reports:
                    continue
                # Died without a report (killed, segfault, out of memory): free its slot and
                # replace it while work is left. The heartbeat fails and re-queues its trial.
                slots.release(i)
                if slots.left > 0 and respawns[i] < MAX_RESPAWNS:
                    respawns[i] += 1
                    procs[i] = start(i)
                else:
                    reports[i] = WorkerReport(worker=i, error=f"worker {i} died (exit code {p.exitcode})")
            if not any(p.is_alive() for p in procs.values()):
                break
    except KeyboardInterrupt as e:
        interrupted = interrupts.caught(e)
    finally:  # stopped, crashed or done: no worker outlives this call
        for i in stop_workers(procs, STOP_GRACE_S):
            reports.setdefault(i, WorkerReport(worker=i, error=f"worker {i} did not stop; killed"))
    drain()
    collect()
    for i, p in procs.items():
        if i not in reports:
            reports[i] = WorkerReport(worker=i, error=f"worker {i} died (exit code {p.exitcode})")
    if interrupted:
        for r in reports.values():
            r.interrupted = interrupted
    return [reports[i] for i in sorted(reports)]
