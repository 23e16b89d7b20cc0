"""`python -m search.show data`: look at the data before searching: a grid of training images.

    python -m search.show data --study digits          # -> results/digits/samples.png
    python -m search.show data --dataset cifar10 --data-dir data/cifar10 --n 32

The images are the ones a trial trains on: the study's train split (its val_fraction and
split_seed), de-normalized back to pixels, each captioned with its class name.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from search.checkpoint import study_dir
from search.cli import ArgumentParser, non_negative_int, positive_int, run_main
from search.data import DATASETS, load_dataset
from search.errors import UserError
from search.pictures import sample_grid, save_image
from search.study_file import load_study

PROG = "python -m search.show"
MAX_N = 1024  # more cells than this is a poster, not a preview
SAMPLES = "samples.png"
DEFAULT_STUDY = "cifar10"  # as in search.run


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
    d.add_argument("--results-dir", default="results", metavar="DIR", help="where <study>/ folders go")
    d.add_argument(
        "--out", default=None, metavar="PATH", help=f"write here instead of RESULTS_DIR/<study>/{SAMPLES}"
    )
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "data":
        path = show_data(args)
    else:  # pragma: no cover - argparse rejects unknown commands
        raise UserError(f"unknown command {args.command!r}")
    print(path)
    return 0


def show_data(args) -> Path:
    if args.n > MAX_N:
        raise UserError(f"argument --n: {args.n} is too many; at most {MAX_N}")
    if args.dataset is not None:
        name, dataset, val_fraction, split_seed = args.dataset, args.dataset, 0.1, 0
    else:
        spec = load_study(args.study or DEFAULT_STUDY)
        name, dataset = spec.name, spec.dataset
        val_fraction, split_seed = spec.val_fraction, spec.split_seed
    out = Path(args.out) if args.out else study_dir(args.results_dir, name) / SAMPLES
    if out.is_dir():
        out = out / SAMPLES
    if out.suffix.lower() not in Image.registered_extensions():
        raise UserError(f"--out {out}: unknown image file extension; use .png")
    data = load_dataset(
        dataset, data_dir=args.data_dir, device="cpu", val_fraction=val_fraction,
        split_seed=split_seed, progress=True,
    )  # fmt: skip
    picture = sample_grid(data, n=args.n, split="train", seed=args.seed)
    try:
        return save_image(picture, out)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
