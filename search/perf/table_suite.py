"""The real-tables suite (../shared/data/tables/suite.json) as the table benches read it: its
targets, each target's reference split (`train_test_split(test_size=0.2, random_state=0)`,
stratified for classification, after dropping the target's `drop` columns and the rows with a
missing target), the fingerprints that say when a kept result still holds, a JSON store for
resumable results, and the user's own commands run in a folder."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.errors import UserError
from search.files import atomic_write
from search.perf.peers import Split

SHARED_SUITE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tables" / "suite.json"
SPLIT = "train_test_split(test_size=0.2, random_state=0), stratified for classification"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # search/
CODE_FILES = (PACKAGE_ROOT, PACKAGE_ROOT.parent / "studies" / "table.toml")  # what a search row ran


@dataclass(frozen=True)
class Target:
    """One entry of suite.json."""

    name: str
    table: Path
    target: str
    task: str
    drop: tuple[str, ...] = ()
    reference: dict[str, float] | None = None


def load_suite(path: str | Path | None = None) -> list[Target]:
    """The suite's targets; their tables are paths relative to suite.json's folder."""
    path = Path(path) if path is not None else SHARED_SUITE
    if not path.is_file():
        hint = " (the real tables are not checked out; --tables-suite PATH names another suite)"
        raise UserError(f"--tables reads {path}; it is not there{hint if path == SHARED_SUITE else ''}")
    try:
        entries = json.loads(path.read_text())["targets"]
        return [
            Target(
                e["name"],
                path.parent / e["table"],
                e["target"],
                e["task"],
                tuple(e.get("drop", ())),
                e.get("reference"),
            )  # fmt: skip
            for e in entries
        ]
    except (ValueError, KeyError, TypeError) as e:
        what = "a 'targets' list of name, table, target, task"
        raise UserError(f"{path}: not a suite.json ({what}): {e}") from None


def select(targets: list[Target], only: Sequence[str]) -> list[Target]:
    """The targets `only` names (all when empty), in the suite's order."""
    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in {t.name for t in targets}]
    if unknown:
        known = ", ".join(t.name for t in targets)
        raise UserError(f"--only {', '.join(unknown)}: not in the suite; its targets: {known}")
    return [t for t in targets if not names or t.name in names]


def reference_split(t: Target):
    """(the kept rows split as (train, test) frames with every column, the peers' Split)."""
    from sklearn.model_selection import train_test_split

    from search.data.tables import read_table

    frame = read_table(t.table)
    missing = [c for c in (t.target, *t.drop) if c not in frame.columns]
    if missing:
        raise UserError(f"{t.name}: column(s) {', '.join(missing)} not in {t.table}")
    frame = frame[frame[t.target].notna()].reset_index(drop=True)
    stratify = frame[t.target] if t.task == "classification" else None
    train, test = train_test_split(frame, test_size=0.2, random_state=0, stratify=stratify)
    inputs = [c for c in frame.columns if c != t.target and c not in t.drop]
    split = Split(train[inputs], test[inputs], train[t.target], test[t.target], t.task)
    return (train, test), split


def split_fingerprint(t: Target) -> str:
    """What a result on `t` depends on besides the model: the table's bytes and the target."""
    h = hashlib.sha256(t.table.read_bytes())
    h.update(json.dumps([t.target, t.task, list(t.drop), SPLIT]).encode())
    return h.hexdigest()[:16]


def code_fingerprint(files: Sequence[Path] = CODE_FILES) -> str:
    """A hash of the `search` package's Python files and the table study: the code a search row ran."""
    h = hashlib.sha256()
    for top in files:
        paths = sorted(top.rglob("*.py")) if top.is_dir() else [top] if top.exists() else []
        for p in paths:
            h.update(p.relative_to(top.parent).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def search_command(t: Target, frames, *, budget_s: float, folder: Path) -> list[str]:
    """`python -m search.run`'s arguments (after `-m`) for target `t` searched for `budget_s`,
    its split written into `folder` as two CSVs."""
    train, test = frames
    data, test_file = folder / f"{t.table.stem}.csv", folder / f"{t.table.stem}-test.csv"
    train.to_csv(data, index=False)
    test.to_csv(test_file, index=False)
    drops = [a for c in t.drop for a in ("--drop", c)]
    return ["search.run", "--data", data.name, "--test", test_file.name, "--target", t.target, *drops,
            "--task", t.task, "--timeout", f"{budget_s:g}"]  # fmt: skip


def run_commands(commands: Sequence[list[str]], *, folder: Path, limit_s: float) -> str | None:
    """Each `python -m` command in turn in `folder`, with the default storage's file named; the
    first failure's one line, or None when all ran."""
    quiet = ["--no-progress", "--storage", "sqlite:///search.db"]  # the defaults, but for the file name
    for cmd in commands:
        try:
            done = subprocess.run([sys.executable, "-m", *cmd, *quiet], cwd=folder, capture_output=True,
                                  text=True, timeout=limit_s, check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            return f"{cmd[0]} did not end within {limit_s:.0f} s"
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            return f"{cmd[0]}: {lines[-1] if lines else f'exit code {done.returncode}'}"
    return None


class Store:
    """A JSON file of keyed entries, rewritten atomically on every change."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, Any] = {}
        if path.is_file():
            try:
                self.entries = json.loads(path.read_text())["entries"]
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{path}: not a tables bench file; move it away to start afresh") from None

    def put(self, key: str, value: Any) -> None:
        self.entries[key] = value
        atomic_write(self.path, json.dumps({"entries": self.entries}, indent=1) + "\n")
