"""search.artifacts.provenance: a record of what produced a result, that never stops an export."""

from __future__ import annotations

import subprocess
from datetime import datetime

import torch

import search
from search.artifacts import provenance

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]


def make_repo(path):
    subprocess.run([*GIT, "init", "-q", str(path)], check=True)
    (path / "a.txt").write_text("a")
    subprocess.run([*GIT, "-C", str(path), "add", "a.txt"], check=True)
    subprocess.run([*GIT, "-C", str(path), "commit", "-q", "-m", "a"], check=True)
    head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    return head


def test_git_state_names_the_revision_and_whether_the_tree_is_dirty(tmp_path):
    head = make_repo(tmp_path)
    assert provenance.git_state(tmp_path) == (head, False)
    (tmp_path / "new.py").write_text("x = 1")  # an uncommitted module changes what runs
    assert provenance.git_state(tmp_path) == (head, True)


def test_outside_a_checkout_the_revision_is_unknown(tmp_path):
    """Only the package's own checkout counts, not a repository that happens to enclose it."""
    make_repo(tmp_path)
    (tmp_path / "site-packages").mkdir()
    assert provenance.git_state(tmp_path / "site-packages") == ("unknown", None)


def test_without_git_the_revision_is_unknown(tmp_path, monkeypatch):
    make_repo(tmp_path)

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(provenance.subprocess, "run", no_git)
    assert provenance.git_state(tmp_path) == ("unknown", None)


def test_versions_cover_the_packages_that_change_results():
    versions = provenance.package_versions()
    assert versions["torch"] in (torch.__version__, torch.__version__.split("+")[0])
    assert versions["search"] == search.__version__
    assert set(versions) == {"python", "torch", "optuna", "numpy", "scikit-learn", "search"}


def test_the_command_line_is_quoted_so_it_can_be_retyped():
    cmd = provenance.command_line("python -m search.export", ["--out", "my dir"])
    assert cmd == "python -m search.export --out 'my dir'"


def test_collect_records_device_command_and_time():
    record = provenance.collect(prog="python -m search.train", argv=["--seeds", "2"], device="cpu")
    assert record["device"] == "cpu" and record["command"] == "python -m search.train --seeds 2"
    assert record["git_revision"] and record["git_dirty"] in (True, False, None)
    assert datetime.fromisoformat(record["time"]).tzinfo is not None
