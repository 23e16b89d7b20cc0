"""`python -m search.bench`: how fast training runs, and how well the search spends its time.

    python -m search.bench                  the notebook's DataLoader loop against search's fit
    python -m search.bench --suite          the one-call GPU check (bench, then timed searches)
    python -m search.bench --augment        what flips, shifts, one-cycle and label smoothing cost
    python -m search.bench --quality        TPE + pruning against random at the same wall time
    python -m search.bench --stack          a search at stack 1, 4, 16 and 64: trials per hour, best
    python -m search.bench --storage-load --storage postgresql://...   16 workers, direct and proxied

Each writes its figures as JSON with --json PATH (search.perf holds the measurements).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from search.cli import ArgumentParser, non_negative_int, positive_float, positive_int, run_main
from search.errors import UserError
from search.outputs.provenance import collect
from search.perf.images import ARCHIVE
from search.perf.measure import MeasureRequest, measure, write_json
from search.perf.notebook import BenchOptions
from search.training.config import OPTIMIZERS
from search.training.device import resolve_device

# ---------------------------------------------------------------------------- command line

BENCH_KINDS = ("suite", "augment", "quality", "overhead", "stack", "storage_load")  # one at a time


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m search.bench",
        description="Seconds per training epoch: the notebook's DataLoader loop against "
        "search.training.trainer.fit, same device, data, model and batch size.",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument(
        "--data-dir",
        default=None,
        help="an image tree DIR/train/<class>/*.jpg (default: CIFAR-10 extracted once from "
        f"{ARCHIVE} into the cache dir)",
    )
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--epochs", type=positive_int, default=3, help="measured epochs per path, after 1 warm-up")
    p.add_argument("--synthetic", action="store_true", help="random CIFAR-shaped PNGs in a temp dir")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N training images")
    p.add_argument("--workers", type=non_negative_int, default=2, help="the notebook DataLoader's workers")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--momentum", type=float, default=0.9, help="sgd and rmsprop")
    p.add_argument(
        "--cuda-graphs",
        choices=("auto", "on", "off"),
        default="auto",
        help="(b)'s CUDA graphs; 'on' off CUDA runs their stand-in (for tests)",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    p.add_argument(
        "--suite",
        action="store_true",
        help="the GPU check: bench at batch 128 and 512, then timed searches (--suite-*)",
    )
    p.add_argument("--suite-study", default="cifar10", help="study the suite searches")
    p.add_argument("--suite-trials", type=positive_int, default=8)
    p.add_argument("--suite-epochs", type=positive_int, default=3)
    p.add_argument("--suite-jobs", type=_jobs_list, default=(1, 4), help="comma-separated worker counts")
    p.add_argument(
        "--suite-stacks", type=_jobs_list, default=(1, 32), help="comma-separated stack sizes (1 worker)"
    )
    p.add_argument(
        "--augment",
        action="store_true",
        help="time an epoch with flips, shifts, one-cycle and label smoothing against a plain one",
    )
    p.add_argument("--rounds", type=positive_int, default=5, help="--augment, --overhead: alternated rounds")
    p.add_argument(
        "--overhead",
        action="store_true",
        help="digits searches with the batched storage and the trial snapshot each on and off",
    )
    p.add_argument("--overhead-trials", type=positive_int, default=100, metavar="N", help="per search")
    p.add_argument(
        "--stack",
        action="store_true",
        help="the same search at each --stack-sizes, alternated --rounds times: trials per hour, best value, "
        "the trials' span and training time",
    )
    p.add_argument("--stack-study", default="digits", help="study --stack searches")
    p.add_argument("--stack-trials", type=positive_int, default=96, metavar="N", help="per search")
    p.add_argument("--stack-sizes", type=_jobs_list, default=(1, 4, 16, 64), metavar="K,K,...")
    p.add_argument(
        "--quality",
        action="store_true",
        help="TPE + pruning against random without pruning, same wall time, over seeds (--quality-*)",
    )
    p.add_argument("--quality-study", default="cifar10", help="study --quality searches")
    p.add_argument(
        "--quality-budget", type=positive_float, default=240.0, metavar="SECONDS", help="per arm and seed"
    )
    p.add_argument("--quality-seeds", type=positive_int, default=3, metavar="N")
    p.add_argument(
        "--quality-epochs",
        type=positive_int,
        default=6,
        metavar="N",
        help="epochs per trial (a shorter budget)",
    )
    p.add_argument(
        "--storage-load",
        action="store_true",
        help="storage-only trials from many workers on --storage, directly and through search.serve",
    )
    p.add_argument("--storage", metavar="URL", help="--storage-load: the PostgreSQL database")
    p.add_argument("--load-workers", type=positive_int, default=16, metavar="N", help="--storage-load")
    p.add_argument("--load-trials", type=positive_int, default=320, metavar="N", help="--storage-load")
    return p


def _jobs_list(text: str) -> tuple[int, ...]:
    return tuple(positive_int(part) for part in text.split(",") if part.strip())


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.momentum < 0:
        raise UserError(f"--momentum must be >= 0, got {args.momentum}")
    kinds = [k for k in BENCH_KINDS if getattr(args, k)]
    if len(kinds) > 1:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in BENCH_KINDS)
        raise UserError(f"{flags} are separate benches: pass one")
    kind = kinds[0].replace("_", "-") if kinds else "bench"
    if kind == "storage-load" and not args.storage:
        raise UserError("--storage-load needs --storage postgresql://USER@HOST/DBNAME")
    opts = BenchOptions(
        device=args.device, data_dir=args.data_dir, batch_size=args.batch_size, epochs=args.epochs,
        synthetic=args.synthetic, limit=args.limit, workers=args.workers, optimizer=args.optimizer,
        lr=args.lr, momentum=args.momentum, cuda_graphs=args.cuda_graphs,
    )  # fmt: skip
    request = MeasureRequest(
        kind=kind, opts=opts, threads=args.threads, rounds=args.rounds, json_path=args.json,
        suite_study=args.suite_study, suite_trials=args.suite_trials, suite_epochs=args.suite_epochs,
        suite_jobs=args.suite_jobs, suite_stacks=args.suite_stacks, quality_study=args.quality_study,
        quality_budget=args.quality_budget, quality_seeds=args.quality_seeds,
        quality_epochs=args.quality_epochs,
        overhead_trials=args.overhead_trials, stack_study=args.stack_study,
        stack_trials=args.stack_trials, stack_sizes=args.stack_sizes, storage=args.storage,
        load_workers=args.load_workers, load_trials=args.load_trials,
    )  # fmt: skip
    result, table = measure(request, progress=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:  # what produced the figures travels with them
        result["provenance"] = collect(
            prog="python -m search.bench", argv=argv, device=resolve_device(args.device)
        )
        write_json(result, args.json)
    print(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("python -m search.bench", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
