"""`python -m search.bench --predict-speed`: how fast an exported table model predicts, beside
HistGradientBoosting at its defaults fitted on the same training rows.

The model is one a user gets: the table study searched on a target's reference split and exported
(the library calls of `python -m search.run --data --test --target --timeout` and of
`python -m search.export`, in a temp folder), loaded back with `load_predictor`. Each model is
timed on the user's whole path, raw rows in a DataFrame in and predictions out (the search's
`Predictor.predict`, preprocessing included; HistGradientBoosting's `predict` after the text
columns it was fitted on are cast to categories), and beside them the bare network forward
(`predict_logits` on the float64 copy `predict` runs, on rows already preprocessed), in three
modes: `single` (one row at a time, a one-row DataFrame each, as a web service predicts),
`batch` (the test split in batches of BATCH rows) and `all` (the whole test split at once).

Per mode the arms alternate round by round (search.perf.alternate), a pass repeated up to
MIN_ROUND_S; the figures: medians over the rounds of rows/s and of the ratio search/HGB. Each
arm's timed predictions are checked against its untimed ones. Threads are a user's (torch's
default or --threads, OpenMP's default), recorded.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from search.artifacts.evaluation import predict_logits
from search.artifacts.export import export_study
from search.artifacts.predict import Predictor, load_predictor
from search.data.tables import table_spec
from search.errors import UserError
from search.perf.alternate import alternate, quartiles, ratios
from search.perf.peers import scores
from search.perf.table_suite import SHARED_SUITE, load_suite, reference_split, select
from search.schema import BEST_JSON
from search.tuning.run import prepare_run
from search.tuning.runner import run_search

DEFAULT_TARGET = "HI-whi"  # 22,272 rows, numbers and text columns: a mid-size table of the suite
SINGLE_ROWS = 200  # rows predicted one at a time per pass
BATCH = 1_000
MIN_ROUND_S = 0.25  # a pass shorter than this is repeated within its round
MODES = ("single", "batch", "all")
ARMS = ("search", "hgb", "forward")
Arm = tuple[Callable[[Any], Any], list]  # a predict function, and the batches it is timed on


@dataclass(frozen=True)
class Case:
    """A target's reference split: input columns as frames, the target as Series."""

    name: str
    source: str
    target: str
    task: str
    x_train: Any
    x_test: Any
    y_train: Any
    y_test: Any


def load_case(suite: str | Path | None = None, only: Sequence[str] = ()) -> Case:
    """The target `only` names in the suite (default DEFAULT_TARGET, or the suite's first); without
    a suite, where ../shared is not checked out, scikit-learn's bundled breast cancer table."""
    if suite is None and not only and not SHARED_SUITE.is_file():
        from sklearn.datasets import load_breast_cancer
        from sklearn.model_selection import train_test_split

        frame = load_breast_cancer(as_frame=True).frame
        train, test = train_test_split(frame, test_size=0.2, random_state=0, stratify=frame["target"])
        x_train, x_test = (f.drop(columns="target") for f in (train, test))
        return Case("breast_cancer", "sklearn.datasets.load_breast_cancer", "target", "classification",
                    x_train, x_test, train["target"], test["target"])  # fmt: skip
    targets = load_suite(suite)
    if not only:
        only = [DEFAULT_TARGET] if DEFAULT_TARGET in {t.name for t in targets} else [targets[0].name]
    chosen = select(targets, only)
    if len(chosen) != 1:
        raise UserError(f"--predict-speed times one target; --only named {len(chosen)}")
    (t,) = chosen
    _, s = reference_split(t)
    return Case(t.name, str(t.table), t.target, t.task, s.x_train, s.x_test, s.y_train, s.y_test)


def export_model(case: Case, folder: Path, *, budget_s: float | None, trials: int | None = None,
                 epochs: int | None = None) -> Path:  # fmt: skip
    """Search the table study on `case` for `budget_s` seconds (or `trials`), export the best
    model into `folder`: the export's folder."""
    data, test = folder / f"{case.name}.csv", folder / f"{case.name}-test.csv"
    case.x_train.assign(**{case.target: case.y_train}).to_csv(data, index=False)
    case.x_test.assign(**{case.target: case.y_test}).to_csv(test, index=False)
    table = table_spec(str(data), case.target, test=str(test), task=case.task)
    storage, results = f"sqlite:///{folder / 'search.db'}", folder / "results"
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        opts = prepare_run(table=table, trials=trials, timeout=budget_s, epochs=epochs, storage=storage,
                           results_dir=results, device="cpu", progress=False, heartbeat=None)  # fmt: skip
        run_search(opts)
        done = export_study(storage_url=storage, study_name=opts.study_name, out_dir=None,
                            results_dir=results, device=torch.device("cpu"))  # fmt: skip
    finally:
        optuna.logging.set_verbosity(verbosity)
    return done.out_dir


def fit_hgb(case: Case) -> Callable[[Any], np.ndarray]:
    """HistGradientBoosting at its defaults on the training rows; its user path: raw rows in,
    the training frame's text columns cast to categories, predictions out."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    cast = dict.fromkeys(case.x_train.select_dtypes(exclude=["number", "bool"]).columns, "category")
    kind = HistGradientBoostingRegressor if case.task == "regression" else HistGradientBoostingClassifier
    model = kind(categorical_features="from_dtype", random_state=0)
    model.fit(case.x_train.astype(cast), case.y_train)
    return lambda rows: model.predict(rows.astype(cast))


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    close = a.dtype.kind == b.dtype.kind == "f" and a.shape == b.shape and np.allclose(a, b, rtol=1e-9)
    return bool(close or np.array_equal(a, b))


def _passes(predict: Callable[[Any], Any], batches: list, passes: int, last: list) -> float:
    """Seconds for `passes` passes of `predict` over `batches`; the last pass's predictions in `last`."""
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(passes):
            predicted = [predict(b) for b in batches]
        took = time.perf_counter() - start
    last[:] = predicted
    return took


def time_mode(arms: dict[str, Arm], reference: dict[str, Any], *,
              rounds: int, min_round_s: float = MIN_ROUND_S) -> dict[str, Any]:  # fmt: skip
    """The arms (a predict function and its batches each) alternated `rounds` times, a pass repeated
    up to `min_round_s`: per arm its rows a pass, passes, seconds and rows/s per round and their
    median, and whether its timed passes predicted what `reference` (its untimed predictions) holds."""
    out: dict[str, Any] = {}
    variants: list[tuple[str, Callable[[], float]]] = []
    for name, (predict, batches) in arms.items():
        warm = _passes(predict, batches, 1, [])
        passes = max(1, math.ceil(min_round_s / max(warm, 1e-9)))
        out[name] = {"rows": sum(len(b) for b in batches), "passes": passes, "last": []}
        variants.append((name, functools.partial(_passes, predict, batches, passes, out[name]["last"])))
    seconds = alternate(variants, rounds=rounds)
    for name, arm in out.items():
        last = arm.pop("last")
        joined = torch.cat(last).numpy() if isinstance(last[0], torch.Tensor) else np.concatenate(last)
        rates = [arm["rows"] * arm["passes"] / s for s in seconds[name]]
        arm.update(seconds=seconds[name], rates=rates, rows_per_s=statistics.median(rates),
                   same_predictions=_same(joined, reference[name][: arm["rows"]]))  # fmt: skip
    return out


def run_predict_speed(
    *, suite: str | Path | None = None, only: Sequence[str] = (), budget_s: float | None = 60.0,
    trials: int | None = None, epochs: int | None = None, single_rows: int = SINGLE_ROWS,
    rounds: int = 5, case: Case | None = None, progress: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:  # fmt: skip
    case = case or load_case(suite, only)
    progress(f"{case.name}: {case.task}, {len(case.x_train):,} training and {len(case.x_test):,} test rows")
    with tempfile.TemporaryDirectory(prefix="search-predict-speed-") as tmp:
        progress(f"search: the table study (timeout {budget_s} s, trials {trials}), then its export")
        started, threads = time.perf_counter(), torch.get_num_threads()
        folder = export_model(case, Path(tmp), budget_s=budget_s, trials=trials, epochs=epochs)
        export_s = time.perf_counter() - started
        torch.set_num_threads(threads)  # the search set its workers' own: serving gets the user's
        predictor: Predictor = load_predictor(folder)
        best = json.loads((folder / BEST_JSON).read_text())
    progress(f"search's export in {export_s:.0f} s; HistGradientBoosting fitting")
    hgb = fit_hgb(case)
    test = case.x_test
    inputs = predictor.inputs(test).double()
    reference = {"search": predictor.predict(test), "hgb": hgb(test),
                 "forward": predictor.outputs(test).numpy()}  # fmt: skip
    assert predictor.exact is not None  # outputs() made the float64 copy that predict runs
    forward = functools.partial(predict_logits, predictor.exact)
    n, single = len(test), min(single_rows, len(test))
    spans = {"single": [(i, i + 1) for i in range(single)],
             "batch": [(i, min(i + BATCH, n)) for i in range(0, n, BATCH)], "all": [(0, n)]}  # fmt: skip
    modes: dict[str, Any] = {}
    for mode in MODES:
        frames, tensors = [test.iloc[a:b] for a, b in spans[mode]], [inputs[a:b] for a, b in spans[mode]]
        arms: dict[str, Arm] = {"search": (predictor.predict, frames), "hgb": (hgb, frames),
                                "forward": (forward, tensors)}  # fmt: skip
        m = time_mode(arms, reference, rounds=rounds, min_round_s=MIN_ROUND_S)  # read now: tests lower it
        rate = {a: m[a]["rates"] for a in ARMS}
        m["ratio"] = ratios(rate["search"], rate["hgb"])
        m["share"] = ratios(rate["search"], rate["forward"])  # of search's time, the forward's
        first = spans[mode][0]
        m.update(ratio_median=statistics.median(m["ratio"]), ratio_quartiles=quartiles(m["ratio"]),
                 share_median=statistics.median(m["share"]), batch_rows=first[1] - first[0])  # fmt: skip
        modes[mode] = m
        rates = ", ".join(f"{a} {m[a]['rows_per_s']:,.0f}" for a in ARMS)
        progress(f"{mode}: rows/s {rates}; search/hgb {m['ratio_median']:.2f}")
    from threadpoolctl import threadpool_info  # type: ignore[import-untyped]

    openmp = [p for p in threadpool_info() if p.get("user_api") == "openmp"]  # scikit-learn's first
    openmp.sort(key=lambda p: "scikit_learn" not in p.get("filepath", ""))
    model = predictor.model
    return {
        "target": case.name, "source": case.source, "task": case.task, "n_train": len(case.x_train),
        "n_test": n, "rounds": rounds, "budget_s": budget_s, "trials": trials, "export_s": export_s,
        "threads": {"torch": torch.get_num_threads(), "openmp": openmp[0]["num_threads"] if openmp else None},
        "model": {"architecture": best.get("architecture"), "numeric": best["config"].get("numeric"),
                  "n_params": sum(p.numel() for p in model.parameters()), "trial": best.get("trial_number")},
        "score": {"search": scores(case.task, case.y_test, reference["search"])["score"],
                  "hgb": scores(case.task, case.y_test, reference["hgb"])["score"]},
        "modes": modes,
    }  # fmt: skip


def format_predict_speed(r: dict[str, Any]) -> str:
    metric = "R²" if r["task"] == "regression" else "accuracy"
    t = r["threads"]
    lines = [
        f"prediction speed, {r['target']} ({r['task']}, {r['n_train']:,} training and {r['n_test']:,} test "
        f"rows): the search's export ({r['model']['n_params']:,} parameters, test {metric} "
        f"{r['score']['search']:.4f}) against HistGradientBoosting at its defaults ({r['score']['hgb']:.4f})",
        f"rows per second, medians of {r['rounds']} alternated rounds; torch {t['torch']} thread(s), "
        f"OpenMP {t['openmp'] or '-'}; DataFrame in, predictions out (the forward: preprocessed rows in)",
        "",
        f"{'':<26}{'search':>10}{'HGB':>10}{'search/HGB':>16}{'forward':>12}{'of search':>11}",
    ]
    names = {"single": "single rows", "batch": f"batches of {BATCH:,}", "all": "whole test split"}
    for mode in MODES:
        m = r["modes"][mode]
        q1, q3 = m["ratio_quartiles"]
        label = f"{names[mode]} ({m['search']['rows']:,})"
        lines.append(f"{label:<26}{m['search']['rows_per_s']:>10,.0f}{m['hgb']['rows_per_s']:>10,.0f}"
                     f"{m['ratio_median']:>7.2f} ({q1:.2f}-{q3:.2f}){m['forward']['rows_per_s']:>12,.0f}"
                     f"{m['share_median']:>11.1%}")  # fmt: skip
    bad = [f"{mode} {a}" for mode in MODES for a in ARMS if not r["modes"][mode][a]["same_predictions"]]
    if bad:
        lines.append(f"  timed predictions differ from the untimed ones: {', '.join(bad)}")
    return "\n".join(lines)
