"""Certifying a study's winner: the library behind `python -m search.certify`.

A search's best value is the maximum of many noisy figures, so it flatters the trial that won it.
Certification retrains the study's top-k COMPLETE trials (by validation value) with n fresh seeds
each, on the search's own train/validation split and with each config replayed through the
search's own space code; ranks the configs by mean validation accuracy; picks the winner on
validation alone; and only then touches the test split: once per seed of the winner's models
(mean ± std). No other config is ever scored on the test split.

Fresh seeds are derived from each trial's own seed (`fresh_seeds`), never equal it, and are
recorded. With `jobs` > 1 the fits run in worker processes (spawn; each loads the data once);
a fit's figures depend on its config, seed, device and thread count only, not on which worker
ran it or when, so on the CPU `jobs` changes no figure.

Files, in results/<study>/: certified.json (every config's per-seed values, mean, std, 95%
t-interval, search rank and certified rank; the winner's test figures; provenance),
certified.txt (the same as a table), and certified_best.json + certified_model.pt: the winner
with its first certified seed, in export's best.json form, so `python -m search.retrain --config
results/<study>/certified_best.json` retrains it (and, on the CPU, reproduces its value).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from optuna.trial import FrozenTrial
from scipy import stats

from search.artifacts import provenance
from search.artifacts.evaluation import Evaluation, evaluate_test, mean_std, save_model, write_json
from search.artifacts.export import FORMAT as BEST_FORMAT
from search.artifacts.export import data_fields, study_fields
from search.data.datasets import Dataset
from search.errors import UserError
from search.files import atomic_write
from search.posthoc.seed_fits import SeedFit, load_weights, run_fits
from search.schema import (
    ATTR_DEVICE,
    ATTR_SEED,
    CERTIFIED_BEST,
    CERTIFIED_JSON,
    CERTIFIED_MODEL,
    CERTIFIED_TXT,
    RESULTS_DIR,
    STUDY_DATASET,
    STUDY_EPOCHS,
    STUDY_SPLIT_SEED,
    STUDY_VAL_FRACTION,
    study_dir,
)  # fmt: skip
from search.storage.connect import redacted
from search.training.config import TrainConfig
from search.training.model import architecture, count_params, shape_of
from search.tuning.finished import open_finished
from search.tuning.trials import best_trials, value_of

PROG = "python -m search.certify"
FORMAT = 1  # certified.json's layout version
CONFIDENCE = 0.95
SEED_MODULUS = 2**31 - 1  # the range trial seeds live in (search.tuning.space.trial_seed)

Progress = Callable[[int, int, str], None]  # (fits done, fits in all, what just finished)


# ---------------------------------------------------------------------------- seeds and figures


def fresh_seeds(trial_seed: int, n: int) -> list[int]:
    """`n` distinct seeds for re-training a trial, derived from its seed, none equal to it."""
    seeds: list[int] = []
    k = 0
    while len(seeds) < n:
        digest = hashlib.sha256(f"search.certify:{trial_seed}:{k}".encode()).digest()
        seed = int.from_bytes(digest[:8], "big") % SEED_MODULUS
        if seed != trial_seed and seed not in seeds:
            seeds.append(seed)
        k += 1
    return seeds


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The `confidence` interval of the mean (Student's t, n - 1 degrees of freedom); None for
    fewer than two values."""
    if len(values) < 2:
        return None
    mean, std = mean_std(values)
    half = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1)) * std / math.sqrt(len(values))
    return mean - half, mean + half


@dataclass
class Candidate:
    trial: FrozenTrial
    search_rank: int  # 1 = the search's best
    config: TrainConfig  # as the search trained it, with the trial's own seed
    seeds: list[int]
    fits: list[SeedFit] = field(default_factory=list)
    certified_rank: int = 0

    @property
    def val_values(self) -> list[float | None]:
        return [f.val_score for f in self.fits]

    @property
    def diverged(self) -> bool:
        return any(f.val_score is None for f in self.fits)

    @property
    def _scores(self) -> list[float]:
        """The seeds' validation scores, those that diverged left out."""
        return [v for v in self.val_values if v is not None]

    @property
    def val_mean_std(self) -> tuple[float, float]:
        return (math.nan, math.nan) if self.diverged else mean_std(self._scores)

    def as_dict(self) -> dict[str, Any]:
        mean, std = self.val_mean_std
        ci = None if self.diverged else t_interval(self._scores)
        return {
            "trial_number": self.trial.number,
            "search_rank": self.search_rank,
            "certified_rank": self.certified_rank,
            "search_value": value_of(self.trial),
            "trial_seed": self.config.seed,
            "params": dict(self.trial.params),
            "config": self.config.to_dict(),
            "seeds": self.seeds,
            "val_score": self.val_values,
            "val_mean": mean,
            "val_std": std,
            "val_ci95": list(ci) if ci else None,
            "diverged": [f.diverged for f in self.fits if f.diverged],
            "train_seconds": [round(f.train_seconds, 4) for f in self.fits],
        }


def rank(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Best mean validation accuracy first; a config with a diverged seed after every other;
    among equals, the better search rank. Sets each one's `certified_rank`."""
    ranked = sorted(candidates, key=lambda c: (c.diverged, -c.val_mean_std[0], c.search_rank))
    for i, c in enumerate(ranked, 1):
        c.certified_rank = i
    return ranked


# ---------------------------------------------------------------------------- certifying


@dataclass
class Certified:
    study: str
    ranked: list[Candidate]  # by certified rank; ranked[0] is the winner
    tests: list[Evaluation]  # the winner's models on the test split, one per seed
    out_dir: Path
    payload: dict[str, Any]  # what certified.json holds
    files: list[str] = field(default_factory=list)

    @property
    def winner(self) -> Candidate:
        return self.ranked[0]

    @property
    def test_mean_std(self) -> tuple[float, float]:
        return mean_std([e.score for e in self.tests])


def certify_study(
    *,
    storage_url: str,
    study_name: str | None,
    device: torch.device,
    top: int = 5,
    seeds: int = 3,
    jobs: int = 1,
    threads: int | None = None,  # torch threads in each worker process (None: torch's default)
    data_dir: str | None = None,
    results_dir: str | Path = RESULTS_DIR,
    on_progress: Progress | None = None,
    argv: Sequence[str] | None = None,
) -> Certified:
    """Retrain the top `top` configs with `seeds` fresh seeds each, pick the winner on mean
    validation accuracy, test it (and only it), write the files into results/<study>/."""
    study = open_finished(storage_url, study_name, searched=True)
    name, attrs = study.name, study.binding
    out = study_dir(results_dir, name)
    study.best()  # no complete trial: one line that says so
    chosen = best_trials(study.trials, fraction=0, minimum=top)  # best first; among equals the earliest
    data, data_dir = study.load_data(device=device, data_dir=data_dir)
    candidates = []
    for i, trial in enumerate(chosen, 1):
        config = study.replay(trial, data)  # checked against what it trained
        candidates.append(Candidate(trial, i, config, fresh_seeds(int(config.seed), seeds)))
    configs = [c.config.replace(seed=s) for c in candidates for s in c.seeds]
    total = len(configs)
    finished = [0]

    def on_fit(i: int, f: SeedFit) -> None:
        finished[0] += 1
        if on_progress is not None:
            val = "diverged" if f.val_score is None else f"val {f.val_score:.4f}"
            note = f"trial {candidates[i // seeds].trial.number} seed {f.seed}: {val}"
            on_progress(finished[0], total, note)

    fits = run_fits(
        configs, data, binding=attrs, data_dir=data_dir, jobs=jobs, threads=threads, on_fit=on_fit
    )
    for i, c in enumerate(candidates):
        c.fits = fits[i * seeds : (i + 1) * seeds]
    ranked = rank(candidates)
    winner = ranked[0]
    if winner.diverged:
        raise UserError(
            f"every one of the {len(ranked)} configs diverged (a non-finite loss) with a fresh seed; "
            "nothing to certify"
        )
    # The one touch of the test split: the winner's models, chosen on validation alone.
    models = [load_weights(winner.config, f, data) for f in winner.fits]
    tests = [evaluate_test(m, data, winner.config.numeric) for m in models]
    done = Certified(name, ranked, tests, out, payload={})
    done.payload = _payload(done, attrs, storage_url, data, data_dir, seeds=seeds, top=top, jobs=jobs)
    done.payload["provenance"] = provenance.collect(prog=PROG, argv=argv, device=device)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CERTIFIED_JSON, done.payload)
    atomic_write(out / CERTIFIED_TXT, "\n".join(table_lines(done.payload)) + "\n")
    first = models[0]
    save_model(out / CERTIFIED_MODEL, first)
    write_json(out / CERTIFIED_BEST, _best_json(done, attrs, storage_url, data, data_dir, first))
    done.files = [CERTIFIED_JSON, CERTIFIED_TXT, CERTIFIED_BEST, CERTIFIED_MODEL]
    return done


def _payload(done: Certified, attrs, storage_url, data: Dataset, data_dir, *, seeds, top, jobs) -> dict:
    winner = done.winner
    test_values = [e.score for e in done.tests]
    mean, std = mean_std(test_values)
    ci = t_interval(test_values)
    search_best = min(done.ranked, key=lambda c: c.search_rank)
    return {
        "format": FORMAT,
        "study": done.study,
        "storage": redacted(storage_url),
        "metric": data.metric,
        "dataset": attrs[STUDY_DATASET],
        "data_dir": data_dir,
        "val_fraction": attrs[STUDY_VAL_FRACTION],
        "split_seed": attrs[STUDY_SPLIT_SEED],
        "epochs": attrs[STUDY_EPOCHS],
        "n_train": len(data.y_train),
        "n_val": len(data.y_val),
        "top_requested": top,
        "top": len(done.ranked),
        "seeds_per_config": seeds,
        "confidence": CONFIDENCE,
        "jobs": jobs,
        "selection": f"mean validation {data.metric} over fresh seeds; only the winner meets the test split",
        "configs": [c.as_dict() for c in done.ranked],
        "winner": {
            "trial_number": winner.trial.number,
            "search_rank": winner.search_rank,
            "seeds": winner.seeds,
            "val_mean": winner.val_mean_std[0],
            "test_score": test_values,
            "test_mean": mean,
            "test_std": std,
            "test_ci95": list(ci) if ci else None,
            "n_test": done.tests[0].n,
        },
        "search_best": {
            "trial_number": search_best.trial.number,
            "certified_rank": search_best.certified_rank,
        },
    }


def _best_json(done: Certified, attrs, storage_url, data: Dataset, data_dir, model) -> dict[str, Any]:
    """The winner in export's best.json form, with its first certified seed: config, value and
    weights (certified_model.pt) agree, as in an export."""
    w, first, test = done.winner, done.winner.fits[0], done.tests[0]
    config = w.config.replace(seed=first.seed)
    note = (
        f"seed {first.seed}, the first of {len(w.seeds)} fresh seeds that certified trial "
        f"{w.trial.number}'s config (certified rank 1 of {len(done.ranked)}, search rank {w.search_rank})"
    )
    return {
        "format": BEST_FORMAT,
        "study": done.study,
        "storage": redacted(storage_url),
        "trial_number": w.trial.number,
        "value": first.val_score,
        "metric": data.metric,
        "params": dict(w.trial.params),
        "config": config.to_dict(),
        "architecture": architecture(config, **shape_of(config, data)),
        "n_params": count_params(model),
        **data_fields(attrs, data_dir, data),
        "weights": "certified",
        "weights_note": note,
        "val_score": first.val_score,
        "test_score": test.score,
        "trial_value": value_of(w.trial),
        "certified": {k: done.payload["winner"][k] for k in ("seeds", "val_mean", "test_mean", "test_std")},
        "trial_user_attrs": {**w.trial.user_attrs, ATTR_SEED: first.seed, ATTR_DEVICE: str(data.device)},
        **study_fields(attrs),
        "provenance": done.payload["provenance"],
    }


def _ci_text(ci: Sequence[float] | None) -> str:
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "(one seed)"


def table_lines(payload: dict[str, Any]) -> list[str]:
    """certified.txt: the configs by certified rank, then the winner's test figures."""
    p, w = payload, payload["winner"]
    lines = [
        f"study {p['study']}: its top {p['top']} complete trials retrained with {p['seeds_per_config']} "
        f"fresh seeds each, {p['epochs']} epochs, on the search's train split ({p['n_train']} images), "
        f"scored on its validation split ({p['n_val']} images)",
        "",
    ]
    rows = [("cert", "search", "trial", "search val", "val mean ± std", "95% interval", "per seed")]
    for c in p["configs"]:
        per_seed = " ".join("diverged" if v is None else f"{v:.4f}" for v in c["val_score"])
        mean = "diverged" if c["diverged"] else f"{c['val_mean']:.4f} ± {c['val_std']:.4f}"
        rows.append((
            str(c["certified_rank"]), str(c["search_rank"]), str(c["trial_number"]),
            f"{c['search_value']:.4f}", mean, _ci_text(c["val_ci95"]), per_seed,
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append("  ".join(cell.rjust(widths[i]) for i, cell in enumerate(r[:-1])) + "  " + r[-1])
    lines += [
        "",
        f"winner: trial {w['trial_number']} (search rank {w['search_rank']}), chosen on mean validation "
        f"accuracy {w['val_mean']:.4f} alone",
        f"test accuracy {w['test_mean']:.4f} ± {w['test_std']:.4f}, 95% interval {_ci_text(w['test_ci95'])}, "
        f"over seeds {', '.join(map(str, w['seeds']))}: "
        + " ".join(f"{v:.4f}" for v in w["test_score"])
        + f" ({w['n_test']} test images)",
        "the test split was scored for the winner only, once per seed (mean ± sample std)",
    ]
    sb = p["search_best"]
    if sb["trial_number"] != w["trial_number"]:
        lines.append(
            f"the search's best, trial {sb['trial_number']}, certified at rank {sb['certified_rank']}"
        )
    return lines
