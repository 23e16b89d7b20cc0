"""What every command-line entry point shares: one-line errors, argument types, exit codes.

Only the `main` functions of the command modules print; this module gives them the plumbing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import optuna
from tqdm import tqdm

from search.device import resolve_device, split_cpu_threads
from search.errors import UserError
from search.schema import RESULTS_DIR
from search.storage.connect import DEFAULT_STORAGE, check_storage

EXIT_OK, EXIT_ERROR, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 130, 143  # a UserError exits with 2


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows `(default: X)` where there is a default worth showing (not None, not a flag)."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`prog: error: ...`) and exit code 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UserError(message)


def _whole_number(text: str, *, minimum: int, words: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} must be {words}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, minimum=1, words="at least 1")


def non_negative_int(text: str) -> int:
    return _whole_number(text, minimum=0, words="0 or more")


def _seconds(text: str, *, zero_ok: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value >= 0 if zero_ok else value > 0) or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"{text} must be a {'non-negative' if zero_ok else 'positive'} number of seconds"
        )
    return value


def milliseconds(text: str) -> float:
    """A positive, finite number of milliseconds (a latency limit)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of milliseconds")
    return value


def positive_float(text: str) -> float:
    return _seconds(text, zero_ok=False)


def non_negative_float(text: str) -> float:
    return _seconds(text, zero_ok=True)


def study_parser(prog: str, description: str, *, results: str) -> ArgumentParser:
    """The parser of a command that reads a study: --study-name, --storage and --results-dir."""
    p = ArgumentParser(prog=prog, description=description)
    add_study_flags(p, results=results)
    return p


def add_study_flags(p: argparse.ArgumentParser, *, results: str) -> None:
    """--study-name, --storage and --results-dir, as every command that reads a study takes them."""
    p.add_argument("--study-name", metavar="NAME", help="the study (default: the only one in the storage)")
    p.add_argument(
        "--storage", metavar="URL", default=DEFAULT_STORAGE, help="the Optuna storage URL of the search"
    )
    p.add_argument("--results-dir", metavar="DIR", default=RESULTS_DIR, help=results)


def add_training_flags(p: argparse.ArgumentParser) -> None:
    """--device, --data-dir and --no-progress, for every command that trains."""
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--data-dir", metavar="DIR", help="dataset directory (default: the search's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in logs)")


def study_storage(url: str) -> str:
    """The checked storage URL of a command that reads a study; Optuna's own log lines silenced
    (the command's bar and summary say it better)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return check_storage(url)


def training_device(name: str, *, jobs: int = 1):
    """The device to train on; on the CPU, the thread count a search trains with (its float sums,
    so a retrained trial gives the search's own figures), shared by `jobs` workers."""
    device = resolve_device(name)
    if device.type == "cpu":
        split_cpu_threads(jobs)
    return device


def progress_bar(desc: str, unit: str, *, hidden: bool, total: int | None = None):
    """A tqdm bar that hides itself off a terminal (or when asked): `with progress_bar(...) as bar:`."""
    return tqdm(total=total, desc=desc, unit=unit, disable=hidden or None, dynamic_ncols=True)


def follow(bar, *, note: str = "postfix") -> Callable[[int, int, str], None]:
    """An `on_progress(done, total, note)` that moves `bar`, showing the note as its postfix or as
    its description."""
    show = bar.set_postfix_str if note == "postfix" else bar.set_description

    def on_progress(done: int, total: int, text: str) -> None:
        bar.total = total
        show(text, refresh=False)
        bar.update(done - bar.n)

    return on_progress


def finish(lines: Sequence[str], files: Sequence[str], folder) -> int:
    """Print a command's closing lines and what it wrote; the exit code of a command that worked."""
    print("\n".join([*lines, wrote(files, folder)]))
    return EXIT_OK


def wrote(files, folder) -> str:
    """The line a command ends with after writing files: `wrote a, b to DIR`."""
    return f"wrote {', '.join(files)} to {folder}"


def run_main(prog: str, body: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None) -> int:
    """Call `body(argv)`; turn a UserError into one line on stderr and exit code 2."""
    try:
        return body(argv)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
