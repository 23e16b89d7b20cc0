"""The one exception type that means "the user gave us something we cannot use".

Library code raises ``UserError`` with a message that fits on one line and says what to do;
the command-line entry points print it to stderr without a traceback and exit with code 2.
Anything else that escapes is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: a flag, a study file, a data directory, a storage URL, a config file."""

    exit_code = 2


def first_line(e: BaseException, limit: int = 300) -> str:
    """An exception in one line of at most `limit` characters, for a message or a trial's reason.

    SQLAlchemy wraps a driver's error: its `orig` says what the driver said. The type's name stands
    in for an exception with no message.
    """
    text = str(getattr(e, "orig", None) or e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


def described(e: BaseException, limit: int = 500) -> str:
    """`Type: first line`, for a failed trial's reason or a fallback's warning."""
    return f"{type(e).__name__}: {first_line(e, limit)}"[:limit]
