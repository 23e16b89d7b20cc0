"""Study definitions: a TOML file names the dataset, the budget, the sampler, the pruner and the space.

    [study]
    dataset = "digits"      # cifar10 | digits | imagefolder
    epochs = 20             # per trial; the pruner may stop a trial sooner
    val_fraction = 0.2      # of the training set, held out to score trials
    split_seed = 0          # fixes that validation split
    sampler = "tpe"         # tpe | random
    pruner = "median"       # median | halving | hyperband | none
    startup_trials = 10     # TPE's random trials before it models the results
    min_epochs = 0          # median: first epoch it judges (0: a fifth); halving, hyperband: first rung
    stack = 1               # trials a worker trains at once as one stacked model (search.run --stack)
    objectives = ["score"]  # or ["score", "params"] | ["score", "latency"]: a Pareto front
    max_params = 100000     # optional hard limits: a config over one is never trained
    max_latency_ms = 2.0    # (search.tuning.costs)
    # dataset = "table" only (search.data.tables):
    train = "data.csv"      # CSV or Parquet; test = "PATH" optional (else a fixed 20% is carved)
    target = "price"        # the column to predict; task = "classification" | "regression" optional
    drop = ["id"]           # columns to leave out; categorical = [...] to one-hot numeric codes
    metric = "r2"           # a scikit-learn scorer name; accuracy and r2 by default

    [space]
    ...                     # see search.tuning.space

    [baseline]              # optional: a full config, enqueued as a new study's trial 0
    hidden = [512, 256]
    ...                     # any search.training.config.TrainConfig field but epochs and seed

    [[start]]               # optional, repeatable: full configs a new study tries next (a
    hidden = [1536, 1086]   # warm start from an earlier study's best), pruned like any trial
    ...
    [[start]]
    objectives = ["score", "params"]  # optional: tried only in a study with these objectives
    hidden = [560, 384]
    ...

`--study NAME` looks for `studies/NAME.toml` in the working directory, then beside the package;
`--study PATH` reads that file. The study's name (and so the Optuna study name) is the file's stem.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from search.data.datasets import DATASETS
from search.data.tables import TableSpec
from search.data.targets import METRICS, TASKS
from search.errors import UserError
from search.training.config import TrainConfig
from search.tuning.space import Param, config_params, parse_space

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "halving", "hyperband", "none")
# What a study optimizes: the validation score (maximized), then at most one cost (minimized).
COSTS = ("params", "latency")  # parameter count; latency of a forward pass (search.tuning.costs)
OBJECTIVES = ("score", *COSTS)
ALLOWED = (("score",), *(("score", c) for c in COSTS))  # the objectives a study may have
MAX_STACK = 1024  # trials per stacked model; the device's memory caps it further at run time
PACKAGE_STUDIES = Path(__file__).resolve().parents[2] / "studies"

# [study] keys, their types and defaults.
STUDY_KEYS: dict[str, tuple[type, Any]] = {
    "dataset": (str, None),
    "epochs": (int, 10),
    "val_fraction": (float, 0.1),
    "split_seed": (int, 0),
    "sampler": (str, "tpe"),
    "pruner": (str, "median"),
    "startup_trials": (int, 10),
    "min_epochs": (int, 0),  # 0: the pruner's own default (a fifth of the epochs for median)
    "stack": (int, 1),
    "ensemble": (int, 16),
    "description": (str, ""),
    "objectives": (list, ["score"]),
    "max_params": (int, None),  # None: no limit
    "max_latency_ms": (float, None),
}
# [study] keys of a table study: what search.data.tables.TableSpec holds.
TABLE_KEYS: dict[str, tuple[type, Any]] = {
    "train": (str, None), "target": (str, None), "test": (str, None), "task": (str, None),
    "metric": (str, None), "drop": (list, []), "categorical": (list, []),
}  # fmt: skip
# knobs a table cannot take
IMAGE_ONLY = {"hflip": False, "tta_hflip": False, "translate": 0, "cutmix": 0.0, "whiten": "none"}


@dataclass(frozen=True)
class StudySpec:
    name: str  # the file's stem; the default Optuna study name
    path: Path  # where it was read from
    dataset: str  # one of search.data.datasets.DATASETS
    epochs: int  # training epochs per trial (the pruner's max resource)
    val_fraction: float  # share of the training split held out for validation
    split_seed: int  # seed of that validation split
    sampler: str  # one of SAMPLERS
    pruner: str  # one of PRUNERS
    space: dict[str, Param] = field(default_factory=dict)
    raw_space: dict[str, Any] = field(default_factory=dict)  # the [space] table as written
    description: str = ""
    startup_trials: int = 10  # TPE's random start-up trials (the baseline counts as one)
    min_epochs: int = 0  # the pruner's first epoch to judge; 0 = its default
    stack: int = 1  # trials trained at once as one stacked model (search.training.fit)
    # Completed trials whose half-precision weights are kept for the export's ensemble
    # (search.tuning.pool): the disk bound is this many copies of the space's largest model.
    ensemble: int = 16
    baseline: TrainConfig | None = None  # the [baseline] table, enqueued as trial 0 of a new study
    start: tuple[TrainConfig, ...] = ()  # the [[start]] tables, enqueued after it
    # Per [[start]] table, the objectives it is tried with; () for every study's.
    start_objectives: tuple[tuple[str, ...], ...] = ()
    table: TableSpec | None = None  # dataset "table": its files, target and columns
    # The score, then at most one cost to minimize; with two, the study is Optuna's
    # multi-objective one and the pruner is search.tuning.pareto's.
    objectives: tuple[str, ...] = ("score",)
    max_params: int | None = None  # hard limits: a config over one is rejected before training
    max_latency_ms: float | None = None

    @property
    def cost(self) -> str | None:
        """The second objective ("params" or "latency"), or None for a single-objective study."""
        return self.objectives[1] if len(self.objectives) > 1 else None

    @property
    def needs_latency(self) -> bool:
        """Whether each trial's latency is measured: it is an objective or a limit."""
        return self.cost == "latency" or self.max_latency_ms is not None

    def baseline_params(self) -> dict[str, Any] | None:
        """The baseline as this space's params (checked when the file is read)."""
        if self.baseline is None:
            return None
        return config_params(self.baseline, self.space, epochs=self.epochs)

    def start_params(self) -> list[dict[str, Any]]:
        """The [[start]] configs for this study's objectives, as this space's params (checked
        when the file is read)."""
        only = self.start_objectives or ((),) * len(self.start)
        return [
            config_params(c, self.space, epochs=self.epochs)
            for c, objectives in zip(self.start, only, strict=True)
            if not objectives or objectives == tuple(self.objectives)
        ]

    def with_overrides(self, **changes: Any) -> StudySpec:
        """Apply command-line overrides (None means "not given"), re-checking them."""
        changes = {k: v for k, v in changes.items() if v is not None}
        spec = replace(self, **changes)
        _check_study_values(spec, where="command line")
        return spec


def find_study_file(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise UserError(f"study file {path} does not exist")
        return path
    candidates = [
        Path("studies") / f"{name_or_path}.toml",
        PACKAGE_STUDIES / f"{name_or_path}.toml",
    ]
    for c in candidates:
        if c.is_file():
            return c
    known = sorted({p.stem for d in (Path("studies"), PACKAGE_STUDIES) for p in d.glob("*.toml")})
    raise UserError(
        f"unknown study {name_or_path!r}: no studies/{name_or_path}.toml; "
        f"known studies: {', '.join(known) or 'none'}"
    )


def load_study(name_or_path: str) -> StudySpec:
    path = find_study_file(name_or_path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: TOML syntax error: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read: {e}") from None
    return parse_study(doc, name=path.stem, path=path)


def parse_study(doc: dict[str, Any], *, name: str, path: Path) -> StudySpec:
    where = str(path)
    unknown = set(doc) - {"study", "space", "baseline", "start"}
    if unknown:
        raise UserError(
            f"{where}: unknown table(s) {sorted(unknown)}; allowed: [study], [space], [baseline], [[start]]"
        )
    table = doc.get("study", {})
    if not isinstance(table, dict):
        raise UserError(f"{where}: [study] must be a table")
    values: dict[str, Any] = {}
    keys = {**STUDY_KEYS, **TABLE_KEYS}
    for key, raw in table.items():
        if key not in keys:
            raise UserError(f"{where}: study.{key}: unknown key; allowed: {', '.join(keys)}")
        typ, _ = keys[key]
        if typ is float and isinstance(raw, int) and not isinstance(raw, bool):
            raw = float(raw)
        if (
            not isinstance(raw, typ)
            or isinstance(raw, bool)
            or isinstance(raw, list)  # typ is list: raw passed the isinstance above
            and not all(isinstance(v, str) for v in raw)
        ):
            raise UserError(f"{where}: study.{key}: expected {typ.__name__} (of column names), got {raw!r}")
        values[key] = raw
    for key, (_, default) in STUDY_KEYS.items():
        values.setdefault(key, default)
    given = {k: values.pop(k) for k in TABLE_KEYS if k in values}
    if given and values["dataset"] != "table":
        raise UserError(f'{where}: study.{sorted(given)[0]} belongs to dataset = "table" studies')
    if given.get("train") is not None and given.get("target") is not None:
        spec_fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
        values["table"] = TableSpec(**spec_fields)
    elif given:
        raise UserError(f"{where}: a table study names both study.train and study.target (or neither)")
    values["objectives"] = tuple(values["objectives"])
    if values["dataset"] is None:
        raise UserError(f"{where}: study.dataset is required; allowed: {', '.join(DATASETS)}")
    raw_space, baseline = doc.get("space", {}), doc.get("baseline")
    spec = StudySpec(
        name=name,
        path=path,
        space=parse_space(raw_space, where=where),
        raw_space=raw_space,
        baseline=None if baseline is None else _parse_config(baseline, where=where, what="[baseline]"),
        **_parse_start(doc.get("start"), where=where),
        **values,
    )
    _check_study_values(spec, where=where)
    return spec


def _parse_start(tables: Any, *, where: str) -> dict[str, Any]:
    """The [[start]] tables: StudySpec's `start` and `start_objectives`."""
    if tables is None:
        return {}
    if not isinstance(tables, list):
        raise UserError(f"{where}: start must be an array of tables ([[start]]), one per config")
    configs, only = [], []
    for i, t in enumerate(tables):
        what = f"[[start]] #{i + 1}"
        objectives = t.get("objectives", ()) if isinstance(t, dict) else ()
        if not isinstance(objectives, (list, tuple)) or objectives and tuple(objectives) not in ALLOWED:
            raise UserError(f"{where}: {what} objectives {objectives!r} are not allowed; allowed: {_ALLOWED}")
        table = {k: v for k, v in t.items() if k != "objectives"} if isinstance(t, dict) else t
        configs.append(_parse_config(table, where=where, what=what))
        only.append(tuple(objectives))
    return {"start": tuple(configs), "start_objectives": tuple(only)}


_ALLOWED = ", ".join(str(list(o)).replace("'", '"') for o in ALLOWED)


def _parse_config(table: Any, *, where: str, what: str) -> TrainConfig:
    """A [baseline] or [[start]] table: a full config but its epochs and seed (the study's)."""
    if not isinstance(table, dict):
        raise UserError(f"{where}: {what} must be a table of config fields")
    fields = set(TrainConfig.__dataclass_fields__) - {"extra", "epochs", "seed"}
    unknown = set(table) - fields
    if unknown:
        raise UserError(
            f"{where}: {what} {sorted(unknown)[0]}: unknown field; allowed: {', '.join(sorted(fields))} "
            "(epochs and seed come from the study)"
        )
    try:
        return TrainConfig.from_dict(table)
    except UserError as e:
        raise UserError(f"{where}: {what}: {e}") from None


def _check_study_values(spec: StudySpec, *, where: str) -> None:
    if spec.dataset not in DATASETS:
        raise UserError(f"{where}: dataset {spec.dataset!r} is unknown; allowed: {', '.join(DATASETS)}")
    if spec.sampler not in SAMPLERS:
        raise UserError(f"{where}: sampler {spec.sampler!r} is unknown; allowed: {', '.join(SAMPLERS)}")
    if spec.pruner not in PRUNERS:
        raise UserError(f"{where}: pruner {spec.pruner!r} is unknown; allowed: {', '.join(PRUNERS)}")
    if spec.epochs < 1:
        raise UserError(f"{where}: epochs must be >= 1, got {spec.epochs}")
    if not 0.0 < spec.val_fraction < 1.0:
        raise UserError(f"{where}: val_fraction must be in (0, 1), got {spec.val_fraction}")
    if spec.startup_trials < 0 or spec.min_epochs < 0 or spec.ensemble < 0:
        raise UserError(f"{where}: startup_trials, min_epochs and ensemble must be >= 0")
    if not 1 <= spec.stack <= MAX_STACK:
        raise UserError(f"{where}: stack must be in [1, {MAX_STACK}], got {spec.stack}")
    if tuple(spec.objectives) not in ALLOWED:
        raise UserError(f"{where}: objectives {list(spec.objectives)} are not allowed; allowed: {_ALLOWED}")
    if spec.max_params is not None and spec.max_params < 1:
        raise UserError(f"{where}: max_params must be >= 1, got {spec.max_params}")
    if spec.max_latency_ms is not None and not 0 < spec.max_latency_ms < math.inf:
        raise UserError(f"{where}: max_latency_ms must be a positive number, got {spec.max_latency_ms}")
    if spec.baseline is not None:
        try:
            spec.baseline_params()
        except UserError as e:
            raise UserError(f"{where}: [baseline] {e}") from None
    for i, config in enumerate(spec.start):
        try:
            config_params(config, spec.space, epochs=spec.epochs)
        except UserError as e:
            raise UserError(f"{where}: [[start]] #{i + 1} {e}") from None
    if spec.dataset == "table":
        for knob, neutral in IMAGE_ONLY.items():
            param = spec.space.get(knob)
            if param is not None and (param.kind != "fixed" or param.value != neutral):
                raise UserError(f"{where}: space.{knob} is for images; a table study leaves it out")
    t = spec.table
    if t is not None and t.task is not None and t.task not in TASKS:
        raise UserError(f"{where}: task {t.task!r} is unknown; allowed: {', '.join(TASKS)}")
    if t is not None and t.metric is not None and not any(t.metric in m for m in METRICS.values()):
        known = sorted({m for ms in METRICS.values() for m in ms})
        raise UserError(f"{where}: metric {t.metric!r} is unknown; allowed: {', '.join(known)}")
