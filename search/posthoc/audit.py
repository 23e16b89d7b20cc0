"""Auditing the pruner: the library behind `python -m search.audit`.

A pruned trial is a config the pruner gave up on after a few epochs. The audit re-runs a
fixed-seed random choice of `n` of them to the full epoch budget, each with its own params and
its own seed (the trial's `seed` user attr, so on the CPU its first epochs retrace the search's),
and counts how many would have ended above the median of the completed trials' values and how
many in their top 10%: the false-prune rate. The regret is the best audited value minus the
study's best: positive means the pruner threw away a config better than anything the search kept.

The original study is only ever read, through a read-only storage. The audit's runs go into a
study of their own, `<study>-audit`, in the same storage: one trial per audited config, with the
params, one intermediate value per epoch and the user attrs `audited_trial` and
`pruned_at_epoch`. Auditing again reads back the configs already audited there instead of
retraining them; the random choice is a fixed shuffle, so `n = 20` extends `n = 10`'s choice.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from search.artifacts import provenance
from search.artifacts.evaluation import write_json
from search.errors import UserError
from search.schema import (
    ATTR_ARCH,
    ATTR_AUDITED,
    ATTR_DEVICE,
    ATTR_EPOCHS,
    ATTR_PRUNED_AT,
    ATTR_REASON,
    ATTR_SECONDS,
    ATTR_SEED,
    ATTR_VALUE_AT_PRUNE,
    AUDIT_JSON,
    RESULTS_DIR,
    STUDY_DERIVED_FROM,
    STUDY_EPOCHS,
    study_dir,
)  # fmt: skip
from search.storage.connect import open_storage, redacted
from search.training.fit import EpochMetrics, fit
from search.training.model import architecture, shape_of
from search.tuning.finished import open_finished
from search.tuning.trials import complete_trials, counts_text, value_of

PROG = "python -m search.audit"
FORMAT = 1  # audit.json's layout version
AUDIT_SUFFIX = "-audit"
TOP_FRACTION = 0.1
# The reason `search.training.fit.fit` gives a non-finite loss; the objective prunes such a
# trial too, but that was no pruner's verdict, so the audit leaves it out.
DIVERGED_PREFIX = "training loss became"

Progress = Callable[[int, int, str], None]  # (epochs done, epochs in all, what is training)


# ---------------------------------------------------------------------------- choosing the study


def audit_study_name(name: str) -> str:
    return f"{name}{AUDIT_SUFFIX}"


# ---------------------------------------------------------------------------- the figures


def pruned_at(trial: FrozenTrial) -> int:
    """The last epoch a pruned trial trained (and reported)."""
    epochs = trial.user_attrs.get(ATTR_EPOCHS)
    if isinstance(epochs, int) and not isinstance(epochs, bool):
        return epochs
    return max(trial.intermediate_values, default=0)


def pruner_stopped(trial: FrozenTrial) -> bool:
    """A PRUNED trial that the pruner stopped (not one whose loss turned NaN or inf)."""
    reason = str(trial.user_attrs.get(ATTR_REASON, ""))
    return (
        trial.state == TrialState.PRUNED
        and bool(trial.intermediate_values)
        and not reason.startswith(DIVERGED_PREFIX)
    )


def choose_pruned(trials: Sequence[FrozenTrial], n: int, seed: int) -> list[FrozenTrial]:
    """`n` of the trials the pruner stopped, a fixed-seed random choice, in trial order.

    A seeded shuffle of all of them, cut after `n`: a larger `n` keeps the smaller one's choice.
    """
    order = sorted((t for t in trials if pruner_stopped(t)), key=lambda t: t.number)
    random.Random(seed).shuffle(order)
    return sorted(order[:n], key=lambda t: t.number)


def top_threshold(values: Sequence[float], fraction: float = TOP_FRACTION) -> float:
    """The smallest value among the best `fraction` (at least one) of `values`: a value at or
    above it would have ranked among them."""
    ranked = sorted(values, reverse=True)
    return ranked[max(1, math.ceil(fraction * len(ranked))) - 1]


# ---------------------------------------------------------------------------- the audit


@dataclass
class AuditedTrial:
    number: int  # the pruned trial's number in the original study
    params: dict[str, Any]
    seed: int
    pruned_at_epoch: int
    value_at_prune: float | None  # what it reported at that epoch in the search
    curve: list[float]  # the audit's validation accuracy per epoch, 1..epochs
    value: float | None  # the final epoch's; None if the loss turned NaN or inf
    reproduced_prefix: bool  # the audit's first epochs equal the search's reports, exactly
    audit_trial: int  # its number in the audit study
    reused: bool  # read back from an earlier audit, not retrained now
    device: str
    diverged: str | None = None

    def as_dict(self, median: float, threshold: float) -> dict[str, Any]:
        return {
            "trial_number": self.number,
            "params": self.params,
            "seed": self.seed,
            "pruned_at_epoch": self.pruned_at_epoch,
            "value_at_prune": self.value_at_prune,
            "audited_value": self.value,
            "above_median": self.value is not None and self.value > median,
            "in_top10": self.value is not None and self.value >= threshold,
            "curve": self.curve,
            "reproduced_prefix": self.reproduced_prefix,
            "audit_trial_number": self.audit_trial,
            "reused": self.reused,
            "device": self.device,
            "diverged": self.diverged,
        }


@dataclass
class Audit:
    study: str
    audit_study: str
    out_dir: Path
    trials: list[AuditedTrial]
    payload: dict[str, Any]  # what audit.json holds
    files: list[str] = field(default_factory=list)


def audit_study(
    *,
    storage_url: str,
    study_name: str | None,
    n: int = 10,
    seed: int = 0,
    results_dir: str | Path = RESULTS_DIR,
    device: torch.device,
    data_dir: str | None = None,
    argv: Sequence[str] | None = None,
    on_progress: Progress | None = None,
) -> Audit:
    """Re-run `n` pruned trials to the full budget; write results/<study>/audit.json."""
    study = open_finished(storage_url, study_name, searched=True)  # an audit is never audited
    name, attrs, trials = study.name, study.binding, study.trials
    if len(study.study.directions) > 1:
        raise UserError(
            f"study {name!r} has two objectives: its pruner's judgments (MO-ASHA, by Pareto rank) "
            "are not audited; audit re-runs the pruned trials of a one-objective study"
        )
    out = study_dir(results_dir, name)  # a name that cannot be a folder fails now
    best = study.best()  # no complete trial: no median to compare with, one line
    chosen = choose_pruned(trials, n, seed)
    if not chosen:
        held = counts_text(trials)
        diverged = sum(t.state == TrialState.PRUNED for t in trials)
        why = f"; {diverged} were pruned for a non-finite loss or rejected over a limit" if diverged else ""
        raise UserError(f"study {name!r} has no pruned trials to audit ({held}{why})")
    data, data_dir = study.load_data(device=device, data_dir=data_dir)
    epochs = int(attrs[STUDY_EPOCHS])
    audit = _open_audit_study(study.storage_url, name, attrs)
    earlier = {
        t.user_attrs[ATTR_AUDITED]: t
        for t in audit.get_trials(deepcopy=False)
        if isinstance(t.user_attrs.get(ATTR_AUDITED), int)
    }
    total = epochs * sum(t.number not in earlier for t in chosen)
    done_epochs = 0
    audited = []
    for trial in chosen:
        if trial.number in earlier:
            audited.append(_read_back(trial, earlier[trial.number]))
            continue
        config = study.replay(trial, data)  # its own params and seed, checked against what it trained

        def on_epoch(m: EpochMetrics, number: int = trial.number) -> None:
            nonlocal done_epochs
            done_epochs += 1
            if on_progress is not None:
                on_progress(done_epochs, total, f"trial {number} epoch {m.epoch}")

        result = fit(config, data, on_epoch=on_epoch)  # no pruner: the whole budget
        done_epochs += epochs - result.epochs_run  # a diverged run ends early
        at = pruned_at(trial)
        user_attrs = {
            ATTR_AUDITED: trial.number,
            ATTR_PRUNED_AT: at,
            ATTR_VALUE_AT_PRUNE: trial.intermediate_values.get(at),
            ATTR_SEED: config.seed,
            ATTR_DEVICE: str(data.device),
            ATTR_EPOCHS: result.epochs_run,
            ATTR_ARCH: architecture(config, **shape_of(config, data)),
            ATTR_SECONDS: round(result.train_seconds, 4),
        }
        if result.diverged:
            user_attrs[ATTR_REASON] = result.diverged
        record = optuna.trial.create_trial(
            state=TrialState.FAIL if result.diverged else TrialState.COMPLETE,
            value=None if result.diverged else result.val_score,
            params=dict(trial.params),
            distributions=dict(trial.distributions),
            intermediate_values={m.epoch: m.val_score for m in result.history},
            user_attrs=user_attrs,
        )
        audit.add_trial(record)  # one write, after training: a crash leaves no RUNNING trial
        mine = [t for t in audit.get_trials(deepcopy=False) if t.user_attrs.get(ATTR_AUDITED) == trial.number]
        stored = mine[-1]
        audited.append(_read_back(trial, stored, reused=False))
    payload = _payload(name, audit.study_name, storage_url, best, trials, audited, n=n, seed=seed)
    payload["epochs"] = epochs
    payload["data_dir"] = data_dir
    payload["provenance"] = provenance.collect(prog=PROG, argv=argv, device=device)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / AUDIT_JSON, payload)
    return Audit(name, audit.study_name, out, audited, payload, files=[AUDIT_JSON])


def _open_audit_study(storage_url: str, name: str, attrs: dict[str, Any]) -> optuna.Study:
    """`<study>-audit` in the same storage, created (with the study's binding) if new."""
    storage = open_storage(storage_url, heartbeat_s=None)
    audit_name = audit_study_name(name)
    audit = optuna.create_study(
        storage=storage, study_name=audit_name, direction="maximize", load_if_exists=True
    )
    owner = audit.user_attrs.get(STUDY_DERIVED_FROM)
    if audit.user_attrs and owner != name:
        raise UserError(
            f"the storage already holds a study {audit_name!r} that is not the audit of {name!r}; "
            "rename it, or audit into another storage"
        )
    if not audit.user_attrs:
        for key, value in {**attrs, STUDY_DERIVED_FROM: name}.items():
            audit.set_user_attr(key, value)
    return audit


def _read_back(trial: FrozenTrial, record: FrozenTrial, *, reused: bool = True) -> AuditedTrial:
    epochs = sorted(record.intermediate_values)
    curve = [record.intermediate_values[e] for e in epochs]
    at = int(record.user_attrs.get(ATTR_PRUNED_AT, pruned_at(trial)))
    searched = [trial.intermediate_values.get(e) for e in range(1, at + 1)]
    return AuditedTrial(
        number=trial.number,
        params=dict(trial.params),
        seed=int(record.user_attrs.get(ATTR_SEED, -1)),
        pruned_at_epoch=at,
        value_at_prune=trial.intermediate_values.get(at),
        curve=curve,
        value=record.value if record.state == TrialState.COMPLETE else None,
        reproduced_prefix=curve[:at] == searched,
        audit_trial=record.number,
        reused=reused,
        device=str(record.user_attrs.get(ATTR_DEVICE, "?")),
        diverged=record.user_attrs.get(ATTR_REASON) if record.state != TrialState.COMPLETE else None,
    )


def _payload(
    name: str,
    audit_name: str,
    storage_url: str,
    best: FrozenTrial,
    trials: Sequence[FrozenTrial],
    audited: Sequence[AuditedTrial],
    *,
    n: int,
    seed: int,
) -> dict[str, Any]:
    values = [value_of(t) for t in complete_trials(trials)]
    median, threshold = statistics.median(values), top_threshold(values)
    rows = [a.as_dict(median, threshold) for a in audited]
    finished = [(a.value, a) for a in audited if a.value is not None]
    top_value, top = max(finished, key=lambda pair: pair[0], default=(None, None))
    n_audited = len(audited)
    above = sum(r["above_median"] for r in rows)
    in_top = sum(r["in_top10"] for r in rows)
    return {
        "format": FORMAT,
        "study": name,
        "audit_study": audit_name,
        "storage": redacted(storage_url),
        "metric": "validation accuracy",
        "n_requested": n,
        "seed": seed,
        "n_pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "n_pruner_stopped": sum(pruner_stopped(t) for t in trials),
        "n_audited": n_audited,
        "n_reused": sum(a.reused for a in audited),
        "completed": {
            "n": len(values),
            "median": median,
            "top10_threshold": threshold,
            "top10_rule": f"audited value >= the lowest of the best "
            f"{max(1, math.ceil(TOP_FRACTION * len(values)))} of the {len(values)} complete values",
            "best_value": best.value,
            "best_trial": best.number,
        },
        "above_median": above,
        "in_top10": in_top,
        "false_prune_rate_median": above / n_audited,
        "false_prune_rate_top10": in_top / n_audited,
        "best_audited_value": top_value,
        "best_audited_trial": top.number if top else None,
        "regret": top_value - value_of(best) if top_value is not None else None,
        "all_reproduced_prefix": all(a.reproduced_prefix for a in audited),
        "trials": rows,
    }


def finding_lines(p: Mapping[str, Any]) -> list[str]:
    """audit.json's findings in words: the false-prune counts and the regret."""
    c, n = p["completed"], p["n_audited"]
    lines = [
        f"above the median of the {c['n']} complete trials ({c['median']:.4f}): {p['above_median']} "
        f"of {n} ({100 * p['false_prune_rate_median']:.0f}%)",
        f"in their top 10% (>= {c['top10_threshold']:.4f}): {p['in_top10']} of {n} "
        f"({100 * p['false_prune_rate_top10']:.0f}%)",
    ]
    if p["regret"] is not None:
        verdict = "the pruner threw away a better config" if p["regret"] > 0 else "the search kept the best"
        lines.append(
            f"regret {p['regret']:+.4f}: best audited trial {p['best_audited_trial']} "
            f"{p['best_audited_value']:.4f} vs the study's best trial {c['best_trial']} "
            f"{c['best_value']:.4f} ({verdict})"
        )
    return lines


def summary_lines(done: Audit) -> list[str]:
    """What the command prints: the counts, the rates and the regret, in words."""
    p = done.payload
    n = p["n_audited"]
    lines = [
        f"study {done.study}: audited {n} of its {p['n_pruner_stopped']} pruned trials to the full "
        f"{p['epochs']} epochs ({p['n_reused']} read back from {done.audit_study})",
        *finding_lines(p),
    ]
    for r in p["trials"]:
        value = "diverged" if r["audited_value"] is None else f"{r['audited_value']:.4f}"
        at = "?" if r["value_at_prune"] is None else f"{r['value_at_prune']:.4f}"
        lines.append(
            f"  trial {r['trial_number']}: pruned at epoch {r['pruned_at_epoch']} ({at}), "
            f"full budget {value}" + (" (above the median)" if r["above_median"] else "")
        )
    return lines
