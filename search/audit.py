"""`python -m search.audit`: re-run pruned trials to the full budget; how often was the pruner wrong?

A fixed-seed random choice of --n pruned trials is retrained with its own params and seed, every
epoch, into the study `<study>-audit` (the original study is only read); results/<study>/audit.json
holds the false-prune counts and the regret (search.posthoc.audit says how each is computed).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from search import cli
from search.posthoc.audit import PROG, audit_study, summary_lines

DESCRIPTION = (
    "Re-run pruned trials to the full epoch budget and count how many the pruner "
    "should have kept (the false-prune rate), into the study <study>-audit."
)


def build_parser() -> cli.ArgumentParser:
    p = cli.study_parser(PROG, DESCRIPTION, results="audit.json goes to RESULTS_DIR/<study>/")
    add = p.add_argument
    add("--n", metavar="N", type=cli.positive_int, default=10, help="pruned trials to re-run")
    add(
        "--seed",
        metavar="N",
        type=cli.non_negative_int,
        default=0,
        help="seed of the random choice of trials",
    )
    cli.add_training_flags(p)
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    device = cli.training_device(args.device)  # the search's thread count: its first epochs again
    storage_url = cli.study_storage(args.storage)
    with cli.progress_bar("auditing", "epoch", hidden=args.no_progress) as bar:
        done = audit_study(
            storage_url=storage_url, study_name=args.study_name, n=args.n, seed=args.seed,
            results_dir=args.results_dir, device=device, data_dir=args.data_dir, argv=argv,
            on_progress=cli.follow(bar, note="description"),
        )  # fmt: skip
    return cli.finish(summary_lines(done), done.files, done.out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_main(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
