"""The Optuna objective: sample a config, train it with `fit`, turn epochs into reports and prunes.

This is the only place where the trainer meets Optuna. The trainer returns metrics; the objective
reports each epoch's validation accuracy, asks the pruner, and records on the trial what a person
(or the dashboard) needs later: architecture, parameter count, seconds, epochs, device, reason.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import optuna

from search import checkpoint
from search.data import Dataset
from search.model import architecture, param_count
from search.space import sample_config, trial_seed
from search.strategy import should_prune
from search.study_file import StudySpec
from search.trainer import EpochMetrics, fit

# User attrs every finished trial carries (the README explains them).
ATTR_ARCH = "architecture"
ATTR_PARAMS = "n_params"
ATTR_SECONDS = "train_seconds"
ATTR_EPOCHS = "epochs_run"
ATTR_DEVICE = "device"
ATTR_SEED = "seed"
ATTR_REASON = "reason"  # why a trial was pruned or failed, in words
ATTR_WORKER = "worker"  # host:pid:index of the worker that ran it


@dataclass
class Objective:
    spec: StudySpec  # space, epochs
    data: Dataset  # already on the training device
    seed: int = 0  # base seed; each trial trains with trial_seed(seed, number)
    checkpoint_dir: Path | None = None  # keep the best trial's weights here; None = don't

    worker: str | None = None  # host:pid:index, recorded on every trial this objective runs

    def __post_init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="search-writes")

    def __call__(self, trial: optuna.Trial) -> float:
        # Every write this trial makes (params as they are sampled, per-epoch reports, attrs)
        # goes to the storage in order on one background thread, beside the training, and all
        # of them are stored before the trial ends, however it ends.
        direct, trial.storage = trial.storage, WriteBehind(trial.storage, self._pool)
        try:
            return self._run(trial)
        finally:
            trial.storage.wait()
            trial.storage = direct

    def _run(self, trial: optuna.Trial) -> float:
        if self.worker is not None:
            trial.set_user_attr(ATTR_WORKER, self.worker)
        seed = trial_seed(self.seed, trial.number)
        config = sample_config(trial, self.spec.space, epochs=self.spec.epochs, seed=seed)
        reported: dict[int, float] = {}

        def on_epoch(m: EpochMetrics) -> bool:
            trial.report(m.val_acc, m.epoch)
            reported[m.epoch] = m.val_acc
            return should_prune(trial, reported)  # judges the values we hold, not the storage's

        shape = dict(in_features=self.data.in_features, n_classes=self.data.n_classes)
        trial.set_user_attr(ATTR_SEED, seed)
        trial.set_user_attr(ATTR_ARCH, architecture(config, **shape))
        trial.set_user_attr(ATTR_PARAMS, param_count(config, **shape))
        trial.set_user_attr(ATTR_DEVICE, str(self.data.device))
        result = fit(config, self.data, on_epoch=on_epoch)
        trial.set_user_attr(ATTR_SECONDS, round(result.train_seconds, 4))
        trial.set_user_attr(ATTR_EPOCHS, result.epochs_run)
        if result.diverged:
            trial.set_user_attr(ATTR_REASON, result.diverged)
            raise optuna.TrialPruned(result.diverged)
        if result.stopped:
            reason = f"pruned after epoch {result.epochs_run} at val_acc {result.val_acc:.4f}"
            trial.set_user_attr(ATTR_REASON, reason)
            raise optuna.TrialPruned(reason)
        if self.checkpoint_dir is not None:
            checkpoint.save_if_best(
                self.checkpoint_dir,
                value=result.val_acc,
                trial_number=trial.number,
                model=result.model,
                meta={"config": config.to_dict(), "study": trial.study.study_name},
            )
        return result.val_acc


class WriteBehind:
    """A trial's storage whose writes are queued on a background thread, in order.

    Optuna writes each sampled param, each report and each user attr in its own SQL transaction
    (1-3 ms on SQLite), and a trial makes about 35 of them. The trial keeps its own copy of all
    three (params, intermediate values, user attrs), so nothing it reads waits for them; they
    overlap the training instead of delaying it. Everything else passes straight through.
    """

    WRITES = frozenset({"set_trial_param", "set_trial_intermediate_value", "set_trial_user_attr"})

    def __init__(self, storage, pool: ThreadPoolExecutor):
        self._storage = storage
        self._pool = pool
        self._pending: list[Future] = []

    def __getattr__(self, name: str):
        attr = getattr(self._storage, name)
        if name not in self.WRITES:
            return attr

        def queued(*args, **kwargs) -> None:
            self._pending.append(self._pool.submit(attr, *args, **kwargs))

        return queued

    def wait(self) -> None:
        """Block until every queued write is stored; re-raise the first that failed."""
        pending, self._pending = self._pending, []
        errors = [e for e in (f.exception() for f in pending) if e is not None]
        if errors:
            raise errors[0]
