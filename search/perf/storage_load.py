"""`python -m search.bench --storage-load`: many workers on one database, directly and through the proxy.

Each of `workers` processes opens the storage as a search worker does (a direct RDB URL: Optuna's
RDBStorage with heartbeats, inside `BatchedStorage`; grpc://: the proxy's beating client) and runs
its share of `trials` storage-only trials: four params sampled at random, 10 intermediate values
reported, a user attr, a value. There is no training, so the storage is the whole load. The clock
runs from the moment every worker has opened its study to the last one's end, a thread counts
the database's connections (`pg_stat_activity`) throughout, and PostgreSQL's own statistics
(`pg_stat_database`) say how many transactions the trials cost it. The proxied path
starts its own `python -m search.serve` in front of the same database. Each study made is deleted
afterwards.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState

from search.errors import UserError
from search.storage.connect import check_storage, open_worker_storage, redacted
from search.tuning.trials import state_counts

STEPS = 10  # intermediate values per trial
START_TIMEOUT_S = 120.0
SAMPLE_EVERY_S = 0.05  # how often the connection count is read
MEASURING = "search-storage-load"  # application_name of this process's own connections: not counted


def _objective(trial: optuna.Trial) -> float:
    from search.schema import ATTR_WORKER
    from search.storage.running import publish

    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.suggest_int("width", 8, 512)
    trial.suggest_categorical("activation", ["relu", "tanh", "gelu"])
    trial.suggest_float("dropout", 0.0, 0.5)
    publish(trial)  # as the search's objective does after sampling
    for step in range(1, STEPS + 1):
        trial.report(lr * step, step)
    trial.set_user_attr(ATTR_WORKER, f"{os.getpid()}")
    return lr


def _worker(url: str, study_name: str, n_trials: int, barrier, heartbeat_s: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_worker_storage(url, heartbeat_s=heartbeat_s)  # as the runner opens it
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler())
    barrier.wait(timeout=START_TIMEOUT_S)
    study.optimize(_objective, n_trials=n_trials)


class _ConnectionCounter(threading.Thread):
    """The highest number of connections to the database seen while it runs, the measuring
    process's own (the study's creation and check, this count) left out."""

    def __init__(self, url: str):
        super().__init__(name="pg-connections", daemon=True)
        self.engine = sqlalchemy.create_engine(
            url, poolclass=sqlalchemy.pool.NullPool, connect_args={"application_name": MEASURING}
        )
        self.peak, self._done = 0, threading.Event()

    def run(self) -> None:
        query = sqlalchemy.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name <> :measuring"
        )
        with self.engine.connect() as conn:
            while not self._done.is_set():
                self.peak = max(self.peak, int(conn.execute(query, {"measuring": MEASURING}).scalar_one()))
                conn.rollback()  # a fresh snapshot of pg_stat_activity on the next read
                self._done.wait(SAMPLE_EVERY_S)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak

    def transactions(self) -> int:
        """The transactions the database has run so far, all sessions together (a busy session
        reports its share within a second, a closed one at once). Its rows-read counters are not
        used: autovacuum, cleaning up after a deleted study, adds thousands to them at random."""
        query = sqlalchemy.text(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        )
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())


def run_load(
    db_url: str, *, proxied: bool, workers: int = 16, trials: int = 320, heartbeat_s: int = 30
) -> dict[str, Any]:
    """One load: trials per second, peak connections, and what the study holds afterwards."""
    db_url = check_storage(db_url)
    if sqlalchemy.engine.make_url(db_url).get_backend_name() != "postgresql":
        raise UserError(
            f"--storage {redacted(db_url)}: the load counts PostgreSQL connections: pass a postgresql:// URL"
        )
    name = f"storage-load-{uuid.uuid4().hex[:10]}"
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a line per trial would be the load's output
    own = optuna.storages.RDBStorage(db_url, engine_kwargs={"connect_args": {"application_name": MEASURING}})
    optuna.create_study(study_name=name, storage=own, direction="maximize")
    try:
        figures = _measure(
            db_url, name, proxied=proxied, workers=workers, trials=trials, heartbeat_s=heartbeat_s
        )
        held = _what_the_study_holds(own, name)
    finally:
        optuna.delete_study(study_name=name, storage=own)
        own.engine.dispose()
    return {
        "path": "proxy" if proxied else "direct", "storage": redacted(db_url), "workers": workers,
        "trials": trials, **figures, **held,
    }  # fmt: skip


def _measure(db_url: str, name: str, *, proxied: bool, workers: int, trials: int, heartbeat_s: int) -> dict:
    counter = _ConnectionCounter(db_url)
    counter.start()
    server, procs = start_serve(db_url) if proxied else None, []
    try:
        url = check_storage(server[1]) if server else db_url
        shares = [trials // workers + (i < trials % workers) for i in range(workers)]
        # Forked from a server that has imported this module once: 16 spawned interpreters each
        # importing Optuna cost this 2-core machine about 10 s before the clock starts.
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        barrier = ctx.Barrier(workers + 1)
        procs = [ctx.Process(target=_worker, args=(url, name, k, barrier, heartbeat_s)) for k in shares]
        for p in procs:
            p.start()
        barrier.wait(timeout=START_TIMEOUT_S)
        started, transactions = time.perf_counter(), counter.transactions()
        for p in procs:
            p.join()
        seconds = time.perf_counter() - started
    finally:
        for p in procs:
            if p.is_alive():  # the load failed on its way: leave no worker behind
                p.kill()
                p.join()
        peak = counter.stop()
        if server:
            server[0].send_signal(signal.SIGTERM)
            server[0].wait(timeout=30)
    transactions = counter.transactions() - transactions
    counter.engine.dispose()
    return {
        "seconds": seconds, "trials_per_s": trials / seconds, "peak_connections": peak,
        "transactions_per_trial": transactions / trials, "worker_exit_codes": [p.exitcode for p in procs],
    }  # fmt: skip


def start_serve(db_url: str) -> tuple[subprocess.Popen, str]:
    """`python -m search.serve` in front of `db_url` on a free port: (its process, the URL it printed)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "search.serve", "--storage", db_url, "--port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None  # stdout=PIPE
    said = []
    for line in proc.stdout:  # a warning may come first
        if line.startswith("grpc://"):
            break
        said.append(line)
    else:
        proc.wait()
        raise RuntimeError(f"python -m search.serve did not start: {''.join(said)[-1000:]}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its pipe drained
    return proc, line.strip()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _what_the_study_holds(storage, name: str) -> dict[str, Any]:
    trials = optuna.load_study(study_name=name, storage=storage).trials
    states = {state: n for state, n in state_counts(trials).items() if n}
    return {
        "states": states,
        "numbers": sorted(t.number for t in trials),
        "complete_with_all_steps": sum(
            t.state == TrialState.COMPLETE and sorted(t.intermediate_values) == list(range(1, STEPS + 1))
            for t in trials
        ),
    }


def run_storage_load(
    db_url: str, *, workers: int = 16, trials: int = 320, rounds: int = 3, progress=lambda line: None
) -> dict[str, Any]:
    """Direct and proxied loads, alternated round by round; the medians of each."""
    runs: dict[str, list[dict[str, Any]]] = {"direct": [], "proxy": []}
    for r in range(rounds):
        for path in ("direct", "proxy") if r % 2 == 0 else ("proxy", "direct"):
            run = run_load(db_url, proxied=path == "proxy", workers=workers, trials=trials)
            runs[path].append(run)
            progress(
                f"round {r + 1}/{rounds} {path}: {run['trials_per_s']:.1f} trials/s, "
                f"peak {run['peak_connections']} connections, "
                f"{run['transactions_per_trial']:.1f} transactions a trial, {run['states']}"
            )
    out: dict[str, Any] = {"workers": workers, "trials": trials, "rounds": rounds, "runs": runs}
    for path, done in runs.items():
        out[path] = {
            f"{k}_median": statistics.median(r[k] for r in done)
            for k in ("trials_per_s", "peak_connections", "transactions_per_trial")
        }
    return out


def format_storage_load(r: dict[str, Any]) -> str:
    lines = [f"{r['workers']} workers, {r['trials']} storage-only trials, medians of {r['rounds']} rounds:"]
    for path in ("direct", "proxy"):
        m = r[path]
        lines.append(
            f"  {path:<7} {m['trials_per_s_median']:7.1f} trials/s   "
            f"peak {m['peak_connections_median']:.0f} PostgreSQL connections   "
            f"{m['transactions_per_trial_median']:.1f} transactions a trial"
        )
    return "\n".join(lines)
