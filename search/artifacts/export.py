"""A study's best trial as files a user can take away: the library behind `python -m search.export`.

Writes into results/<study>/ (or another folder): best.json (the config, data binding and
provenance), model.pt (a plain state_dict), model.txt (the layers and their parameter counts), the
test report pair, trials.csv and the prediction pictures. The best params are replayed through
`search.tuning.space.replay_config`, the code that sampled them, and checked against what the
trial recorded, so export and search cannot drift.

A two-objective study (search.tuning.costs) exports the best score on its Pareto front, and
writes the front (score, parameters, latency, trial) into best.json and a `pareto_front` column of
trials.csv; `max_params` and `max_latency_ms` export the best trial within them. Either way a
single trial is exported, never the ensemble: its cost is its members' together, off the front.

The storage is opened read-only (SQLite in `mode=ro`; no table creation on any backend): exporting
a study that workers are still writing to is safe and changes nothing in it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from optuna.trial import FrozenTrial
from torch import nn

from search.artifacts import ensemble, provenance, smaller
from search.artifacts.evaluation import (
    Evaluation,
    evaluate_test,
    load_state,
    save_model,
    score_split,
    write_json,
    write_reports,
)
from search.artifacts.pictures import write_prediction_figures
from search.artifacts.predict import Predictor, Preprocess
from search.artifacts.refit import default_folds
from search.artifacts.refit import refit as refit_rows
from search.artifacts.table_figures import importance_lines, permutation_importance, write_table_figures
from search.data.datasets import Dataset
from search.device import reduced_precision
from search.errors import UserError, first_line
from search.files import atomic_write
from search.schema import (
    ATTR_DEVICE,
    ATTR_LATENCY,
    ATTR_PARAMS,
    BEST_JSON,
    BEST_WEIGHTS,
    ENSEMBLE_PT,
    MODEL_PT,
    MODEL_TXT,
    PREPROCESS_PKL,
    PREPROCESS_SKOPS,
    REPORT_JSON,
    REPORT_TXT,
    STUDY_DATASET,
    STUDY_EPOCHS,
    STUDY_SPACE,
    STUDY_SPLIT_SEED,
    STUDY_TABLE,
    STUDY_VAL_FRACTION,
    TRIALS_CSV,
    study_dir,
)  # fmt: skip
from search.storage.connect import redacted
from search.training.config import TrainConfig
from search.training.fit import EpochCallback, fit
from search.training.model import architecture, build_for, count_params, shape_of
from search.tuning import best_weights, pool
from search.tuning.finished import open_finished
from search.tuning.trials import value_of

PROG = "python -m search.export"
FORMAT = 1  # best.json's layout version; bump when a key changes meaning


# ---------------------------------------------------------------------------- the weights


@dataclass
class Weights:
    model: nn.Module
    source: str  # "checkpoint" or "retrained"
    val_score: float  # of these weights, on the search's validation split, here
    note: str  # one sentence for the user: where the weights came from and how they check out


def checkpoint_weights(
    directory: Path, trial: FrozenTrial, config: TrainConfig, data: Dataset
) -> Weights | str:
    """The search's saved weights if they are this trial's; otherwise why not (a sentence)."""
    path = directory / BEST_WEIGHTS
    try:
        saved = best_weights.load_best(directory)
    except Exception as e:  # a truncated or foreign file: retraining is the way out
        raise UserError(f"{path}: unreadable checkpoint ({first_line(e)}); pass --retrain") from None
    if saved is None:
        return f"no checkpoint in {directory}"
    if saved.get("trial_number") != trial.number:
        return f"the checkpoint in {directory} holds trial {saved.get('trial_number')}"
    model = build_for(config, data)
    load_state(model, saved.get("state_dict"), source=str(path))
    model.to(data.device)
    val = score_split(model, data, "val", config.numeric)
    # The same weights on the same data: equal on the same kind of device, up to a few rows
    # flipped by other float kernels (another CPU; on a GPU, the stack's batched bf16 matmuls
    # against nn.Linear's: 6 of 5,000 rows on an H200) and a continuous metric's rounding; a whole
    # point off on another kind (bf16 on a GPU search, fp32 on a CPU export). Beyond that, they
    # are some other model's.
    same_kind = torch.device(str(trial.user_attrs.get(ATTR_DEVICE, "cpu"))).type == data.device.type
    rows = 20.0 if reduced_precision(data.device) else 2.5
    value = value_of(trial)  # the study's best: a COMPLETE trial
    tolerance = rows / len(data.y_val) + 1e-4 * max(1.0, abs(value)) if same_kind else 0.01
    if abs(val - value) > tolerance:
        raise UserError(
            f"{path} scores validation {data.metric} {val:.4f} but trial {trial.number} "
            f"reported {value:.4f}: these are not its weights; pass --retrain"
        )
    check = "the trial's, exactly" if val == value else f"the trial had {value:.4f}"
    return Weights(
        model,
        "checkpoint",
        val,
        f"weights from the search's checkpoint {path}: validation {data.metric} {val:.4f}, {check}",
    )


def retrain_weights(
    trial: FrozenTrial, config: TrainConfig, data: Dataset, *, why: str, on_epoch: EpochCallback | None = None
) -> Weights:
    result = fit(config, data, on_epoch=on_epoch)
    if result.diverged:
        raise UserError(f"retraining trial {trial.number} diverged: {result.diverged}")
    assert result.model is not None  # a finished fit holds its model
    val = result.val_score
    trained_on = trial.user_attrs.get(ATTR_DEVICE, "?")
    check = "the trial's, exactly"
    if val != value_of(trial):  # another device, or different CPU kernels: worth saying
        check = f"the trial had {value_of(trial):.4f} on {trained_on}"
    note = (
        f"retrained trial {trial.number}'s config with seed {config.seed} on {data.device} "
        f"({why}): validation {data.metric} {val:.4f}, {check}"
    )
    return Weights(result.model, "retrained", val, note)


# ---------------------------------------------------------------------------- the files


def layer_table(model: nn.Module) -> str:
    """One row per layer of the Sequential: its type, parameter shapes and count."""
    rows = [("layer", "type", "parameters", "shapes")]
    for name, module in model.named_children():
        params = list(module.named_parameters())
        shapes = ", ".join(f"{n} {list(p.shape)}" for n, p in params)
        rows.append((name, type(module).__name__, f"{sum(p.numel() for _, p in params):,}", shapes))
    rows.append(
        ("total", "", f"{count_params(model):,}", "parameters (BatchNorm's running stats are buffers)")
    )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip() for r in rows
    )


def write_trials_csv(
    path: Path, trials: Sequence[FrozenTrial], *, front: Sequence[int] | None = None
) -> None:
    """One row per trial; `value` is the validation score (a two-objective trial's first value).
    With `front` (a two-objective study's Pareto front, by trial number) a `pareto_front` column
    says which trials are on it."""
    params = sorted({k for t in trials for k in t.params})
    attrs = sorted({k for t in trials for k in t.user_attrs})
    head = ["number", "state", "value", "datetime_start", "datetime_complete", "duration_s"]
    head += ["pareto_front"] if front is not None else []
    text = io.StringIO(newline="")
    out = csv.writer(text)
    out.writerow(head + [f"params_{k}" for k in params] + [f"user_attrs_{k}" for k in attrs])
    for t in trials:
        duration = t.duration.total_seconds() if t.duration is not None else ""
        row = [
            t.number,
            t.state.name,
            t.values[0] if t.values else "",
            _iso(t.datetime_start),
            _iso(t.datetime_complete),
            duration,
        ]
        row += [t.number in front] if front is not None else []
        row += [_cell(t.params.get(k)) for k in params]
        row += [_cell(t.user_attrs.get(k)) for k in attrs]
        out.writerow(row)
    atomic_write(path, text.getvalue())


@dataclass
class Exported:
    study: str
    trial: FrozenTrial
    config: TrainConfig
    weights: Weights
    evaluation: Evaluation  # the exported model's: the ensemble's where there is one
    out_dir: Path
    files: list[str]
    ensemble_lines: list[str] = field(default_factory=list)  # what the selection found, for people
    smaller_lines: list[str] = field(default_factory=list)  # --quantize, --half: what each file costs


def export_study(
    *,
    storage_url: str,
    study_name: str | None,
    out_dir: str | Path | None,
    results_dir: str | Path,
    device: torch.device,
    data_dir: str | None = None,
    retrain: bool = False,
    argv: Sequence[str] | None = None,
    on_epoch: EpochCallback | None = None,
    quantize: str | None = None,
    half: bool = False,
    refit: bool = True,
    crossfit: int | None = None,
    max_params: int | None = None,
    max_latency_ms: float | None = None,
) -> Exported:
    """The study's best trial (or its ensemble) as files. With `refit` (tables only), the chosen
    configs are trained again on the training and validation rows (search.artifacts.refit) and
    that model is exported; the search's own model is still scored on the test split beside it.
    `crossfit` K >= 2: cross-fitted instead, the exported model the average of K fold models per
    chosen config (search.artifacts.refit); 0 refits once; None: `refit.default_folds` for a
    table study with one objective, no limits and `refit`, else 0.
    `max_params`, `max_latency_ms`: the best trial within them (its recorded n_params and
    latency_ms), alone; a two-objective study's best score on its Pareto front, alone, likewise."""
    if quantize not in (None, *smaller.QUANTIZE):
        raise UserError(f"--quantize {quantize!r}: expected one of {', '.join(smaller.QUANTIZE)}")
    if out_dir is not None:
        check_out_dir(Path(out_dir))
    if crossfit == 1:
        raise UserError("--crossfit K: K folds leave one out each, so K must be at least 2")
    if crossfit and not refit:
        raise UserError("--crossfit trains the chosen configs on the training and validation rows: "
                        "it cannot go with --no-refit")  # fmt: skip
    if crossfit and (max_params is not None or max_latency_ms is not None):
        raise UserError("--crossfit exports several models averaged: it cannot go with --max-params or "
                        "--max-latency-ms, which choose one trial by its own size")  # fmt: skip
    study = open_finished(storage_url, study_name)
    trial = study.best(max_params=max_params, max_latency_ms=max_latency_ms)
    name, attrs = study.name, study.binding
    front = study.front()
    two = len(study.study.directions) > 1
    limited = max_params is not None or max_latency_ms is not None
    chosen = _chosen_text(two, max_params, max_latency_ms)
    data, data_dir = study.load_data(device=device, data_dir=data_dir)
    ckpt_dir = study_dir(results_dir, name)
    # The checkpoint's metadata holds the config the objective trained; number and value together
    # tell that it is this trial's and not a same-named study's from another storage.
    meta = best_weights.read_meta(ckpt_dir) or {}
    ours = (meta.get("trial_number"), meta.get("value")) == (trial.number, value_of(trial))
    config = study.replay(trial, data, trained=meta.get("config") if ours else None)
    found = "--retrain was given" if retrain else checkpoint_weights(ckpt_dir, trial, config, data)
    if not isinstance(found, Weights):  # no usable checkpoint: the config and seed retrain it
        found = retrain_weights(trial, config, data, why=found, on_epoch=on_epoch)
    weights = found
    single = two or limited  # a single trial: an ensemble's cost is its members' together
    choice: Any = (
        (None, None) if single else ensemble.choose(ckpt_dir, study.completed(), data, value_of(trial))
    )
    selection, ens = choice
    if crossfit is None:  # the default: where it was measured to pay
        rows = len(data.y_train) + len(data.y_val)
        crossfit = default_folds(rows) if refit and data.table is not None and not (two or limited) else 0
    if crossfit and (two or data.table is None):
        why = "" if data.table is None else " (a Pareto front is chosen by each model's own cost)"
        raise UserError(f"--crossfit is for a table study with one objective{why}")
    chose_ensemble = ens is not None
    searched, searched_rows = None, len(data.y_train)  # the search's own model, where a refit is exported
    every_row = refit_rows(config, selection, data, with_ensemble=chose_ensemble, trial_number=trial.number,
                           folds=crossfit, on_epoch=on_epoch) if (
        refit and data.table is not None
    ) else None  # fmt: skip
    # The test split is touched once per model, after every choice was made on validation.
    if every_row is not None:
        searched = evaluate_test(ens if ens is not None else weights.model, data,
                                 selection.numeric if ens is not None else config.numeric)  # fmt: skip
        data, weights.model, ens = every_row.data, every_row.single, every_row.ensemble
    single_eval = evaluate_test(weights.model, data, config.numeric)
    ens_numeric = selection.numeric if chose_ensemble and selection is not None else config.numeric
    model, numeric = (ens, ens_numeric) if ens is not None else (weights.model, config.numeric)
    evaluation = single_eval if ens is None else evaluate_test(ens, data, numeric)

    out = Path(out_dir) if out_dir is not None else study_dir(results_dir, name)
    out.mkdir(parents=True, exist_ok=True)
    arch = architecture(config, **shape_of(config, data))
    best = {
        "format": FORMAT,
        "study": name,
        "storage": redacted(study.storage_url),
        "trial_number": trial.number,
        "value": value_of(trial),
        "metric": data.metric,
        "objectives": study.objectives,
        "limits": {"max_params": max_params, "max_latency_ms": max_latency_ms},
        "chosen": chosen,
        "pareto_front": [_front_entry(t) for t in front] if two else None,
        "task": data.task,
        "params": dict(trial.params),
        "config": config.to_dict(),
        "architecture": arch,
        "n_params": count_params(weights.model),
        **data_fields(attrs, data_dir, data),
        "weights": weights.source,
        "weights_note": weights.note,
        "val_score": weights.val_score,
        "test_score": evaluation.score,
        "single_test_score": single_eval.score,
        "refit": None
        if every_row is None or searched is None
        else {
            **every_row.record(searched_rows=searched_rows),
            "searched_model_test_score": searched.score,
        },
        "ensemble": ensemble_record(
            selection, ens if chose_ensemble else None, ckpt_dir, single_eval.score, evaluation.score
        ),
        "trial_user_attrs": dict(trial.user_attrs),
        **study_fields(attrs),
        "provenance": provenance.collect(prog=PROG, argv=argv, device=device),
    }
    write_json(out / BEST_JSON, best)
    save_model(out / MODEL_PT, weights.model)
    atomic_write(out / MODEL_TXT, f"{arch}\n\n{weights.model}\n\n{layer_table(weights.model)}\n")
    header = [
        f"study {name}, trial {trial.number} ({arch}), {weights.source} weights",
        f"validation {data.metric} {value_of(trial):.4f} in the search, {weights.val_score:.4f} here",
    ]
    if chosen:
        header.append(chosen)
    files = [BEST_JSON, MODEL_PT, MODEL_TXT, REPORT_TXT, REPORT_JSON, TRIALS_CSV]
    crossed = every_row is not None and every_row.folds > 0
    lines = ensemble_lines(selection, ens if chose_ensemble else None, data.metric, single_eval.score,
                           evaluation.score, crossfit=crossed)  # fmt: skip
    if every_row is not None and searched is not None:
        how = (f"cross-fitted: {len(every_row.members)} models, {every_row.folds} folds of"
               if every_row.folds else "refit on")  # fmt: skip
        lines.append(
            f"{how} {every_row.rows} rows (training + validation, preprocessing refitted) in "
            f"{every_row.seconds:.0f} s: test {data.metric} {evaluation.score:.4f}; "
            f"the search's own model, on {searched_rows} rows: {searched.score:.4f}"
        )
    if ens is not None and every_row is not None:  # trained here, kept in full precision
        trials, configs = [n for n, _ in every_row.members], [c for _, c in every_row.members]
        files.append(ensemble.save(out / ENSEMBLE_PT, ens, trials, configs, numeric, half=False).name)
    elif ens is not None:
        files.append(ensemble.save_selected(out / ENSEMBLE_PT, selection, ens, half=True).name)
    header += lines
    meta = {
        "study": name,
        "trial_number": trial.number,
        "weights": weights.source,
        "config": config.to_dict(),
        "ensemble": best["ensemble"],
        "provenance": best["provenance"],
    }
    figures: Iterable[Path]
    if data.table is not None:  # the preprocessing travels with the model; a table's pictures
        files.append(Preprocess.of(data, numeric).save(out / PREPROCESS_SKOPS).name)
        (out / PREPROCESS_PKL).unlink(missing_ok=True)  # an older export's pickle: never left to open
        predictor = Predictor(model, Preprocess.of(data, numeric), data.device)
        truth = evaluation.targets if data.task == "regression" else data.y_test.cpu().numpy()
        importance = permutation_importance(predictor, data.table.frames["test"], truth, data.metric)
        meta["permutation_importance"] = importance
        header += ["", "permutation importance (test split):", *importance_lines(importance)]
        figures = write_table_figures(evaluation, importance, out)
    else:
        figures = write_prediction_figures(
            images=data.denormalize(data.x_test), true=evaluation.targets, pred=evaluation.predictions,
            confidence=evaluation.confidences, classes=data.classes, out_dir=out,
        ).values()  # fmt: skip
    write_reports(out, evaluation, header=header, meta=meta)
    write_trials_csv(out / TRIALS_CSV, study.trials, front=[t.number for t in front] if two else None)
    files += [p.name for p in figures]
    # The smaller files: the single trial's model, scored against its own float figure.
    small = smaller.write(out, weights.model, config, data, single_eval, int8=quantize == "int8", half=half,
                          trial=trial.number, ensemble=ens is not None)  # fmt: skip
    if small.record is not None:
        best["smaller"] = small.record
        write_json(out / BEST_JSON, best)
    files += small.files
    if chosen:
        lines.insert(0, chosen)
    return Exported(name, trial, config, weights, evaluation, out, files, lines, small.lines)


# ---------------------------------------------------------------------------- helpers


def _chosen_text(two: bool, max_params: int | None, max_latency_ms: float | None) -> str:
    """How the exported trial was chosen, where it is not simply the best score ("" there)."""
    limits = [f"at most {max_params:,} parameters" if max_params is not None else "",
              f"at most {max_latency_ms:g} ms" if max_latency_ms is not None else ""]  # fmt: skip
    within = " and ".join(x for x in limits if x)
    if not (two or within):
        return ""
    what = "the best validation score on the Pareto front" if two else "the best validation score"
    return (f"{what}{f' among the trials with {within}' if within else ''}; "
            "a single trial, not the ensemble (its cost is its members' together)")  # fmt: skip


def _front_entry(t: FrozenTrial) -> dict[str, Any]:
    """best.json's record of a Pareto-front trial."""
    a = t.user_attrs
    return {"trial_number": t.number, "score": value_of(t), "n_params": a.get(ATTR_PARAMS),
            "latency_ms": a.get(ATTR_LATENCY)}  # fmt: skip


def ensemble_record(selection, ens, results: Path, single_test: float, test: float) -> dict[str, Any] | None:
    """best.json's account of the ensemble: members, weights, validation gain, test figures,
    and the pool's disk use; `exported` says whether it beat the best single trial."""
    if selection is None:
        return None
    kept, outputs = pool.disk_bytes(pool.pool_dir(results))
    return {
        "exported": ens is not None,
        "members": [
            {"trial_number": n, "weight": w, "picks": selection.counts[n]}
            for n, w in selection.weights.items()
        ],
        "steps": ensemble.STEPS,
        "numeric": selection.numeric,
        "val_score": selection.val_score,
        "single_trial": selection.single,
        "single_val_score": selection.single_score,
        "val_gain": selection.gain,
        "test_score": test if ens is not None else None,
        "single_test_score": single_test,
        "pool_weights_bytes": kept,
        "pool_outputs_bytes": outputs,
    }


def ensemble_lines(
    selection, ens, metric: str, single_test: float, test: float, *, crossfit: bool = False
) -> list[str]:  # fmt: skip
    """The selection's summary and what was exported; with `crossfit`, the chosen configs were
    cross-fitted (the line after these says how)."""
    if selection is None:
        return []
    lines = ensemble.summary_lines(selection, metric)
    if ens is None:
        alone = "cross-fitted alone" if crossfit else "exported alone"
        return [*lines, f"it does not beat the best single trial on validation: the trial is {alone}"]
    figures = f"test {metric}: ensemble {test:.4f}, best single trial {single_test:.4f}"
    return [*lines, f"{figures}; exported: the ensemble{', cross-fitted' if crossfit else ''}"]


def data_fields(attrs: dict[str, Any], data_dir: str | None, data: Dataset) -> dict[str, Any]:
    """best.json's record of the data a config trained on: dataset (and table), folder, split,
    budget, classes."""
    keys = (STUDY_DATASET, STUDY_VAL_FRACTION, STUDY_SPLIT_SEED, STUDY_EPOCHS)
    fields = {**{k: attrs[k] for k in keys}, "data_dir": data_dir, "classes": list(data.classes)}
    return {**fields, STUDY_TABLE: attrs.get(STUDY_TABLE)}


def study_fields(attrs: dict[str, Any]) -> dict[str, Any]:
    """best.json's copy of the study's binding: its user attrs and its space."""
    return {
        "study_user_attrs": {k: v for k, v in attrs.items() if k != STUDY_SPACE},
        "space": attrs[STUDY_SPACE],
    }


def check_out_dir(out: Path) -> None:
    """Refuse an output folder that is a file, or lies under one, before anything is read or written."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == out else f"lies under {p}, which is a file"
                raise UserError(f"--out {out}: {what}, not a folder")
            return


def _iso(dt) -> str:
    return dt.isoformat() if dt is not None else ""


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list, tuple)) else value
