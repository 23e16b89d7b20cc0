"""`python -m search.bench --portfolio`: a warm start for the table study, learned across tables.

A zero-shot portfolio as TabRepo (arXiv 2311.02971) and AutoGluon build theirs. The candidates
are the table study's `[baseline]`, its `[[start]]` rows and `configs` draws from its space
(Optuna's RandomSampler, seeded; floats rounded to 3 significant digits so the rows read well
in a study file). Each candidate trains once on every suite target (its reference split's
training rows, with the study's own validation split carved from them; search.perf.table_suite),
with the study's epochs and the candidate's own fixed seed. That gives a matrix of validation
scores, candidate by target. `rows` caps the rows each fit draws from a target's training split
(a seeded sample; validation is carved from it, the test split stays whole), so that the
matrix fits a CPU's hour; HistGradientBoosting's reference figure is then on more rows.

Targets score on different scales, so each target's scores become a rescaled error (TabRepo's):
(best - score) / (best - median) over that target's candidates, clipped to [0, 1]; a fit that
diverged or failed counts 1. The portfolio is built greedily: start empty, add the candidate
that lowers most the mean over targets of the portfolio's best (smallest) error, stop at `size`
members or when no candidate lowers it. A search tries the portfolio's members first and keeps
what wins on its own validation split, so the mean of the minimum is what the greedy step
minimizes.

Leave one target out: for each target, a portfolio built without it; the member with the best
validation score on it is its pick, and the row reports that pick's test figure beside the
baseline's and HistGradientBoosting's (suite.json). Every fit also scores its model on the test
split; selection reads only validation scores, and a row reads the test figure of the two
configs it reports (the pick and the baseline), so no target grades its own start.

Resumable: matrix.json in `folder` keeps every finished fit, keyed by target, candidate config,
split and the engine's code; a rerun trains only what is missing. portfolio.toml holds the
portfolio built on every target, as `[[start]]` rows to paste into a study file.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from search.errors import UserError
from search.files import atomic_write
from search.perf.table_suite import (
    PACKAGE_ROOT,
    Store,
    Target,
    code_fingerprint,
    load_suite,
    reference_split,
    select,
)
from search.perf.table_suite import split_fingerprint as table_fingerprint
from search.training.config import TrainConfig

DEFAULT_DIR = Path("results") / "bench-portfolio"
ENGINE = (PACKAGE_ROOT / "training", PACKAGE_ROOT / "data")  # what a fit's score depends on
MAX_STACK = 8  # candidates trained at once when they share a stack key


def rounded(value: Any) -> Any:
    """A float to 3 significant digits (a study file's row, not 17 digits of a sampler's draw)."""
    return float(f"{value:.3g}") if isinstance(value, float) else value


def candidates(spec, n: int, *, seed: int = 0) -> list[TrainConfig]:
    """The study's baseline, its [[start]] rows, then `n` rounded draws from its space, each
    with its own training seed; duplicates dropped."""
    import optuna

    from search.tuning.space import config_params, replay_config, sample_config, trial_seed

    fixed = [c for c in (spec.baseline, *spec.start) if c is not None]
    sampler = optuna.samplers.RandomSampler(seed=seed)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=sampler)
    drawn = []
    for _ in range(n):
        trial = study.ask()
        config = sample_config(trial, spec.space, epochs=spec.epochs, seed=0)
        params = {k: rounded(v) for k, v in config_params(config, spec.space, epochs=spec.epochs).items()}
        drawn.append(replay_config(params, spec.space, epochs=spec.epochs, seed=0))
        study.tell(trial, 0.0)
    out: list[TrainConfig] = []
    seen: set[str] = set()
    for config in (*fixed, *drawn):
        key = config_key(config.replace(epochs=spec.epochs, seed=0))
        if key not in seen:
            seen.add(key)
            out.append(config.replace(epochs=spec.epochs, seed=trial_seed(seed, len(out))))
    return out


def config_key(config: TrainConfig) -> str:
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def fit_target(
    t: Target,
    configs: Sequence[TrainConfig],
    spec,
    *,
    device,
    on_done: Callable[[int, dict[str, Any]], None],
    rows: int | None = None,
) -> None:
    """Train `configs` on `t`'s reference training rows (at most `rows` of them, drawn with a
    fixed seed, validation carved from those; the test split whole), those sharing a stack key
    at once; `on_done(index, {val, test, epochs, seconds[, failed]})` as each group ends."""
    from search.artifacts.evaluation import score_split
    from search.data.tables import TableSpec, load_table
    from search.training.fit import fit_stacked
    from search.training.plan import stack_key

    (train, test), _ = reference_split(t)
    if rows is not None and len(train) > rows:
        train = train.sample(n=rows, random_state=0)
    table = TableSpec(train=str(t.table), target=t.target, task=t.task, drop=t.drop)
    data = load_table(table, device=device, val_fraction=spec.val_fraction, split_seed=spec.split_seed,
                      frame=train, test_frame=test)  # fmt: skip
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(stack_key(c), []).append(i)
    chunks = [g[at : at + MAX_STACK] for g in groups.values() for at in range(0, len(g), MAX_STACK)]
    for chunk in chunks:
        started = time.perf_counter()
        try:
            results = fit_stacked([configs[i] for i in chunk], data)
        except (RuntimeError, ValueError) as e:  # one bad group must not sink the matrix
            for i in chunk:
                on_done(i, {"val": None, "test": None, "failed": f"{type(e).__name__}: {e}"})
            continue
        seconds = time.perf_counter() - started
        for i, r in zip(chunk, results, strict=True):
            model = r.model if r.diverged is None and math.isfinite(r.val_score) else None
            ok = model is not None
            test = score_split(model, data, "test", configs[i].numeric) if model is not None else None
            entry = {"val": r.val_score if ok else None, "test": test, "epochs": r.epochs_run,
                     "seconds": seconds / len(chunk)}  # fmt: skip
            on_done(i, entry if ok else {**entry, "failed": r.diverged or "no model"})


def rescaled_errors(scores: Mapping[str, Sequence[float | None]]) -> dict[str, list[float]]:
    """Per target, each candidate's (best - score) / (best - median), clipped to [0, 1]; a
    missing score is 1. Targets where every finite score is equal give 0 to those candidates."""
    out = {}
    for target, row in scores.items():
        finite = [s for s in row if s is not None and math.isfinite(s)]
        if not finite:
            out[target] = [1.0] * len(row)
            continue
        best, median = max(finite), statistics.median(finite)
        spread = best - median
        errors = []
        for s in row:
            if s is None or not math.isfinite(s):
                errors.append(1.0)
            elif spread <= 0:
                errors.append(0.0 if s >= best else 1.0)
            else:
                errors.append(min(1.0, max(0.0, (best - s) / spread)))
        out[target] = errors
    return out


def greedy_portfolio(errors: Mapping[str, Sequence[float]], size: int) -> list[int]:
    """Candidate indices, added one at a time, each the one that lowers most the mean over the
    targets of the portfolio's smallest error (ties: the lower index); stops at `size` or when
    nothing lowers it."""
    if not errors:
        return []
    n = len(next(iter(errors.values())))
    chosen: list[int] = []
    current = math.inf
    while len(chosen) < size:
        best_i, best_loss = None, current
        for i in range(n):
            if i in chosen:
                continue
            loss = statistics.fmean(min(row[j] for j in (*chosen, i)) for row in errors.values())
            if loss < best_loss - 1e-12:
                best_i, best_loss = i, loss
        if best_i is None:
            break
        chosen.append(best_i)
        current = best_loss
    return chosen


def start_rows(configs: Sequence[TrainConfig]) -> str:
    """TOML `[[start]]` tables for a study file: each config's fields that differ from
    TrainConfig's defaults (epochs and seed are the study's)."""
    default = TrainConfig().to_dict()
    lines = []
    for c in configs:
        lines.append("[[start]]")
        for name, value in c.to_dict().items():
            if name in ("epochs", "seed") or (value == default.get(name) and name != "hidden"):
                continue
            lines.append(f"{name} = {_toml(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def run_portfolio(
    *,
    suite: str | Path | None = None,
    only: Sequence[str] = (),
    study: str = "table",
    configs: int = 32,
    size: int = 4,
    seed: int = 0,
    rows: int | None = None,
    folder: str | Path = DEFAULT_DIR,
    device=None,
    progress: Callable[[str], None] = lambda _line: None,
) -> dict[str, Any]:
    """Train the candidates on every target (what matrix.json lacks), build the portfolio on all
    targets and one without each, and return the figures (see the module docstring)."""
    import torch

    from search.tuning.study_file import load_study

    spec = load_study(study)
    if spec.dataset != "table":
        raise UserError(f"--portfolio searches a table study; {spec.path} is a {spec.dataset} study")
    targets = select(load_suite(suite), only)
    if len(targets) < 2:
        raise UserError("--portfolio needs two targets or more: a portfolio made without each grades it")
    device = torch.device("cpu") if device is None else device
    cands = candidates(spec, configs, seed=seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    store = Store(folder / "matrix.json")
    engine = code_fingerprint(ENGINE)
    keys = {}
    for t in targets:
        where = f"{t.name}|{table_fingerprint(t)}|{rows or 'all'}|{engine}"
        keys[t.name] = [f"{where}|{config_key(c)}" for c in cands]
    for t in targets:
        missing = [i for i, k in enumerate(keys[t.name]) if k not in store.entries]
        if missing:
            progress(f"{t.name}: training {len(missing)} of {len(cands)} candidates")
            count = [0]

            def done(j: int, entry: dict[str, Any], name: str = t.name, missing=missing, count=count) -> None:
                store.put(keys[name][missing[j]], entry)
                count[0] += 1
                progress(f"{name}: {count[0]}/{len(missing)} trained")

            fit_target(t, [cands[i] for i in missing], spec, device=device, on_done=done, rows=rows)
    cells = {t.name: [store.entries[k] for k in keys[t.name]] for t in targets}
    result = summarize(targets, cands, cells, size=size, folder=folder, study=str(spec.path))
    return {**result, "rows_cap": rows}


def summarize(
    targets: Sequence[Target],
    cands: Sequence[TrainConfig],
    cells: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    size: int,
    folder: Path | None = None,
    study: str = "",
) -> dict[str, Any]:
    """The portfolio on every target, and each target's leave-one-out row."""
    errors = rescaled_errors({name: [c["val"] for c in row] for name, row in cells.items()})
    chosen = greedy_portfolio(errors, size)
    rows = []
    for t in targets:
        others = {name: e for name, e in errors.items() if name != t.name}
        members = greedy_portfolio(others, size)
        row = cells[t.name]
        pick = max(members, key=lambda i: (row[i]["val"] is not None, row[i]["val"] or 0.0, -i))
        reference = (t.reference or {}).get("hgb_default")
        rows.append({
            "target": t.name, "portfolio": members, "pick": pick,
            "pick_val": row[pick]["val"], "pick_test": row[pick]["test"],
            "baseline_val": row[0]["val"], "baseline_test": row[0]["test"],
            "hgb_test": reference,
        })  # fmt: skip
    toml = start_rows([cands[i] for i in chosen])
    if folder is not None:
        atomic_write(folder / "portfolio.toml", toml)
    return {
        "study": study,
        "candidates": [c.to_dict() for c in cands],
        "portfolio": chosen,
        "portfolio_toml": toml,
        "rows": rows,
        "summary": _gaps(rows),
    }


def _gaps(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | int | None]:
    """Mean test gaps in points (x100): the pick against the baseline and against HGB."""

    def mean_gap(a: str, b: str) -> tuple[float | None, int]:
        pairs = [(r[a], r[b]) for r in rows if r[a] is not None and r[b] is not None]
        wins = sum(x >= y for x, y in pairs)
        return (100 * statistics.fmean(x - y for x, y in pairs) if pairs else None), wins

    vs_base, wins_base = mean_gap("pick_test", "baseline_test")
    vs_hgb, wins_hgb = mean_gap("pick_test", "hgb_test")
    return {"gap_to_baseline": vs_base, "at_or_above_baseline": wins_base,
            "gap_to_hgb": vs_hgb, "at_or_above_hgb": wins_hgb, "targets": len(rows)}  # fmt: skip


def format_portfolio(result: Mapping[str, Any]) -> str:
    """The leave-one-out table (x100), the summary and the portfolio's [[start]] rows."""

    def pts(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}"

    lines = ["target | left-out portfolio's pick (val, test) | baseline (val, test) | HGB test",
             "---|---|---|---"]  # fmt: skip
    for r in result["rows"]:
        lines.append(
            f"{r['target']} | #{r['pick']}: {pts(r['pick_val'])}, {pts(r['pick_test'])} | "
            f"{pts(r['baseline_val'])}, {pts(r['baseline_test'])} | {pts(r['hgb_test'])}"
        )
    s = result["summary"]

    def gap(v: float | None) -> str:
        return "-" if v is None else f"{v:+.2f}"

    cap = result.get("rows_cap")
    lines += [
        "",
        f"each candidate trained on {f'at most {cap:,}' if cap else 'all'} of a target's training rows "
        "(HGB on all of them)",
        f"pick against the baseline: {gap(s['gap_to_baseline'])} points on average, at or above it on "
        f"{s['at_or_above_baseline']} of {s['targets']}",
        f"pick against HistGradientBoosting: {gap(s['gap_to_hgb'])} points, at or above it on "
        f"{s['at_or_above_hgb']} of {s['targets']}",
        "",
        f"portfolio on every target (candidates {', '.join(f'#{i}' for i in result['portfolio'])}):",
        result["portfolio_toml"],
    ]
    return "\n".join(lines)
