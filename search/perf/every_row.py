"""`python -m search.bench --every-row`: how the exported table model should learn from every row.

The search chooses on its validation rows; the export then trains the chosen configs again on
the training and validation rows together (search.artifacts.refit). Two ways, measured here on
the same study, so the chosen configs are the same and only the way differs:

    refit      each chosen config trained once on every row (`search.export --crossfit 0`)
    crossfit   each trained K times, each time leaving one fold out, the K models averaged
               (`search.export --crossfit K`, AutoGluon's bagging); K times the training

The export's default picks one of the two by the table's size (search.artifacts.refit's
default_folds), from this measurement.

Per target of the suite (--only), on its reference split (search.perf.table_suite): the user's search
(`python -m search.run ... --timeout BUDGET`) in DIR/<target>/, then the two exports. The refit
export also scores the search's own model, trained on the training rows only, so each row holds
three test figures of one choice: searched, refit, crossfit; each is the test split touched once.
Resumable: DIR/rows.json keeps each finished row (by budget, K, split and code); a target without
one is searched again from an empty folder.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from search.perf import table_suite

DEFAULT_DIR = Path("results") / "bench-every-row"
WAYS = ("searched", "refit", "crossfit")


def _export(folder: Path, name: str) -> dict[str, Any]:
    """An export's test figure, and what its refit did."""
    best = json.loads((folder / name / "best.json").read_text())
    refit = best.get("refit") or {}
    return {"score": best["test_score"], "searched": refit.get("searched_model_test_score"),
            "seconds": refit.get("seconds"), "models": refit.get("models")}  # fmt: skip


def run_target(t: table_suite.Target, *, budget_s: float, folds: int, folder: Path) -> dict[str, Any]:
    """One search of `t` in `folder` (emptied first), its two exports, their test figures."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    frames, _ = table_suite.reference_split(t)
    run = table_suite.search_command(t, frames, budget_s=budget_s, folder=folder)
    started = time.perf_counter()
    exports = [["search.export", "--crossfit", "0", "--out", "refit"],
               ["search.export", "--crossfit", str(folds), "--out", "crossfit"]]  # fmt: skip
    failed = table_suite.run_commands([run, *exports], folder=folder, limit_s=2 * budget_s + 3600)
    if failed is not None:
        return {"failed": failed}
    refit, cross = _export(folder, "refit"), _export(folder, "crossfit")
    return {
        "searched": refit["searched"], "refit": refit["score"], "crossfit": cross["score"],
        "refit_s": refit["seconds"], "crossfit_s": cross["seconds"], "refit_models": refit["models"],
        "crossfit_models": cross["models"], "wall_s": round(time.perf_counter() - started, 1),
        "command": " ".join(["python", "-m", *run]),
    }  # fmt: skip


def run_every_row(
    *, suite: str | Path | None = None, only: Sequence[str] = (), budget_s: float = 120.0, folds: int = 5,
    folder: str | Path = DEFAULT_DIR, progress: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:  # fmt: skip
    """Every selected target's row (kept from `folder` where it is finished), and the summary."""
    suite_path = Path(suite) if suite is not None else table_suite.SHARED_SUITE
    targets = table_suite.select(table_suite.load_suite(suite_path), only)
    folder = Path(folder)
    store = table_suite.Store(folder / "rows.json")
    code = table_suite.code_fingerprint()
    rows = []
    for i, t in enumerate(targets, 1):
        key = {"budget_s": budget_s, "folds": folds, "split": table_suite.split_fingerprint(t), "code": code}
        kept = store.entries.get(t.name)
        if kept is not None and all(kept.get(k) == v for k, v in key.items()) and "failed" not in kept:
            progress(f"[{i}/{len(targets)}] {t.name}: kept from {store.path}")
            rows.append(kept)
            continue
        say = f"[{i}/{len(targets)}] {t.name}:"
        progress(f"{say} search for {budget_s:g} s, then export refit and --crossfit {folds}")
        row = {"name": t.name, "task": t.task, **key, **run_target(t, budget_s=budget_s, folds=folds,
                                                                   folder=folder / t.name)}  # fmt: skip
        progress(f"{say} {_cells(row)}")
        store.put(t.name, row)
        rows.append(row)
    return {"suite": str(suite_path), "budget_s": budget_s, "folds": folds, "dir": str(folder),
            "rows": rows, "summary": summarize(rows)}  # fmt: skip


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """For refit against searched and crossfit against refit, over the rows with both figures:
    the mean difference in points (accuracy or R² x100) and wins-ties-losses at two decimals."""
    out = {}
    for new, old in (("refit", "searched"), ("crossfit", "refit")):
        diffs = [round(100 * r[new], 2) - round(100 * r[old], 2) for r in rows
                 if r.get(new) is not None and r.get(old) is not None]  # fmt: skip
        out[f"{new}_vs_{old}"] = {
            "mean": round(sum(diffs) / len(diffs), 4) if diffs else None,
            "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs),
            "losses": sum(d < 0 for d in diffs), "n": len(diffs),
        }  # fmt: skip
    return out


def _cells(row: dict[str, Any]) -> str:
    if "failed" in row:
        return f"failed: {row['failed']}"
    return "  ".join(f"{w} {100 * row[w]:.2f}" for w in WAYS)


def format_every_row(r: dict[str, Any]) -> str:
    lines = [
        f"every-row bench: {len(r['rows'])} target(s) of {r['suite']}; search {r['budget_s']:g} s a target, "
        f"then refit once and --crossfit {r['folds']} on the same study",
        "test accuracy x100 (classification) or R² x100 (regression)",
        "",
        f"{'target':<26}" + "".join(f"{w:>10}" for w in WAYS) + f"{'refit s':>9}{'cross s':>9}",
    ]
    for row in r["rows"]:
        if "failed" in row:
            lines.append(f"{row['name']:<26}failed: {row['failed']}")
            continue
        cells = "".join(f"{100 * row[w]:>10.2f}" for w in WAYS)
        lines.append(f"{row['name']:<26}{cells}{row['refit_s'] or 0:>9.0f}{row['crossfit_s'] or 0:>9.0f}")
    for name, s in r["summary"].items():
        if s["n"]:
            tally = f"{s['wins']}-{s['ties']}-{s['losses']}"
            lines.append(f"{name.replace('_', ' ')}: mean {s['mean']:+.2f} points, "
                         f"wins-ties-losses {tally} ({s['n']} targets)")  # fmt: skip
    return "\n".join(lines)
