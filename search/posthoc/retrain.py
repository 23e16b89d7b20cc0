"""Retraining an exported config from scratch, then testing it: the library behind `python -m search.retrain`.

By default it trains on the search's own train split, so on the CPU the trial's seed reproduces the
trial's validation accuracy bit for bit: the proof that best.json holds what the search scored.
`full` trains on train + validation for the final model (no validation figure then). `seeds=K`
trains K times (seeds config.seed, +1, ...) for the test accuracy as mean ± std, a figure worth
quoting; model.pt and the detailed report are the first seed's. `ensemble` retrains every member of
the exported ensemble (ensemble.pt beside best.json) with each seed offset instead, and scores the
ensemble they make with the export's weights: how much of its gain is the members' seeds' luck.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.artifacts import ensemble as ensembles
from search.artifacts import provenance
from search.artifacts.evaluation import (
    Evaluation,
    best_config,
    evaluate_test,
    mean_std,
    read_best,
    save_model,
    score_split,
    write_reports,
)  # fmt: skip
from search.errors import UserError
from search.schema import ENSEMBLE_PT, MODEL_PT, REPORT_JSON, REPORT_TXT, RETRAIN_DIR
from search.training.config import TrainConfig
from search.training.fit import EpochMetrics, fit
from search.tuning.binding import load_bound_dataset

PROG = "python -m search.retrain"


@dataclass
class SeedRun:
    seed: int
    val_score: float | None  # None with --full: the validation split was trained on
    evaluation: Evaluation
    model: nn.Module | None  # the first seed's only (it becomes model.pt)
    train_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "val_score": self.val_score,
            "test_score": self.evaluation.score,
            "train_seconds": round(self.train_seconds, 4),
        }


@dataclass
class Retrained:
    best: dict[str, Any]
    config: TrainConfig  # the first seed's
    full: bool
    out_dir: Path
    members: list[dict[str, Any]] = field(default_factory=list)  # the ensemble's, when it was retrained
    runs: list[SeedRun] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def test_mean_std(self) -> tuple[float, float]:
        return mean_std([r.evaluation.score for r in self.runs])

    @property
    def reproduced(self) -> bool | None:
        """Whether the first seed met the trial's validation value exactly; None if not comparable
        (--full, or --epochs or the seed changed)."""
        first = self.runs[0]
        trained = self.best.get("config", {})
        comparable = (
            not self.members  # the pool's members were scored with half-precision weights
            and not self.full
            and self.config.epochs == trained.get("epochs")
            and self.config.seed == trained.get("seed")
        )
        return first.val_score == self.best["value"] if comparable else None


def default_out_dir(config_path: str | Path) -> Path:
    return Path(config_path).parent / RETRAIN_DIR


def retrain(
    config_path: str | Path,
    *,
    device: torch.device,
    epochs: int | None = None,
    seeds: int = 1,
    full: bool = False,
    out_dir: str | Path | None = None,
    data_dir: str | None = None,
    argv: Sequence[str] | None = None,
    on_epoch: Callable[[int, EpochMetrics], None] | None = None,
    ensemble: bool = False,
) -> Retrained:
    """Train best.json's config (or with `ensemble`, each member of its ensemble) `seeds` times,
    score each on the test split, write the files."""
    best = read_best(config_path)
    config = best_config(best, where=config_path)
    if epochs is not None:
        config = config.replace(epochs=epochs)
    data, data_dir = load_bound_dataset(best, data_dir=data_dir, device=device)
    searched_classes = best.get("classes")
    if isinstance(searched_classes, list) and len(searched_classes) != len(data.classes):
        raise UserError(
            f"{config_path}: the config was searched on {len(searched_classes)} classes, but "
            f"{best['dataset']} has {len(data.classes)} here; pass the search's --data-dir"
        )
    done = Retrained(
        best=best,
        config=config,
        full=full,
        out_dir=Path(out_dir) if out_dir is not None else default_out_dir(config_path),
    )
    if ensemble:
        saved = ensembles.read(Path(config_path).parent / ENSEMBLE_PT)
        done.members = [{k: v for k, v in m.items() if k != "state_dict"} for m in saved["members"]]
        _retrain_ensemble(done, data, saved, seeds, epochs, on_epoch=on_epoch)
        _write(done, data_sizes=(len(data.y_train), len(data.y_val)), argv=argv, device=device)
        return done
    for k in range(seeds):
        cfg = config.replace(seed=config.seed + k)

        def report(m: EpochMetrics, seed: int = cfg.seed) -> None:
            if on_epoch is not None:
                on_epoch(seed, m)

        result = fit(cfg, data, on_epoch=report, include_val=full)
        if result.diverged:
            raise UserError(f"seed {cfg.seed} diverged: {result.diverged}; this config is unstable")
        assert result.model is not None  # a finished fit holds its model
        done.runs.append(
            SeedRun(
                seed=cfg.seed,
                val_score=None if full else result.val_score,
                evaluation=evaluate_test(result.model, data, config.numeric),  # the test split, once a model
                model=result.model if k == 0 else None,  # only the first is saved; free the rest
                train_seconds=result.train_seconds,
            )
        )
    _write(done, data_sizes=(len(data.y_train), len(data.y_val)), argv=argv, device=device)
    return done


def _retrain_ensemble(done: Retrained, data, saved, seeds: int, epochs, *, on_epoch) -> None:
    """Seed offset k retrains every member with its own seed + k; the export's weights combine them."""
    configs = [TrainConfig.from_dict(m["config"]) for m in saved["members"]]
    configs = [c.replace(epochs=epochs) if epochs is not None else c for c in configs]
    weights = [m["weight"] for m in saved["members"]]
    for k in range(seeds):
        models = []
        for c in configs:
            cfg = c.replace(seed=c.seed + k)
            report = None if on_epoch is None else (lambda m, s=cfg.seed: on_epoch(s, m))
            result = fit(cfg, data, include_val=done.full, on_epoch=report)
            if result.diverged:
                raise UserError(f"a member with seed {cfg.seed} diverged: {result.diverged}")
            assert result.model is not None  # a finished fit holds its model
            models.append(result.model)
        model = ensembles.Ensemble(models, weights, regression=data.task == "regression").eval()
        val = None if done.full else score_split(model, data, "val", saved["numeric"])
        evaluation = evaluate_test(model, data, saved["numeric"])  # the test split, once an ensemble
        done.runs.append(SeedRun(k, val, evaluation, model if k == 0 else None, 0.0))


def _write(done: Retrained, *, data_sizes: tuple[int, int], argv, device) -> None:
    out = done.out_dir
    out.mkdir(parents=True, exist_ok=True)
    first = done.runs[0]
    assert first.model is not None
    if done.members:
        assert isinstance(first.model, ensembles.Ensemble)  # _retrain_ensemble's
        trials = [m["trial_number"] for m in done.members]
        configs = [TrainConfig.from_dict(m["config"]) for m in done.members]
        ensembles.save(out / ENSEMBLE_PT, first.model, trials, configs, configs[0].numeric, half=False)
    else:
        save_model(out / MODEL_PT, first.model)
    best, cfg = done.best, done.config
    n_train = sum(data_sizes) if done.full else data_sizes[0]
    split = "train + validation splits" if done.full else "train split"
    mean, std = done.test_mean_std
    what = f"trial {best['trial_number']}'s config ({best.get('architecture', 'architecture not recorded')})"
    if done.members:
        what = f"ensemble of trials {', '.join(str(m['trial_number']) for m in done.members)} (seed offsets)"
    header = [
        f"retrained study {best['study']}, {what}",
        f"trained on the {split} ({n_train} images), {cfg.epochs} epochs, "
        f"seeds {', '.join(str(r.seed) for r in done.runs)}",
    ]
    header += [seed_line(r) for r in done.runs]
    header.append(mean_line(mean, std, len(done.runs)))
    if len(done.runs) > 1:
        header.append(f"the report below and model.pt are seed {first.seed}'s")
    meta = {
        "study": best["study"],
        "trial_number": best["trial_number"],
        "trial_value": best["value"],
        "full": done.full,
        "n_train": n_train,
        "config": cfg.to_dict(),
        "seed": first.seed,
        "val_score": first.val_score,
        "reproduced_trial_value": done.reproduced,
        "runs": [r.as_dict() for r in done.runs],
        "ensemble_members": done.members or None,
        "test_score_mean": mean,
        "test_score_std": std,
        "provenance": provenance.collect(prog=PROG, argv=argv, device=device),
    }
    write_reports(out, first.evaluation, header=header, meta=meta)
    done.files = [ENSEMBLE_PT if done.members else MODEL_PT, REPORT_TXT, REPORT_JSON]


def seed_line(run: SeedRun) -> str:
    metric = run.evaluation.metric
    val = (
        "validation split trained on" if run.val_score is None else f"validation {metric} {run.val_score:.4f}"
    )
    return f"seed {run.seed}: {val}, test {metric} {run.evaluation.score:.4f}"


def mean_line(mean: float, std: float, n: int, metric: str = "accuracy") -> str:
    if n == 1:
        return f"test {metric} {mean:.4f} (one seed; --seeds K gives mean ± std)"
    return f"test {metric} {mean:.4f} ± {std:.4f} (mean ± sample std over {n} seeds)"
