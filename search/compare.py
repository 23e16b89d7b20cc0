"""`python -m search.compare`: every study in a storage, side by side, as one plain-text table
(search.pages.compare builds it)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import optuna

from search.cli import ArgumentParser, run_main
from search.pages.compare import compare_studies, format_table
from search.storage.connect import DEFAULT_STORAGE


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m search.compare",
        description="Compare every study in a storage: trials by state, best value, time spent.",
    )
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="any Optuna storage URL")
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rows = compare_studies(args.storage)
    print(format_table(rows) if rows else f"no studies in {args.storage}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("python -m search.compare", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
