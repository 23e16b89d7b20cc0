"""`python -m search.show data`: look at the data before searching: a grid of training images.

    python -m search.show data --study digits          # -> results/digits/samples.png
    python -m search.show data --dataset cifar10 --data-dir data/cifar10 --n 32

The images are the ones a trial trains on: the study's train split (its val_fraction and
split_seed), de-normalized back to pixels, each captioned with its class name.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from search.artifacts.show import DEFAULT_STUDY, MAX_N, SAMPLES, write_samples
from search.cli import ArgumentParser, non_negative_int, positive_int, run_main
from search.data.datasets import DATASETS
from search.errors import UserError
from search.schema import RESULTS_DIR

PROG = "python -m search.show"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Pictures of a study's data.")
    # parser_class: a usage error inside a subcommand is one line and exit code 2 as well
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=ArgumentParser)
    d = sub.add_parser(
        "data",
        help="write a grid of training images with their class names",
        description="Write a PNG grid of n training images (de-normalized, captioned with class "
        f"names) to RESULTS_DIR/<study>/{SAMPLES} and print its path.",
    )
    which = d.add_mutually_exclusive_group()
    which.add_argument(
        "--study", default=None, metavar="NAME",
        help=f"study name (studies/NAME.toml) or a .toml path (default: {DEFAULT_STUDY})",
    )  # fmt: skip
    which.add_argument(
        "--dataset", choices=DATASETS, default=None, metavar="NAME",
        help=f"a dataset ({', '.join(DATASETS)}) without a study: writes RESULTS_DIR/<dataset>/"
        f"{SAMPLES} (validation split: val_fraction 0.1, split_seed 0)",
    )  # fmt: skip
    d.add_argument("--data-dir", default=None, metavar="DIR", help="dataset directory (default: data/)")
    d.add_argument("--n", type=positive_int, default=16, help=f"images to show (at most {MAX_N})")
    d.add_argument("--seed", type=non_negative_int, default=0, help="which images are drawn")
    d.add_argument("--results-dir", default=RESULTS_DIR, metavar="DIR", help="where <study>/ folders go")
    d.add_argument(
        "--out", default=None, metavar="PATH", help=f"write here instead of RESULTS_DIR/<study>/{SAMPLES}"
    )
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "data":
        path = write_samples(
            study=args.study, dataset=args.dataset, data_dir=args.data_dir, n=args.n, seed=args.seed,
            results_dir=args.results_dir, out=args.out,
        )  # fmt: skip
    else:  # pragma: no cover - argparse rejects unknown commands
        raise UserError(f"unknown command {args.command!r}")
    print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
