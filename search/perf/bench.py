"""Which measurement `python -m search.bench` runs, on which images, and where its figures go.

The command (search/bench.py) parses its flags into a `MeasureRequest`; `measure` runs it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from search.device import resolve_device
from search.errors import UserError
from search.files import atomic_write
from search.perf.augment_cost import format_augment, run_augment_bench
from search.perf.images import load_bench_data, prepare_images
from search.perf.notebook import SUITE_BUDGET_S, BenchOptions, format_bench, run_bench
from search.perf.overhead import format_overhead, run_overhead
from search.perf.precision import format_precision, run_precision_bench
from search.perf.quality import format_quality, plot_quality, random_subset, run_quality, shortened
from search.perf.stack_speed import STACKS, format_stack_bench, run_stack_bench
from search.tuning.study_file import load_study

KINDS = (
    "bench",
    "suite",
    "augment",
    "precision",
    "quality",
    "overhead",
    "stack",
    "storage-load",
    "tables",
    "predict-speed",
    "portfolio",
    "every-row",
)
QUALITY_LIMIT = 10_000  # --quality's default training images: 3 seeds x 2 arms fit a CPU half-hour


@dataclass(frozen=True)
class MeasureRequest:
    kind: str  # one of KINDS
    opts: BenchOptions
    threads: int | None = None  # torch CPU threads; None keeps torch's
    rounds: int = 5  # augment: alternated rounds
    json_path: str | None = None  # quality: its plot goes beside it, as .png
    suite_study: str = "cifar10"
    suite_trials: int = 8
    suite_epochs: int = 3
    suite_jobs: tuple[int, ...] = (1, 4)
    suite_stacks: tuple[int, ...] = (1, 32)
    quality_study: str = "cifar10"
    quality_budget: float = 240.0  # seconds per arm and seed
    quality_seeds: int = 3
    quality_epochs: int = 6
    overhead_trials: int = 100  # per run of the digits search
    stack_study: str = "digits"
    stack_trials: int = 96
    stack_sizes: tuple[int, ...] = STACKS
    storage: str | None = None  # storage-load: the database
    load_workers: int = 16
    load_trials: int = 320
    tables_budget: float = 600.0  # seconds of search per target; each peer is stopped at the same
    tables_suite: str | None = None  # a suite.json; None: ../shared/data/tables/suite.json
    tables_only: tuple[str, ...] = ()  # target names (or comma lists of them); () every target
    tables_dir: str = "results/bench-tables"  # finished rows and the peers' cache
    tables_rerun_peers: bool = False  # ignore the peers' cache
    tables_cached_peers: bool = False  # leave out a peer with no cached figure instead of fitting it
    predict_budget: float = 60.0  # predict-speed: the search's timeout
    predict_rows: int = 200  # predict-speed: rows predicted one at a time a pass
    portfolio_study: str = "table"  # the study whose baseline, [[start]] rows and space give candidates
    portfolio_configs: int = 32  # random draws from its space
    portfolio_size: int = 4  # the portfolio's most members
    portfolio_rows: int | None = None  # training rows a candidate draws from a target; None: all
    portfolio_dir: str = "results/bench-portfolio"  # every finished fit, and portfolio.toml
    every_row_budget: float = 120.0  # every-row: seconds of search per target
    crossfit: int = 5  # every-row: the cross-fitted export's folds
    every_row_dir: str = "results/bench-every-row"  # every-row: the studies and rows.json


def measure(request: MeasureRequest, *, progress: Callable[[str], None]) -> tuple[dict[str, Any], str]:
    """Run one measurement: (its figures as a JSON-ready dict, a table to print)."""
    started = time.perf_counter()
    if request.kind not in KINDS:
        raise UserError(f"unknown measurement {request.kind!r}; allowed: {', '.join(KINDS)}")
    if request.threads:
        torch.set_num_threads(request.threads)
    opts = request.opts
    resolve_device(opts.device)  # a bad --device fails before any work
    if request.kind == "storage-load":  # no training, no device
        from search.perf.storage_load import format_storage_load, run_storage_load

        assert request.storage is not None  # search.bench refuses --storage-load without --storage
        result = run_storage_load(
            request.storage, workers=request.load_workers, trials=request.load_trials,
            rounds=request.rounds, progress=progress,
        )  # fmt: skip
        return result, format_storage_load(result)
    if request.kind == "portfolio":  # tables, no images
        from search.perf.portfolio import format_portfolio, run_portfolio

        result = run_portfolio(
            suite=request.tables_suite, only=request.tables_only, study=request.portfolio_study,
            configs=request.portfolio_configs, size=request.portfolio_size, rows=request.portfolio_rows,
            folder=request.portfolio_dir,
            device=resolve_device(request.opts.device), progress=progress,
        )  # fmt: skip
        return result, format_portfolio(result)
    if request.kind == "every-row":  # tables, no images
        from search.perf.every_row import format_every_row, run_every_row

        result = run_every_row(
            suite=request.tables_suite, only=request.tables_only, budget_s=request.every_row_budget,
            folds=request.crossfit, folder=request.every_row_dir, progress=progress,
        )  # fmt: skip
        return result, format_every_row(result)
    if request.kind == "predict-speed":  # a table, no images
        from search.perf.predict_speed import format_predict_speed, run_predict_speed

        result = run_predict_speed(
            suite=request.tables_suite, only=request.tables_only, budget_s=request.predict_budget,
            single_rows=request.predict_rows, rounds=request.rounds, progress=progress,
        )  # fmt: skip
        return result, format_predict_speed(result)
    if request.kind == "tables":  # tables, no images
        from search.perf.tables import format_tables, run_tables_bench

        result = run_tables_bench(
            suite=request.tables_suite, only=request.tables_only, budget_s=request.tables_budget,
            folder=request.tables_dir, rerun_peers=request.tables_rerun_peers,
            cached_peers=request.tables_cached_peers, progress=progress,
        )  # fmt: skip
        return result, format_tables(result)
    if request.kind == "overhead":  # digits searches in child processes: no images to prepare
        result = run_overhead(trials=request.overhead_trials, rounds=request.rounds, progress=progress)
        return result, format_overhead(result)
    if request.kind == "stack" and request.stack_study == "digits":  # no images to prepare
        result = _stack_bench(request, None, progress)
        return result, format_stack_bench(result)
    spec = None
    if request.kind == "quality":  # a bad study fails before any images are prepared
        spec = shortened(load_study(request.quality_study), request.quality_epochs)
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # its progress lines say it better
        if opts.limit is None:
            opts = dataclasses.replace(opts, limit=QUALITY_LIMIT)
    with prepare_images(
        synthetic=opts.synthetic, data_dir=opts.data_dir, limit=opts.limit, seed=opts.seed, progress=progress
    ) as images:
        if request.kind == "stack":
            result = _stack_bench(request, images, progress)
            return result, format_stack_bench(result)
        if request.kind == "augment":
            data = load_bench_data(images, resolve_device(opts.device), opts.limit)
            result = run_augment_bench(opts.config(), data, rounds=request.rounds, progress=progress)
            return result, format_augment(result)
        if request.kind == "precision":
            data = load_bench_data(images, resolve_device(opts.device), opts.limit)
            result = run_precision_bench(opts.config(), data, rounds=request.rounds, progress=progress)
            return result, format_precision(result)
        if request.kind == "quality":  # a random subset: the first rows of a tree hold few classes
            data = random_subset(load_bench_data(images, resolve_device(opts.device), None), opts.limit)
            seeds = tuple(range(request.quality_seeds))
            assert spec is not None  # loaded above, before the images
            result = run_quality(spec, data, budget_s=request.quality_budget, seeds=seeds, progress=progress)
            if request.json_path:
                result["plot"] = str(plot_quality(result, Path(request.json_path).with_suffix(".png")))
            return result, format_quality(result)
        if request.kind == "suite":
            from search.perf.suite import format_suite, run_suite

            result = run_suite(
                opts, images, progress, study=request.suite_study, trials=request.suite_trials,
                study_epochs=request.suite_epochs, jobs=request.suite_jobs, stacks=request.suite_stacks,
                budget_s=SUITE_BUDGET_S - (time.perf_counter() - started),
            )  # fmt: skip
            return result, format_suite(result)
        result = run_bench(opts, images, progress)
        return result, format_bench(result)


def _stack_bench(request: MeasureRequest, images, progress) -> dict[str, Any]:
    spec = load_study(request.stack_study)  # a bad study name fails before any search runs
    epochs = request.suite_epochs if request.stack_study != "digits" else spec.epochs
    return run_stack_bench(
        study=request.stack_study, trials=request.stack_trials, epochs=epochs,
        device=str(resolve_device(request.opts.device)), stacks=request.stack_sizes,
        rounds=request.rounds, images=images, progress=progress,
    )  # fmt: skip


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    try:
        atomic_write(path, json.dumps(result, indent=2) + "\n")
    except OSError as e:
        raise UserError(f"--json {path}: cannot write: {e.strerror or e}") from None
    return path
