"""search.files: atomic writes keep the user's umask, the lock excludes, nothing needs POSIX."""

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from search.files import atomic_write, locked

ROOT = Path(__file__).resolve().parents[1]
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


@posix_only
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_an_atomic_write_gets_the_mode_a_plain_open_would(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        written = atomic_write(tmp_path / "sub" / "report.html", "<p>hi</p>")
        with open(tmp_path / "plain.txt", "w") as fh:  # what the user's own tools would make
            fh.write("x")
    finally:
        os.umask(old)
    assert written.read_text() == "<p>hi</p>"
    assert (written.stat().st_mode & 0o777) == mode == (tmp_path / "plain.txt").stat().st_mode & 0o777


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = atomic_write(tmp_path / "best.json", b"old")

    def boom(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json"]


def _order_under_lock(directory: Path) -> list[str]:
    """Two threads take the folder's lock; the second asks while the first holds it."""
    events: list[str] = []
    first_in = threading.Event()

    def first():
        with locked(directory):
            events.append("first in")
            first_in.set()
            time.sleep(0.3)
            events.append("first out")

    def second():
        first_in.wait()
        with locked(directory):
            events.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return events


def test_the_lock_admits_one_holder_at_a_time(tmp_path):
    assert _order_under_lock(tmp_path / "results") == ["first in", "first out", "second in"]


HIDDEN = ("fcntl", "resource", "termios")


def test_every_module_imports_and_the_lock_works_without_posix_only_modules(tmp_path):
    """What Windows lacks is hidden before anything imports; every module of search must still
    import, and the folder lock must still exclude (filelock's portable lock)."""
    script = textwrap.dedent(
        f"""
        import sys
        for name in {HIDDEN!r}:
            sys.modules[name] = None  # "import fcntl" now raises ImportError
        import importlib, pkgutil, warnings
        from pathlib import Path
        warnings.simplefilter("ignore")
        import search
        failed = []
        for info in pkgutil.walk_packages(search.__path__, "search."):
            try:
                importlib.import_module(info.name)
            except Exception as e:
                failed.append(f"{{info.name}}: {{e!r}}")
        assert not failed, failed
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from test_files import _order_under_lock
        print(_order_under_lock(Path({str(tmp_path / "results")!r})))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "['first in', 'first out', 'second in']"
