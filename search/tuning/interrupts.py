"""Ctrl-C and SIGTERM, delivered as exceptions that unwind through the running trial, and
delivered again if the first was lost.

Python runs a signal handler between bytecodes, wherever the main thread is; when that is a
finalizer (`__del__`, a weakref callback: SQLAlchemy and torch run them during garbage
collection) the exception it raises is printed as "Exception ignored" and dropped, and the
process trains on as if nothing had been asked. So a handler also records the signal, and
`check()`, called where unwinding is safe (between epochs, between trials), raises it again
until an `except` that handles it calls `caught()`.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so Optuna marks the running trial FAIL on its way out."""


_pending: list[type[KeyboardInterrupt]] = []  # received and not yet handled


def _raise(kind: type[KeyboardInterrupt]):
    def handler(signum, frame):
        _pending.append(kind)
        raise kind()

    return handler


@contextlib.contextmanager
def signals_unwind() -> Iterator[None]:
    """Within it, Ctrl-C and SIGTERM both unwind through the running trial (even if SIGINT was
    ignored when we started, as for a background job of a non-interactive shell); the previous
    handlers come back after, for a caller (a notebook, a test) that runs a command in-process."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, _raise(KeyboardInterrupt))
    signal.signal(signal.SIGTERM, _raise(Terminated))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _pending.clear()


def install_worker_handlers() -> None:
    """A worker process of a run: its parent owns Ctrl-C and stops it with SIGTERM, once, so a
    second signal cannot land while the worker records its interrupted trial."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise(Terminated))


def check() -> None:
    """Raise the signal received whose exception no handler has seen (a finalizer dropped it)."""
    if _pending:
        raise _pending[0]()


def caught(e: KeyboardInterrupt) -> str:
    """The signal's name, for the run's summary; the interruption counts as handled."""
    _pending.clear()
    return "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
