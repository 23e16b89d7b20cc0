"""`python -m search.certify`: retrain a study's top configs with fresh seeds and certify the winner.

The top --top COMPLETE trials are retrained with --seeds fresh seeds each on the search's own
split, ranked by mean validation accuracy; the winner, chosen on validation alone, is the only
config scored on the test split (search.posthoc.certify says what each file holds).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from search import cli
from search.device import resolve_device, split_cpu_threads
from search.posthoc.certify import PROG, certify_study, table_lines

DESCRIPTION = (
    "Retrain a study's top configs with fresh seeds, rank them by mean validation "
    "accuracy, and score the winner (only) on the test split."
)


def build_parser() -> cli.ArgumentParser:
    p = cli.study_parser(PROG, DESCRIPTION, results="the files go to RESULTS_DIR/<study>/")
    p.add_argument("--top", metavar="K", type=cli.positive_int, default=5, help="the K best complete trials")
    p.add_argument("--seeds", metavar="N", type=cli.positive_int, default=3, help="fresh seeds per config")
    p.add_argument(
        "--jobs", metavar="N", type=cli.positive_int, default=1, help="worker processes for the fits"
    )
    cli.add_training_flags(p)
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    storage_url = cli.study_storage(args.storage)
    threads = split_cpu_threads(args.jobs)  # each of --jobs workers trains on its share of the cores
    with cli.progress_bar("certifying", "fit", hidden=args.no_progress) as bar:
        done = certify_study(
            storage_url=storage_url, study_name=args.study_name, top=args.top, seeds=args.seeds,
            jobs=args.jobs, threads=threads, results_dir=args.results_dir, device=device,
            data_dir=args.data_dir, argv=argv, on_progress=cli.follow(bar),
        )  # fmt: skip
    return cli.finish(table_lines(done.payload), done.files, done.out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_main(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
