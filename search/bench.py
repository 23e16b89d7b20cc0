"""`python -m search.bench`: how fast training runs, and how well the search spends its time.

    python -m search.bench                  the notebook's DataLoader loop against search's fit
    python -m search.bench --suite          the one-call GPU check (bench, then timed searches)
    python -m search.bench --augment        what flips, shifts, one-cycle and label smoothing cost
    python -m search.bench --precision      an epoch under float32 against bf16 autocast
    python -m search.bench --quality        TPE + pruning against random at the same wall time
    python -m search.bench --stack          a search at stack 1, 4, 16 and 64: trials per hour, best
    python -m search.bench --storage-load --storage postgresql://...   16 workers, direct and proxied
    python -m search.bench --tables         the table study against its peers on every suite target
    python -m search.bench --predict-speed  an exported table model's rows/s beside HistGradientBoosting's
    python -m search.bench --portfolio      [[start]] rows for the table study, learned across the suite
    python -m search.bench --every-row      the export's refit against k-fold cross-fitting, same study

Each writes its figures as JSON with --json PATH (search.perf holds the measurements and their flags).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from search.artifacts.provenance import collect
from search.cli import ArgumentParser, non_negative_int, positive_float, positive_int, run_main
from search.device import resolve_device
from search.errors import UserError
from search.perf.bench import KINDS, QUALITY_LIMIT, MeasureRequest, measure, write_json
from search.perf.every_row import DEFAULT_DIR as EVERY_ROW_DIR
from search.perf.images import ARCHIVE
from search.perf.notebook import BenchOptions
from search.perf.portfolio import DEFAULT_DIR as PORTFOLIO_DIR
from search.perf.stack_speed import STACKS
from search.perf.tables import DEFAULT_DIR as TABLES_DIR
from search.training.config import OPTIMIZERS

PROG = "python -m search.bench"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description="Seconds per training epoch: the notebook's DataLoader loop against "
        "search.training.fit.fit, same device, data, model and batch size; or, with one of the "
        "measurement flags below, another measurement.",
    )
    add_arguments(p)
    return p


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
        help="--augment, --precision, --overhead, --stack, --storage-load, --predict-speed: "
        "alternated rounds",
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

    g = p.add_argument_group("--tables: the table study against boosted trees and tabular MLPs")
    g.add_argument(
        "--tables",
        action="store_true",
        help="on each target of the real-tables suite, its reference split: python -m search.run, then "
        "search.export, against HistGradientBoosting, CatBoost, scikit-learn's MLP, RealMLP-TD and TabM-D "
        "at their defaults (pip install -e '.[peers]' for CatBoost and pytabkit)",
    )
    g.add_argument(
        "--tables-suite", metavar="PATH", default=None,
        help="the suite.json to run (default: ../shared/data/tables/suite.json beside the checkout)",
    )  # fmt: skip
    g.add_argument(
        "--only", action="append", metavar="NAME[,NAME...]",
        help="only these targets, as suite.json names them (repeatable; default: every target)",
    )  # fmt: skip
    g.add_argument(
        "--tables-budget", type=positive_float, default=600.0, metavar="SECONDS",
        help="search time per target; each peer is stopped at the same",
    )  # fmt: skip
    g.add_argument(
        "--tables-dir", default=str(TABLES_DIR), metavar="DIR",
        help="finished rows and the peers' cached figures; a rerun keeps what still holds and goes on",
    )  # fmt: skip
    g.add_argument("--rerun-peers", action="store_true", help="fit the peers again, ignoring their cache")
    g.add_argument(
        "--cached-peers", action="store_true",
        help="leave out a peer with no cached figure instead of fitting it (the search rows first; "
        "a later run without this flag fits the rest and keeps the finished search rows)",
    )  # fmt: skip

    g = p.add_argument_group(
        "--portfolio: a warm start learned across the suite's tables (and --only, --tables-suite)"
    )
    g.add_argument(
        "--portfolio",
        action="store_true",
        help="train the table study's baseline, [[start]] rows and random draws from its space on every "
        "suite target; pick greedily the few that do well across them, each target graded by a "
        "portfolio made without it; print them as [[start]] rows",
    )
    g.add_argument(
        "--portfolio-study", default="table", metavar="NAME|PATH", help="the study whose space is drawn"
    )
    g.add_argument("--portfolio-configs", type=positive_int, default=32, metavar="N", help="random draws")
    g.add_argument("--portfolio-size", type=positive_int, default=4, metavar="K", help="at most K configs")
    g.add_argument(
        "--portfolio-rows", type=positive_int, default=None, metavar="N",
        help="train each candidate on at most N of a target's training rows (default: all)",
    )  # fmt: skip
    g.add_argument(
        "--portfolio-dir", default=str(PORTFOLIO_DIR), metavar="DIR",
        help="every finished fit (a rerun trains only what is missing) and portfolio.toml",
    )  # fmt: skip

    g = p.add_argument_group("--every-row: how the exported table model learns from every row (and --only)")
    g.add_argument(
        "--every-row",
        action="store_true",
        help="on each suite target, one search, then two exports of that study: refit once on the "
        "training and validation rows (the default) and --crossfit K; their test figures beside the "
        "search's own model",
    )
    g.add_argument("--every-row-budget", type=positive_float, default=120.0, metavar="SECONDS",
                   help="each target's search timeout")  # fmt: skip
    g.add_argument("--crossfit", type=positive_int, default=5, metavar="K",
                   help="the cross-fitted export's folds (at least 2)")  # fmt: skip
    g.add_argument("--every-row-dir", default=str(EVERY_ROW_DIR), metavar="DIR",
                   help="each target's study and exports, and rows.json (a rerun keeps "
                   "the finished rows)")  # fmt: skip

    g = p.add_argument_group("--predict-speed: how fast an exported table model predicts (and --only)")
    g.add_argument(
        "--predict-speed",
        action="store_true",
        help="search one suite target (--only NAME, default HI-whi; without ../shared scikit-learn's "
        "breast cancer table) and export its model, fit HistGradientBoosting at its defaults on the same "
        "rows, then time both, DataFrame in and predictions out, and the bare network forward: single rows, "
        "batches of 1,000 and the whole test split, alternated --rounds times",
    )
    g.add_argument(
        "--predict-budget", type=positive_float, default=60.0, metavar="SECONDS", help="the search's timeout"
    )
    g.add_argument(
        "--predict-rows", type=positive_int, default=200, metavar="N", help="rows predicted one by one a pass"
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
    if kind == "every-row" and args.crossfit < 2:
        raise UserError(f"--crossfit {args.crossfit}: K folds leave one out each, so K must be at least 2")
    if args.cached_peers and args.rerun_peers:
        raise UserError("--cached-peers uses the peers' cache and --rerun-peers ignores it: pass one")
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
        tables_budget=args.tables_budget, tables_suite=args.tables_suite, tables_only=tuple(args.only or ()),
        tables_dir=args.tables_dir, tables_rerun_peers=args.rerun_peers,
        tables_cached_peers=args.cached_peers,
        predict_budget=args.predict_budget, predict_rows=args.predict_rows,
        portfolio_study=args.portfolio_study, portfolio_configs=args.portfolio_configs,
        portfolio_size=args.portfolio_size, portfolio_rows=args.portfolio_rows,
        portfolio_dir=args.portfolio_dir, every_row_budget=args.every_row_budget, crossfit=args.crossfit,
        every_row_dir=args.every_row_dir,
    )  # fmt: skip


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    request = request_from_args(args)
    # what produced the figures travels with them: the code as the measurement started
    started = collect(prog=PROG, argv=argv, device=resolve_device(args.device)) if args.json else None
    result, table = measure(request, progress=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        result["provenance"] = started
        write_json(result, args.json)
    print(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
