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

    def __post_init__(self) -> None:
        self._writes = _BackgroundWrites()

    def __call__(self, trial: optuna.Trial) -> float:
        seed = trial_seed(self.seed, trial.number)
        config = sample_config(trial, self.spec.space, epochs=self.spec.epochs, seed=seed)
        reported: dict[int, float] = {}

        def on_epoch(m: EpochMetrics) -> bool:
            # The storage write runs beside the next epoch; the pruner judges the values we hold.
            self._writes.submit(trial.report, m.val_acc, m.epoch)
            reported[m.epoch] = m.val_acc
            return should_prune(trial, reported)

        shape = dict(in_features=self.data.in_features, n_classes=self.data.n_classes)
        for key, value in (
            (ATTR_SEED, seed),
            (ATTR_ARCH, architecture(config, **shape)),
            (ATTR_PARAMS, param_count(config, **shape)),
            (ATTR_DEVICE, str(self.data.device)),
        ):
            self._writes.submit(trial.set_user_attr, key, value)
        try:
            result = fit(config, self.data, on_epoch=on_epoch)
        finally:
            self._writes.wait()  # every report is stored before the trial ends, however it ends
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


class _BackgroundWrites:
    """Storage writes done in order on one background thread, so that a trial's per-epoch
    report (an SQL transaction, ~2 ms) overlaps the next epoch instead of delaying it."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="search-writes")
        self._pending: list[Future] = []

    def submit(self, fn, *args) -> None:
        self._pending.append(self._pool.submit(fn, *args))

    def wait(self) -> None:
        """Block until every submitted write is done; re-raise the first that failed."""
        pending, self._pending = self._pending, []
        for f in pending:
            f.result()
