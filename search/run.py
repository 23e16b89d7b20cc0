"""`python -m search.run`: search a study's hyperparameters, resumably, with a progress bar."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import optuna
from tqdm import tqdm

from search.cli import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    ArgumentParser,
    milliseconds,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_main,
)
from search.data.datasets import DATASETS
from search.data.tables import table_spec
from search.data.targets import METRICS, TASKS
from search.errors import UserError
from search.schema import RESULTS_DIR
from search.storage.connect import DEFAULT_HEARTBEAT_S, DEFAULT_STORAGE
from search.tuning.interrupts import Terminated, signals_unwind
from search.tuning.run import bar_events, bar_total, prepare_run
from search.tuning.runner import run_search
from search.tuning.study_file import OBJECTIVES, PRUNERS, SAMPLERS
from search.tuning.summary import format_summary


def objectives_list(text: str) -> tuple[str, ...]:
    """`score,params` -> ("score", "params"); the study file's check says which lists are allowed."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected names from {', '.join(OBJECTIVES)}, comma-separated"
        )
    return names


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m search.run",
        description="Search MLP hyperparameters with Optuna. Rerunning the same command resumes "
        "the study and adds --trials more finished trials.",
    )
    add = p.add_argument
    add(
        "--study",
        metavar="NAME|PATH",
        help="study name (studies/NAME.toml) or a .toml path (default: cifar10; with --data, table)",
    )
    add("--trials", type=positive_int, metavar="N",
        help="finished trials to add (default: 100; with --timeout, as many as fit in it)")  # fmt: skip
    add("--timeout", type=positive_float, metavar="SECONDS",
        help="start no trial after SECONDS; running ones stop after the epoch it passes in")  # fmt: skip
    add("--storage", default=DEFAULT_STORAGE, metavar="URL", help="any Optuna storage URL")
    add("--study-name", metavar="NAME", help="Optuna study name (default: the study file's)")
    add("--data-dir", metavar="DIR", help="dataset directory (default: data/)")
    add("--dataset", choices=DATASETS, help="override the study's dataset")
    add("--epochs", type=positive_int, metavar="N", help="override the epochs per trial")
    add("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    add("--seed", type=non_negative_int, metavar="N", default=0, help="base seed of sampler and trials")
    add("--sampler", choices=SAMPLERS, help="override the study's sampler")
    add("--pruner", choices=PRUNERS, help="override the study's pruner")
    add("--stack", type=positive_int, metavar="K",
        help="train K trials at once per worker as one stacked model (default: the study's, 1); "
        "the device's free memory caps K")  # fmt: skip
    add("--objectives", type=objectives_list, metavar="LIST",
        help="score (one objective), or score,params / score,latency: a Pareto front of the score "
        "and the model's parameter count or latency (default: the study's)")  # fmt: skip
    add("--max-params", type=positive_int, metavar="N",
        help="reject, untrained, each config with more than N parameters (default: the study's)")  # fmt: skip
    add("--max-latency-ms", type=milliseconds, metavar="MS",
        help="reject, untrained, every config whose forward pass of 256 images or 1,000 rows on the "
        "trial's device takes more than MS milliseconds (default: the study's)")  # fmt: skip
    add("--jobs", type=positive_int, metavar="N", default=1, help="worker processes on this machine")
    add("--heartbeat", type=positive_int, metavar="SECONDS", default=DEFAULT_HEARTBEAT_S,
        help="seconds between heartbeats; a dead worker's trial is retried after 2 of them")  # fmt: skip
    add("--results-dir", default=RESULTS_DIR, metavar="DIR", help="where best weights and exports go")
    add("--resume-every", type=non_negative_float, metavar="SECONDS", default=30.0,
        help="save a trial's training state after an epoch once SECONDS have passed since the last "
        "save (0: every epoch), and on Ctrl-C/SIGTERM; a retried trial carries on from it")  # fmt: skip
    add("--no-progress", action="store_true", help="no progress bar (e.g. in logs)")
    t = p.add_argument_group("your own table (CSV or Parquet), searched with the table study")
    t.add_argument("--data", metavar="PATH", help="the training table")
    t.add_argument("--target", metavar="COLUMN", help="the column to predict")
    t.add_argument("--test", metavar="PATH", help="a test table (default: a fixed 20%% of --data)")
    t.add_argument("--task", choices=TASKS, help="default: inferred from the target (see the README)")
    t.add_argument("--metric", choices=sorted({m for ms in METRICS.values() for m in ms}),
                   help="what a trial's value scores (default: accuracy, or r2 for regression)")  # fmt: skip
    t.add_argument("--drop", metavar="COLUMN", action="append", default=[], help="leave a column out")
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    table = None
    if args.data is not None or args.target is not None:
        if args.data is None or args.target is None:
            raise UserError("--data and --target go together: the table and the column to predict")
        table = table_spec(args.data, args.target, test=args.test, task=args.task, metric=args.metric,
                           drop=args.drop)  # fmt: skip
    opts = prepare_run(
        table=table,
        study=args.study, trials=args.trials, timeout=args.timeout, storage=args.storage,
        study_name=args.study_name, data_dir=args.data_dir, dataset=args.dataset, epochs=args.epochs,
        sampler=args.sampler, pruner=args.pruner, stack=args.stack, device=args.device, seed=args.seed,
        objectives=args.objectives, max_params=args.max_params, max_latency_ms=args.max_latency_ms,
        jobs=args.jobs, heartbeat=args.heartbeat, results_dir=args.results_dir,
        resume_every=args.resume_every, progress=not args.no_progress,
    )  # fmt: skip
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our bar and summary say it better
    bar = tqdm(total=bar_total(opts), desc=opts.study_name, unit="trial", disable=args.no_progress or None,
               dynamic_ncols=True)  # fmt: skip
    try:
        with signals_unwind():
            summary = run_search(
                opts, on_event=bar_events(bar, on_failure=lambda m: bar.write(m, file=sys.stderr))
            )
    except KeyboardInterrupt as e:  # interrupted outside a trial (opening the study, say)
        bar.close()
        print("interrupted", file=sys.stderr)
        return EXIT_SIGTERM if isinstance(e, Terminated) else EXIT_SIGINT
    finally:
        bar.close()
    print(format_summary(summary, jobs=args.jobs))
    if summary.interrupted:
        return EXIT_SIGTERM if summary.interrupted == "SIGTERM" else EXIT_SIGINT
    if summary.error:
        print(f"python -m search.run: error: {summary.error}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("python -m search.run", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
