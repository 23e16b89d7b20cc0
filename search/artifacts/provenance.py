"""Where a result came from: code revision, package versions, device, command line and time.

Every exported or retrained artefact carries this record, so a number quoted months later can be
traced to the code and the machine that produced it. Collecting it never fails: what cannot be
found is recorded as "unknown" rather than stopping an export that took an hour of training.
"""

from __future__ import annotations

import platform
import shlex
import socket
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from search.device import compute_dtype, describe
from search.version import __version__

UNKNOWN = "unknown"
# Distribution names (as pip knows them) of the packages whose versions change results.
PACKAGES = ("torch", "optuna", "numpy", "scikit-learn", "search")
GIT_TIMEOUT_S = 10  # a hung git (network filesystem, lock) must not hang an export


def source_root() -> Path:
    """The checkout the running `search` package was imported from (its parent folder)."""
    return Path(__file__).resolve().parents[2]  # search/artifacts/provenance.py -> the checkout


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):  # git missing, or it hung
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(root: Path | None = None) -> tuple[str, bool | None]:
    """(revision, dirty) of the checkout at `root`; ("unknown", None) outside a git checkout.

    Only a root that holds `.git` itself counts: an installed package inside some other
    repository (a virtualenv in a project folder) must not report that repository's revision.
    """
    root = source_root() if root is None else Path(root)
    if not (root / ".git").exists():
        return UNKNOWN, None
    head = _git(root, "rev-parse", "HEAD")
    if not head or not head.strip():
        return UNKNOWN, None
    # Untracked files count: a new module that is not yet committed changes what ran.
    status = _git(root, "status", "--porcelain")
    return head.strip(), None if status is None else bool(status.strip())


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = UNKNOWN
    if versions["search"] == UNKNOWN:  # running from a checkout that was never pip-installed
        versions["search"] = __version__
    return versions


def command_line(prog: str, argv: Sequence[str] | None) -> str:
    """The command as a user would retype it; `argv` None means this process's own arguments."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join([prog, *(shlex.quote(a) for a in args)])


def collect(*, prog: str, argv: Sequence[str] | None, device: torch.device | str) -> dict[str, Any]:
    """The provenance record that best.json and the test reports carry."""
    revision, dirty = git_state()
    device = torch.device(device)
    return {
        "git_revision": revision,
        "git_dirty": dirty,
        "versions": package_versions(),
        "device": describe(device),
        "torch_threads": torch.get_num_threads() if device.type == "cpu" else None,
        "precision": str(compute_dtype(device)).removeprefix("torch."),  # what the matmuls ran in
        "command": command_line(prog, argv),
        "cwd": str(Path.cwd()),
        "host": socket.gethostname(),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
