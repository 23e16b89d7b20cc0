"""Writing a file so that a crash never leaves half of one.

Every file the project writes for later (checkpoints, a trial's saved state, exports, pages,
pictures, the decoded-image cache) goes through `atomic_write`: the bytes go to a temporary file
in the same folder, are flushed to the disk, and the file is renamed over the old one, so a
reader (or a process killed mid-write) sees the old file or the new one, never a mix. The file
gets the mode a plain `open` would give it (0666 less the umask), so a report or an export is
readable by whoever the user's umask lets read it.

Imports nothing that only POSIX has: `locked` takes its lock through `filelock` (flock on POSIX,
msvcrt on Windows), so every command imports on Windows too.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import filelock

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's umask. Reading it means setting it, so threads take turns."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object] | bytes | str) -> Path:
    """Write `path` atomically: `write` is the bytes or text, or a function given the open
    binary file. The folder is created if missing. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(write, str):
                fh.write(write.encode())
            elif isinstance(write, bytes):
                fh.write(write)
            else:
                write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it 0600, whatever the umask
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def locked(directory: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `directory` (a `.lock` file in it, created with the folder):
    workers that compare and replace files there (several processes, or machines on a shared
    filesystem) take turns."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(directory / ".lock"):
        yield
