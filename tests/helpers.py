"""Small helpers shared by the test modules (pytest puts this folder on sys.path)."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest
import torch


def run_args(folder: Path, *extra: str, epochs: str = "1", db: Path | None = None) -> list[str]:
    """`python -m search.run` arguments for a quick digits search on the CPU inside `folder`."""
    db = db or folder / "s.db"
    return ["--study", "digits", "--epochs", epochs, "--device", "cpu", "--no-progress",
            "--storage", f"sqlite:///{db}", "--results-dir", str(folder / "results"), *extra]  # fmt: skip


@contextlib.contextmanager
def one_torch_thread(module: str):
    """One torch thread for the search and the CLIs alike: tiny MLPs train faster on a busy
    machine, and reproduction checks compare runs made with the same thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(f"{module}.split_cpu_threads", lambda jobs: 1)
        yield
    torch.set_num_threads(threads)


TEST_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"  # as a user types it


def postgres_or_skip() -> str:
    """The test database's URL with the installed driver, or a skip that says why there is none."""
    import sqlalchemy

    from search.storage.connect import normalize_url

    url = normalize_url(TEST_POSTGRES)
    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as e:  # no driver, no server
        pytest.skip(f"no PostgreSQL answers at 127.0.0.1:5432/test: {type(e).__name__}")
    return url


def as_float64(data):
    """A Dataset with float64 inputs: the engine trains it in float64, where two computations of
    one model agree to 1e-15 and a test can hold them to a tolerance no CPU's rounding reaches."""
    return dataclasses.replace(
        data, x_train=data.x_train.double(), x_val=data.x_val.double(), x_test=data.x_test.double()
    )


def _internals_allowed() -> bool:
    from search.optuna_versions import internals_allowed

    return internals_allowed()


# A test of an Optuna internal itself (batched writes, the snapshot sampler, Optuna's heartbeat
# thread): it has nothing to check where search takes the public path.
needs_internals = pytest.mark.skipif(
    not _internals_allowed(),
    reason="Optuna internals off (SEARCH_OPTUNA_INTERNALS=off or an Optuna search was not tested on)",
)
