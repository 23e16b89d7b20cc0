"""A finished study, opened for what comes after the search: one way in for export, retraining,
certify, audit, the report and `search.load_best`.

The steps are always the same: open the storage read-only (nothing after a search changes it),
choose the study, read what it is bound to (its data, split, budget and space: search.tuning.binding),
pick the best trial (with two objectives, the best score on the Pareto front; within hard limits
where they are given), rebuild the data, and replay a trial's params through the search's own sampling
code (`FixedTrial`), checked against what the trial recorded, so search, export and retraining
cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.data.datasets import Dataset
from search.errors import UserError
from search.schema import (
    ATTR_ARCH,
    ATTR_LATENCY,
    ATTR_PARAMS,
    ATTR_SEED,
    STUDY_DERIVED_FROM,
    STUDY_EPOCHS,
    STUDY_OBJECTIVES,
    STUDY_SEED,
    STUDY_SPACE,
)
from search.storage.connect import check_storage, choose_study, open_readonly
from search.training.config import TrainConfig
from search.training.model import architecture, param_count, shape_of
from search.tuning.binding import load_bound_dataset, study_binding
from search.tuning.space import parse_space, replay_config, trial_seed
from search.tuning.trials import complete_trials, counts_text, pareto_front, value_of


@dataclass
class Finished:
    name: str
    study: optuna.Study
    storage_url: str  # checked
    trials: list[FrozenTrial] = field(repr=False)

    @property
    def binding(self) -> dict[str, Any]:
        """What the study is bound to; a study not made by search.run fails here, in one line."""
        return study_binding(self.study)

    def completed(self) -> dict[int, float]:
        """Each COMPLETE trial's number and value."""
        return {t.number: value_of(t) for t in self.trials if t.state == TrialState.COMPLETE}

    @property
    def objectives(self) -> list[str]:
        """["score"], or ["score", "params" | "latency"] for a two-objective study."""
        stored = self.study.user_attrs.get(STUDY_OBJECTIVES)
        if stored:
            return list(stored)
        return ["score"] if len(self.study.directions) == 1 else ["score", "cost"]

    def front(self) -> list[FrozenTrial]:
        """A two-objective study's Pareto front of COMPLETE trials, cheapest first ([] for one)."""
        return pareto_front(self.trials) if len(self.study.directions) > 1 else []

    def best(self, *, max_params: int | None = None, max_latency_ms: float | None = None) -> FrozenTrial:
        """The COMPLETE trial with the highest score that keeps within the limits given (its
        recorded n_params, latency_ms); among equal scores the cheapest with two objectives (so
        the best score on the Pareto front), then the earliest, as the search's checkpoint keeps
        it (it is replaced only by a strictly better trial)."""
        done = complete_trials(self.trials)
        if not done:
            raise UserError(
                f"study {self.name!r} has no finished (COMPLETE) trial ({counts_text(self.trials)}); "
                f"run python -m search.run --study-name {self.name} first"
            )
        if max_latency_ms is not None and not any(ATTR_LATENCY in t.user_attrs for t in done):
            raise UserError(
                f"--max-latency-ms: study {self.name!r} measured no latency; search with max_latency_ms "
                'or objectives = ["score", "latency"] (search.run --max-latency-ms) to record it'
            )

        def within(t: FrozenTrial) -> bool:
            n, ms = t.user_attrs.get(ATTR_PARAMS), t.user_attrs.get(ATTR_LATENCY)
            return (max_params is None or (n is not None and n <= max_params)) and (
                max_latency_ms is None or (ms is not None and ms <= max_latency_ms)
            )

        feasible = [t for t in done if within(t)]
        if not feasible:
            limits = [f"max_params {max_params:,}" if max_params is not None else "",
                      f"max_latency_ms {max_latency_ms:g}" if max_latency_ms is not None else ""]  # fmt: skip
            raise UserError(
                f"no complete trial of study {self.name!r} keeps within "
                f"{' and '.join(x for x in limits if x)} ({len(done)} complete)"
            )
        two = len(self.study.directions) > 1
        return max(feasible, key=lambda t: (value_of(t), -t.values[1] if two else 0.0))

    def load_data(self, *, device, data_dir: str | None = None) -> tuple[Dataset, str | None]:
        """The data and split the trials were scored on, and the folder it came from."""
        return load_bound_dataset(self.binding, data_dir=data_dir, device=device)

    def replay(
        self, trial: FrozenTrial, data: Dataset, *, trained: dict[str, Any] | None = None
    ) -> TrainConfig:
        """A trial's config through the search's own sampling code, checked against what the trial
        recorded (architecture, parameter count) and `trained`, the config the search's
        checkpoint saved with it."""
        attrs = self.binding
        space = parse_space(attrs[STUDY_SPACE], where=f"study {self.name!r}")
        seed = trial.user_attrs.get(ATTR_SEED, trial_seed(int(attrs.get(STUDY_SEED, 0)), trial.number))
        config = replay_config(dict(trial.params), space, epochs=int(attrs[STUDY_EPOCHS]), seed=int(seed))
        shape = shape_of(config, data)
        arch, n_params = architecture(config, **shape), param_count(config, **shape)
        drift = []
        if ATTR_ARCH in trial.user_attrs and trial.user_attrs[ATTR_ARCH] != arch:
            drift.append(f"architecture {arch} vs trained {trial.user_attrs[ATTR_ARCH]}")
        if ATTR_PARAMS in trial.user_attrs and trial.user_attrs[ATTR_PARAMS] != n_params:
            drift.append(f"{n_params} parameters vs trained {trial.user_attrs[ATTR_PARAMS]}")
        if trained is not None and (differs := _config_diff(config, TrainConfig.from_dict(trained))):
            drift.append(differs)
        if drift:
            raise UserError(
                f"replaying trial {trial.number}'s params gives another model than it "
                f"trained ({'; '.join(drift)}): the search-space code or the study's stored "
                "space changed since the search; refusing to use a config it never scored"
            )
        return config


def open_finished(storage_url: str, study_name: str | None = None, *, searched: bool = False) -> Finished:
    """The study `study_name` (or the storage's only search) from a storage opened read-only.
    `searched`: refuse a study derived from another (a pruning audit) even when named."""
    url = check_storage(storage_url)
    storage = open_readonly(url)
    name = choose_study(storage, study_name)
    study = optuna.load_study(study_name=name, storage=storage)
    owner = study.user_attrs.get(STUDY_DERIVED_FROM)
    if searched and owner is not None:
        raise UserError(
            f"study {name!r} is the pruning audit of study {owner!r}, not a search; pass --study-name {owner}"
        )
    return Finished(name, study, url, study.get_trials(deepcopy=False))


def _config_diff(replayed: TrainConfig, trained: TrainConfig) -> str:
    a, b = replayed.to_dict(), trained.to_dict()
    return ", ".join(f"{k} {a.get(k)!r} vs trained {b.get(k)!r}" for k in a if a.get(k) != b.get(k))
