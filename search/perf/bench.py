"""Which measurement `python -m search.bench` runs, on which images, and where its figures go.

The flags of every measurement live here beside the measurement they steer, so the command
itself only parses, calls `measure` and prints; `request_from_args` turns the parsed flags into a
`MeasureRequest` and refuses combinations that make no sense.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from search.cli import non_negative_int, positive_float, positive_int
from search.device import resolve_device
from search.errors import UserError
from search.files import atomic_write
from search.perf.augment_cost import format_augment, run_augment_bench
from search.perf.images import ARCHIVE, load_bench_data, prepare_images
from search.perf.notebook import SUITE_BUDGET_S, BenchOptions, format_bench, run_bench
from search.perf.overhead import format_overhead, run_overhead
from search.perf.precision import format_precision, run_precision_bench
from search.perf.quality import format_quality, plot_quality, random_subset, run_quality, shortened
from search.perf.stack_speed import STACKS, format_stack_bench, run_stack_bench
from search.training.config import OPTIMIZERS
from search.tuning.study_file import load_study

KINDS = ("bench", "suite", "augment", "precision", "quality", "overhead", "stack", "storage-load", "tables")
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
    tables_budget: float = 600.0  # seconds of search per table


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Every measurement's flags, a group each: one of --suite, --augment, --overhead, --stack,
    --quality, --storage-load picks the measurement (none: the bench); the first group says what
    the bench and the measurements that train run on."""
    g = p.add_argument_group("the bench (no measurement flag), and what the measurements train on")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    g.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="an image tree DIR/train/<class>/*.jpg (default: CIFAR-10 extracted once from "
        f"{ARCHIVE} into the cache dir)",
    )
    g.add_argument("--batch-size", type=positive_int, metavar="N", default=128, help="training batch size")
    g.add_argument(
        "--epochs",
        type=positive_int,
        metavar="N",
        default=3,
        help="measured epochs per path, after 1 warm-up",
    )
    g.add_argument("--synthetic", action="store_true", help="random CIFAR-shaped PNGs in a temp dir")
    g.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        default=None,
        help=f"only the first N training images (--quality: N at random, {QUALITY_LIMIT:,} by default)",
    )
    g.add_argument(
        "--workers", type=non_negative_int, metavar="N", default=2, help="the notebook DataLoader's workers"
    )
    g.add_argument(
        "--threads", type=positive_int, metavar="N", default=None, help="torch CPU threads (default: torch's)"
    )
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="the model's optimizer")
    g.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate")
    g.add_argument("--momentum", type=float, default=0.9, help="sgd and rmsprop")
    g.add_argument(
        "--rounds",
        type=positive_int,
        metavar="N",
        default=5,
        help="--augment, --precision, --overhead, --stack, --storage-load: alternated rounds",
    )
    g.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")

    g = p.add_argument_group("--suite: the one-call GPU check")
    g.add_argument(
        "--suite",
        action="store_true",
        help="the GPU check: bench at batch 128 and 512, then timed searches (--suite-*)",
    )
    g.add_argument("--suite-study", default="cifar10", metavar="STUDY", help="study the suite searches")
    g.add_argument("--suite-trials", type=positive_int, default=8, metavar="N", help="per search")
    g.add_argument("--suite-epochs", type=positive_int, default=3, metavar="N", help="epochs per trial")
    g.add_argument(
        "--suite-jobs", type=int_list, default="1,4", metavar="N,N,...", help="worker counts, a search each"
    )
    g.add_argument(
        "--suite-stacks", type=int_list, default="1,32", metavar="K,K,...", help="stack sizes (1 worker)"
    )

    g = p.add_argument_group("--augment: what the quality knobs cost per epoch")
    g.add_argument(
        "--augment",
        action="store_true",
        help="time an epoch with flips, shifts, one-cycle and label smoothing against a plain one",
    )

    g = p.add_argument_group("--precision: what bf16 buys an epoch")
    g.add_argument(
        "--precision",
        action="store_true",
        help="time an epoch under float32 and under bf16 autocast, alternated --rounds times "
        "(SEARCH_PRECISION=auto picks bf16 on CUDA and on CPUs with bf16 matmuls)",
    )

    g = p.add_argument_group("--overhead: what the search adds around training")
    g.add_argument(
        "--overhead",
        action="store_true",
        help="digits searches with the batched storage and the trial snapshot each on and off",
    )
    g.add_argument("--overhead-trials", type=positive_int, default=100, metavar="N", help="per search")

    g = p.add_argument_group("--stack: what stacking trials buys a search")
    g.add_argument(
        "--stack",
        action="store_true",
        help="the same search at each --stack-sizes, alternated --rounds times: trials per hour, best value, "
        "the trials' span and training time",
    )
    g.add_argument(
        "--stack-study",
        default="digits",
        metavar="STUDY",
        help="study --stack searches (digits at its own epochs, any other at --suite-epochs)",
    )
    g.add_argument("--stack-trials", type=positive_int, default=96, metavar="N", help="per search")
    g.add_argument(
        "--stack-sizes", type=int_list, default=",".join(map(str, STACKS)), metavar="K,K,...",
        help="stack sizes, a search each",
    )  # fmt: skip

    g = p.add_argument_group("--quality: the search against random sampling at the same wall time")
    g.add_argument(
        "--quality",
        action="store_true",
        help="TPE + pruning against random without pruning, same wall time, over seeds (--quality-*)",
    )
    g.add_argument("--quality-study", default="cifar10", metavar="STUDY", help="study --quality searches")
    g.add_argument(
        "--quality-budget", type=positive_float, default=240.0, metavar="SECONDS", help="per arm and seed"
    )
    g.add_argument("--quality-seeds", type=positive_int, default=3, metavar="N", help="seeds 0..N-1")
    g.add_argument(
        "--quality-epochs",
        type=positive_int,
        default=6,
        metavar="N",
        help="epochs per trial (a shorter budget)",
    )

    g = p.add_argument_group("--storage-load: one PostgreSQL under many workers")
    g.add_argument(
        "--storage-load",
        action="store_true",
        help="storage-only trials from many workers on --storage, directly and through search.serve",
    )
    g.add_argument("--storage", metavar="URL", help="--storage-load: the PostgreSQL database")
    g.add_argument("--load-workers", type=positive_int, default=16, metavar="N", help="--storage-load")
    g.add_argument("--load-trials", type=positive_int, default=320, metavar="N", help="--storage-load")

    g = p.add_argument_group("--tables: the table study against boosted trees and default MLPs")
    g.add_argument(
        "--tables",
        action="store_true",
        help="HistGradientBoosting, scikit-learn's MLP, RealMLP-TD (if pytabkit is installed) and the "
        "table study on the real tables' reference split",
    )
    g.add_argument(
        "--tables-budget", type=positive_float, default=600.0, metavar="SECONDS", help="search time per table"
    )


def int_list(text: str) -> tuple[int, ...]:
    """A comma-separated list of whole numbers, each at least 1 (an argparse type)."""
    values = tuple(positive_int(part) for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} holds no number")
    return values


def request_from_args(args: argparse.Namespace) -> MeasureRequest:
    """The measurement that parsed `add_arguments` flags ask for; a UserError for flags that
    contradict each other (two measurements, --storage-load without --storage, ...)."""
    if args.momentum < 0:
        raise UserError(f"--momentum must be >= 0, got {args.momentum}")
    kinds = [k for k in KINDS[1:] if getattr(args, k.replace("-", "_"))]
    if len(kinds) > 1:
        raise UserError(f"{', '.join(f'--{k}' for k in KINDS[1:])} are separate benches: pass one")
    kind = kinds[0] if kinds else "bench"
    if kind == "storage-load" and not args.storage:
        raise UserError("--storage-load needs --storage postgresql://USER@HOST/DBNAME")
    opts = BenchOptions(
        device=args.device, data_dir=args.data_dir, batch_size=args.batch_size, epochs=args.epochs,
        synthetic=args.synthetic, limit=args.limit, workers=args.workers, optimizer=args.optimizer,
        lr=args.lr, momentum=args.momentum,
    )  # fmt: skip
    return MeasureRequest(
        kind=kind, opts=opts, threads=args.threads, rounds=args.rounds, json_path=args.json,
        suite_study=args.suite_study, suite_trials=args.suite_trials, suite_epochs=args.suite_epochs,
        suite_jobs=args.suite_jobs, suite_stacks=args.suite_stacks, quality_study=args.quality_study,
        quality_budget=args.quality_budget, quality_seeds=args.quality_seeds,
        quality_epochs=args.quality_epochs, overhead_trials=args.overhead_trials,
        stack_study=args.stack_study, stack_trials=args.stack_trials, stack_sizes=args.stack_sizes,
        storage=args.storage, load_workers=args.load_workers, load_trials=args.load_trials,
        tables_budget=args.tables_budget,
    )  # fmt: skip


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

        result = run_storage_load(
            request.storage, workers=request.load_workers, trials=request.load_trials,
            rounds=request.rounds, progress=progress,
        )  # fmt: skip
        return result, format_storage_load(result)
    if request.kind == "tables":  # tables, no images
        from search.perf.tables import format_tables, run_tables_bench

        result = run_tables_bench(budget_s=request.tables_budget, progress=progress)
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
