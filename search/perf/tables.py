"""`python -m search.bench --tables`: the table study against the models a user would otherwise
pick, on every target of the real-tables suite (../shared/data/tables/suite.json), each on the
suite's reference split: `train_test_split(test_size=0.2, random_state=0)`, stratified for
classification, after dropping the target's `drop` columns and the rows with a missing target.

Per target, the peers (search.perf.peers: HistGradientBoosting, CatBoost, scikit-learn's MLP,
RealMLP-TD, TabM-D) each fit once in a child process stopped at the budget, and the search is the
user's two commands in a fresh folder, on the same split written out as two CSVs:

    python -m search.run --data T.csv --test T-test.csv --target COLUMN [--drop C ...] --task TASK
        --timeout BUDGET
    python -m search.export

its figure the export's test figure. A row per target: each model's test accuracy or R², x100
("points"), and its wall seconds; the summary: the search's wins, ties and losses against each
peer, each model's mean gap to HistGradientBoosting in points, and each model's mean rank.

Resumable, in the results folder (`folder`, default results/bench-tables/):
    rows.json    each finished row, written when it finishes; a rerun keeps a row's search where
                 it ran at the same budget, on the same split and by the same code (a fingerprint
                 of CODE_FILES), and takes its peers from peers.json: rerunning after a kill redoes
                 only what was lost, and after a change to `search` only the search of each row
    peers.json   the peers' results keyed by target, peer and its package's version (and the split's
                 fingerprint; scikit-learn's MLP also by our preprocessing code, which it runs on);
                 one applies at another budget where it would end the same (finished within it, or
                 stopped at a budget at least as long). `rerun_peers` ignores it.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from search.perf import peers as peer_models
from search.perf.peers import PEERS
from search.perf.table_suite import (
    PACKAGE_ROOT,
    SHARED_SUITE,
    SPLIT,
    Store,
    Target,
    code_fingerprint,
    load_suite,
    reference_split,
    run_commands,
    search_command,
    select,
    split_fingerprint,
)

DEFAULT_DIR = Path("results") / "bench-tables"
MODELS = ("search", *PEERS)
# scikit-learn's MLP peer runs on the table study's own preprocessing: its figure is kept only
# while that code is unchanged
PREPROCESSING_FILES = (PACKAGE_ROOT / "data" / "tables.py", PACKAGE_ROOT / "data" / "numeric.py")
OURS = ("sklearn-mlp",)


def run_search(t: Target, frames, *, budget_s: float, folder: Path) -> dict[str, Any]:
    """The user's two commands in `folder`: search for `budget_s`, export, read the test figure."""
    run = search_command(t, frames, budget_s=budget_s, folder=folder)
    limit = 2 * budget_s + 600  # a hung command must not hang the bench
    started = time.perf_counter()
    failed = run_commands([run, ["search.export"]], folder=folder, limit_s=limit)
    if failed is not None:
        return {"failed": failed}
    wall = time.perf_counter() - started
    (report_path,) = (folder / "results").glob("*/test_report.json")
    report = json.loads(report_path.read_text())
    best = json.loads((report_path.parent / "best.json").read_text())
    figures = (
        {"score": report["r2"], "rmse": report["rmse"]}
        if t.task == "regression"
        else {"score": report["test_accuracy"]}
    )
    command = " ".join(["python", "-m", *run])
    more = {
        "n_test": report.get("n_test"),
        "val_score": best.get("value"),
        "architecture": best.get("architecture"),
        "command": command,
    }
    return {**figures, "wall_s": wall, **more}


def cached_peer(entry: dict[str, Any] | None, budget_s: float) -> dict[str, Any] | None:
    """A cached result that this budget would reproduce: finished within it, or stopped at a
    budget at least as long."""
    if entry is None:
        return None
    result = entry["result"]
    if "stopped" in result:
        return result if entry["budget_s"] >= budget_s else None
    return result if result["wall_s"] <= budget_s else None


def run_tables_bench(
    *, suite: str | Path | None = None, only: Sequence[str] = (), budget_s: float = 600.0,
    folder: str | Path = DEFAULT_DIR, rerun_peers: bool = False, peers: Sequence[str] = PEERS,
    cached_peers: bool = False, progress: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:  # fmt: skip
    """Every selected target's row (kept from `folder` where it is finished), and the summary.
    With `cached_peers`, a peer with no cached figure is left out of its row (listed in
    "left_out"), so that the search rows can be measured first and the peers fitted on a later run."""
    suite_path = Path(suite) if suite is not None else SHARED_SUITE
    targets = select(load_suite(suite_path), only)
    folder = Path(folder)
    rows_store, peer_cache = Store(folder / "rows.json"), Store(folder / "peers.json")
    code = code_fingerprint()
    rows: list[dict[str, Any]] = []
    for i, t in enumerate(targets, 1):
        say = lambda line, t=t, i=i: progress(f"[{i}/{len(targets)}] {t.name}: {line}")  # noqa: E731
        fingerprint = split_fingerprint(t)
        kept: dict[str, Any] = rows_store.entries.get(t.name) or {}
        same = (kept.get("code"), kept.get("split"), kept.get("budget_s")) == (code, fingerprint, budget_s)
        kept_search = kept["models"].get("search") if same else None  # a failed search runs again
        if kept_search is not None and "score" not in kept_search:
            kept_search = None
        frames, split = reference_split(t)
        say(f"{t.task}, {len(split.y_train):,} training and {len(split.y_test):,} test rows")
        row: dict[str, Any] = {
            "name": t.name, "table": t.table.name, "target": t.target, "task": t.task, "drop": list(t.drop),
            "n_train": len(split.y_train), "n_test": len(split.y_test), "budget_s": budget_s,
            "code": code, "split": fingerprint, "reference": t.reference, "models": {},
        }  # fmt: skip
        for peer in peers:
            version = peer_models.package_version(peer)
            key = f"{t.name}|{peer}|{version}|{fingerprint}"
            if peer in OURS:
                key += f"|{code_fingerprint(PREPROCESSING_FILES)}"
            result = None if rerun_peers else cached_peer(peer_cache.entries.get(key), budget_s)
            if result is not None:
                say(f"{peer} {_cell(result)} (cached, {_package(peer, version)})")
            elif cached_peers:
                say(f"{peer} left out: no cached figure")
                row.setdefault("left_out", []).append(peer)
                continue
            else:
                say(f"{peer} fitting (stopped at {budget_s:g} s)")
                result = peer_models.run_peer(peer, split, budget_s=budget_s)
                say(f"{peer} {_cell(result)}")
                if "score" in result or "stopped" in result:  # a failure is tried again next time
                    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
                    peer_cache.put(
                        key, {"budget_s": budget_s, "version": version, "result": result, "measured": when}
                    )
            row["models"][peer] = {**result, "version": version}
        if kept_search is not None:
            say(f"search {_cell(kept_search)} (finished before, kept)")
            row["models"]["search"] = kept_search
        else:
            changed = [w for w, k, v in (("code", "code", code), ("budget", "budget_s", budget_s),
                                         ("table", "split", fingerprint)) if kept.get(k) != v]  # fmt: skip
            why = f" (its row's {', '.join(changed)} changed)" if changed else " (it failed)"
            why = why if kept else ""
            say(f"search{why}: python -m search.run ... --timeout {budget_s:g}, then python -m search.export")
            with tempfile.TemporaryDirectory(prefix="search-tables-") as tmp:
                row["models"]["search"] = run_search(t, frames, budget_s=budget_s, folder=Path(tmp))
            say(f"search {_cell(row['models']['search'])}")
        rows_store.put(t.name, row)
        rows.append(row)
    models = [m for m in MODELS if m == "search" or m in peers]
    return {
        "suite": str(suite_path), "split": SPLIT, "budget_s": budget_s, "tables_dir": str(folder),
        "code": code, "models": models, "rows": rows, "summary": summarize(rows, models),
    }  # fmt: skip


def _package(peer: str, version: str | None) -> str:
    return f"{peer_models.PACKAGE[peer][0]} {version}"


def points(result: dict[str, Any] | None) -> float | None:
    """A result's figure as the table shows it: accuracy or R² x100, two decimals; None without one."""
    if not result or "score" not in result:
        return None
    return round(100 * result["score"], 2)


def took_part(result: dict[str, Any] | None) -> bool:
    """Whether a model was tried on a row (a stopped or failed one was; an absent package not)."""
    return result is not None and bool(result) and "not_installed" not in result


def summarize(rows: Sequence[dict[str, Any]], models: Sequence[str]) -> dict[str, Any]:
    """On the figures as shown (points, two decimals):
    wins   per peer, the search's wins, ties and losses: a model tried that gave no figure
           (stopped, failed) loses to one that gave one; rows where either was not tried, or
           neither gave a figure, do not count
    gap    per model, the mean of (model - hgb) in points over the rows where both gave a figure
    rank   per model, the mean over the rows it was tried on of its rank among the models tried
           there (1 best; tied figures share the mean of their places; the models that gave no
           figure share the last places)"""
    wins: dict[str, dict[str, int]] = {}
    for peer in models:
        if peer == "search":
            continue
        tally = {"wins": 0, "ties": 0, "losses": 0}
        for row in rows:
            s, p = row["models"].get("search"), row["models"].get(peer)
            if not (took_part(s) and took_part(p)) or (points(s) is None and points(p) is None):
                continue
            a, b = points(s), points(p)
            outcome = "ties" if a == b else "wins" if b is None or (a is not None and a > b) else "losses"
            tally[outcome] += 1
        wins[peer] = tally
    gap: dict[str, dict[str, Any]] = {}
    for m in models:
        pairs = [(points(r["models"].get(m)), points(r["models"].get("hgb"))) for r in rows]
        diffs = [a - b for a, b in pairs if a is not None and b is not None]
        gap[m] = {"mean": round(sum(diffs) / len(diffs), 4) if diffs else None, "n": len(diffs)}
    ranks: dict[str, list[float]] = {m: [] for m in models}
    for row in rows:
        tried = [m for m in models if took_part(row["models"].get(m))]
        for m, r in _ranks({m: points(row["models"].get(m)) for m in tried}).items():
            ranks[m].append(r)
    rank = {m: {"mean": round(sum(v) / len(v), 4) if v else None, "n": len(v)} for m, v in ranks.items()}
    return {"wins": wins, "gap_to_hgb": gap, "mean_rank": rank}


def _ranks(figures: dict[str, float | None]) -> dict[str, float]:
    """1 for the highest figure; ties share the mean of their places; None share the last ones."""
    order = sorted(figures, key=lambda m: (figures[m] is None, -(figures[m] or 0.0)))
    out: dict[str, float] = {}
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and figures[order[end + 1]] == figures[order[start]]:
            end += 1
        for m in order[start : end + 1]:
            out[m] = (start + end) / 2 + 1
        start = end + 1
    return out


def _cell(result: dict[str, Any] | None) -> str:
    if not result:
        return "-"
    if "stopped" in result:
        return f"stopped {result['stopped']:g}s"
    if "not_installed" in result:
        return "not installed"
    if "failed" in result:
        return "failed"
    return f"{points(result):.2f} {result['wall_s']:.0f}s"


def format_tables(r: dict[str, Any]) -> str:
    models = r["models"]
    lines = [
        f"tables bench: {len(r['rows'])} target(s) of {r['suite']}, split {r['split']}; "
        f"search budget {r['budget_s']:g} s a target, each peer stopped at the same",
        "each model: test accuracy x100 (classification) or R² x100 (regression), then wall seconds",
        "",
        f"{'target':<26}{'task':<7}" + "".join(f"{m:>16}" for m in models),
    ]
    for row in r["rows"]:
        task = "class" if row["task"] == "classification" else "regr"
        cells = "".join(f"{_cell(row['models'].get(m)):>16}" for m in models)
        lines.append(f"{row['name']:<26}{task:<7}{cells}")
    notes = sorted({f"{m}: {row['models'][m]['not_installed']}" for row in r["rows"] for m in models
                    if "not_installed" in row["models"].get(m, {})})  # fmt: skip
    failed = [f"{row['name']} {m}: {row['models'][m]['failed']}" for row in r["rows"] for m in models
              if "failed" in row["models"].get(m, {})]  # fmt: skip
    left = [f"{row['name']} {', '.join(row['left_out'])}" for row in r["rows"] if row.get("left_out")]
    lines += [f"  not installed, {n}" for n in notes] + [f"  failed, {f}" for f in failed]
    lines += [f"  left out (no cached figure, --cached-peers), {x}" for x in left]
    s = r["summary"]
    if r["rows"]:
        wins = ", ".join(f"{p} {w['wins']}-{w['ties']}-{w['losses']}" for p, w in s["wins"].items())
        gap = ", ".join(
            f"{m} {g['mean']:+.2f} ({g['n']})" for m, g in s["gap_to_hgb"].items() if m != "hgb" and g["n"]
        )
        rank = ", ".join(f"{m} {k['mean']:.2f}" for m, k in s["mean_rank"].items() if k["n"])
        lines += [
            "",
            f"search against each peer, wins-ties-losses: {wins}",
            f"mean gap to HistGradientBoosting, points (targets): {gap or '-'}",
            f"mean rank (1 best, ties share): {rank}",
        ]
    return "\n".join(lines)
