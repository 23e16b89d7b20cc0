"""What a trial is, around its training: sampled and recorded before, reported and ended after.

This is the only place where the trainer's results meet Optuna. `begin` samples the config
(search.tuning.space), finds a saved state to resume from, and records on the trial what a person
(or the dashboard) needs later: architecture, parameter count, seed, device, and where the study
asks for it the latency (search.tuning.costs). A config over the study's `max_params` or
`max_latency_ms` raises `Rejected` there, before anything trains: the trial ends PRUNED with the
reason. `report` records an epoch's score (with two objectives, in the user attr `epoch_scores`:
Optuna refuses `trial.report` there). `end` turns the fit's result into the trial's value (with
two objectives, the score and the cost), or into TrialPruned with its reason, and keeps the best
weights and what the export's ensemble needs (search.tuning.pool).
The training in between is search.tuning.stacking's: a lone trial is a stack of one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna

from search.data.datasets import Dataset
from search.schema import (
    ATTR_ARCH,
    ATTR_BASELINE,
    ATTR_DEVICE,
    ATTR_EPOCH_SCORES,
    ATTR_EPOCHS,
    ATTR_FIRST_ATTEMPT,
    ATTR_LATENCY,
    ATTR_PARAMS,
    ATTR_REASON,
    ATTR_RESUMED,
    ATTR_SECONDS,
    ATTR_SEED,
    ATTR_WORKER,
    state_path,
)  # fmt: skip
from search.storage.running import publish
from search.training.config import TrainConfig
from search.training.fit import FitResult
from search.training.model import architecture, param_count, shape_of
from search.training.state import TrainState
from search.tuning import best_weights, costs, pool
from search.tuning.recovery import StateKeeper
from search.tuning.space import sample_config, trial_seed
from search.tuning.study_file import StudySpec


@dataclass
class Begun:
    """A trial between sampling and training: what its training and its end need."""

    config: TrainConfig
    reported: dict[int, float]  # epoch -> validation accuracy, as reported to Optuna
    prunable: bool  # False for the baseline, which runs its whole budget
    keeper: StateKeeper | None  # where its training state is saved, if it is
    resume: TrainState | None  # the saved state it carries on from, if any
    out_of_time: bool = False  # stopped because the run's time ran out, not by the pruner
    cost: float | None = None  # a two-objective study's second value (search.tuning.costs)

    @property
    def start_epoch(self) -> int:
        return self.resume.epoch if self.resume is not None else 0


class Rejected(optuna.TrialPruned):
    """A config over one of the study's hard limits: its trial ends PRUNED, never trained."""


@dataclass
class Objective:
    spec: StudySpec  # space, epochs
    data: Dataset  # already on the training device
    seed: int = 0  # base seed; each trial trains with trial_seed(seed, number)
    checkpoint_dir: Path | None = None  # keep the best trial's weights here; None = don't
    worker: str | None = None  # host:pid:index, recorded on every trial this objective runs
    resume_dir: Path | None = None  # keep each trial's training state here; None = don't
    resume_every: float = 30.0  # seconds between writes of a trial's state (0: every epoch)
    deadline: float | None = None  # time.time() at which the run's --timeout stops running trials
    pool_size: int = 0  # completed trials whose weights are kept for the ensemble (search.tuning.pool)

    def begin(self, trial: optuna.Trial) -> Begun:
        """Everything before training: the seed, the config, a saved state to resume from, the
        attrs a person needs, and the params published to other workers."""
        if self.worker is not None:
            trial.set_user_attr(ATTR_WORKER, self.worker)
        # A retry (Optuna copies the failed attempt's user attrs) keeps its first attempt's seed.
        attrs = trial.user_attrs
        first = int(attrs.get(ATTR_FIRST_ATTEMPT, trial.number))
        seed = int(attrs[ATTR_SEED]) if ATTR_FIRST_ATTEMPT in attrs and ATTR_SEED in attrs else None
        seed = trial_seed(self.seed, trial.number) if seed is None else seed
        if attrs.get(ATTR_REASON) is not None:  # the failed attempt's reason is not this one's
            trial.set_user_attr(ATTR_REASON, None)
        trial.set_user_attr(ATTR_FIRST_ATTEMPT, first)
        config = sample_config(trial, self.spec.space, epochs=self.spec.epochs, seed=seed)
        shape = shape_of(config, self.data)
        n_params = param_count(config, **shape)
        trial.set_user_attr(ATTR_SEED, seed)
        trial.set_user_attr(ATTR_ARCH, architecture(config, **shape))
        trial.set_user_attr(ATTR_PARAMS, n_params)
        trial.set_user_attr(ATTR_DEVICE, str(self.data.device))
        spec, latency = self.spec, None
        limit = costs.over_limit(spec, n_params=n_params, latency=None)  # the free check first
        if limit is None and spec.needs_latency:
            latency = round(costs.latency_ms(config, self.data), 4)
            trial.set_user_attr(ATTR_LATENCY, latency)
            limit = costs.over_limit(spec, n_params=n_params, latency=latency)
        if limit is not None:
            raise Rejected(limit)
        cost = None if spec.cost is None else costs.cost_value(spec.cost, n_params=n_params, latency=latency)
        if spec.cost is not None and attrs.get(ATTR_EPOCH_SCORES):  # a retry re-reports what it resumes
            trial.set_user_attr(ATTR_EPOCH_SCORES, {})
        reported: dict[int, float] = {}
        keeper = None
        if self.resume_dir is not None:
            keeper = StateKeeper(state_path(self.resume_dir, first), self.resume_every)
        resume = keeper.load(config.to_dict()) if keeper is not None else None
        begun = Begun(config, reported, True, keeper, resume, cost=cost)
        if resume is not None:  # the epochs the first attempt trained count for this trial
            for m in resume.history:
                self.report(trial, begun, m["epoch"], m["val_score"])
            trial.set_user_attr(ATTR_RESUMED, resume.epoch)
        publish(trial)  # params out before training: other workers' samplers, a crash's retry
        # The baseline is what the search is measured against: it runs its whole budget.
        begun.prunable = not trial.user_attrs.get(ATTR_BASELINE, False)
        return begun

    def report(self, trial: optuna.Trial, begun: Begun, epoch: int, score: float) -> None:
        """Record an epoch's validation score: `trial.report`, or with two objectives (which
        Optuna's report refuses) the user attr `epoch_scores` ({"epoch": score}, every epoch so
        far), which the storage writes in its batches and search.tuning.pareto reads."""
        if self.spec.cost is None:
            trial.report(score, epoch)
            begun.reported[epoch] = score
            return
        begun.reported[epoch] = score
        trial.set_user_attr(ATTR_EPOCH_SCORES, {str(e): v for e, v in sorted(begun.reported.items())})

    def end(self, trial: optuna.Trial, begun: Begun, result: FitResult) -> float | list[float]:
        """The trial's value (with two objectives: [score, cost]); raises TrialPruned for a
        stopped or diverged fit, with its reason."""
        trial.set_user_attr(ATTR_SECONDS, round(result.train_seconds, 4))
        trial.set_user_attr(ATTR_EPOCHS, result.epochs_run)
        if result.diverged:
            trial.set_user_attr(ATTR_REASON, result.diverged)
            raise optuna.TrialPruned(result.diverged)
        if result.stopped:
            what = "stopped when the run's time ran out" if begun.out_of_time else "pruned"
            reason = f"{what} after epoch {result.epochs_run} at val_score {result.val_score:.4f}"
            trial.set_user_attr(ATTR_REASON, reason)
            raise optuna.TrialPruned(reason)
        if self.checkpoint_dir is not None:
            assert result.model is not None  # a finished fit holds its model
            best_weights.save_if_best(
                self.checkpoint_dir,
                value=result.val_score,
                trial_number=trial.number,
                model=result.model,
                meta={"config": begun.config.to_dict(), "study": trial.study.study_name},
            )
            pool.keep(
                pool.pool_dir(self.checkpoint_dir), trial_number=trial.number, value=result.val_score,
                config=begun.config, model=result.model, data=self.data, size=self.pool_size,
            )  # fmt: skip
        if begun.cost is not None:
            return [result.val_score, begun.cost]
        return result.val_score
