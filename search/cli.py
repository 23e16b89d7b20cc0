"""What every command-line entry point shares: one-line errors, argument types, exit codes.

Only the `main` functions of the command modules print; this module gives them the plumbing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from search.errors import UserError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 2, 130, 143


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


def positive_float(text: str) -> float:
    return _seconds(text, zero_ok=False)


def non_negative_float(text: str) -> float:
    return _seconds(text, zero_ok=True)


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
