"""Small helpers shared by the test modules (pytest puts this folder on sys.path)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
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


def assert_same_history(ours, theirs, rtol: float) -> None:
    """An engine fit's epochs against a reference loop's (train loss, val loss, val score) per
    epoch: the losses to `rtol`, the score to 1e-12."""
    import math

    assert len(ours.history) == len(theirs)
    for m, (train_loss, val_loss, val_score) in zip(ours.history, theirs, strict=True):
        assert math.isclose(m.train_loss, train_loss, rel_tol=rtol), (m, train_loss)
        assert math.isclose(m.val_loss, val_loss, rel_tol=rtol), (m, val_loss)
        assert m.val_score == pytest.approx(val_score, abs=1e-12)


# A weak study whose ensemble wins by a wide margin on any CPU: one hidden layer of 4 to 8 units
# trained 2 epochs (weak, different models), random sampling, no pruning.
WEAK_STUDY = """
[study]
dataset = "digits"
epochs = 2
val_fraction = 0.2
sampler = "random"
pruner = "none"
ensemble = 4

[space]
n_layers = 1
width = {low = 4, high = 8}
activation = "relu"
batchnorm = false
optimizer = "adam"
lr = {low = 3e-3, high = 3e-2, log = true}
batch_size = 64
"""


def reference_optimizer(model, config, n: int):
    """A reference loop's torch.optim optimizer for `config`, its LambdaLR over the engine's lr
    shape, and the batches per epoch of `n` rows (a last batch of one row folded away, as the
    engine does): (optimizer, schedule, n_batches)."""
    from search.training.schedule import lr_factor

    params = dict(lr=config.lr, weight_decay=config.weight_decay)
    optimizer = {
        "sgd": lambda: torch.optim.SGD(model.parameters(), momentum=config.momentum, **params),
        "rmsprop": lambda: torch.optim.RMSprop(model.parameters(), momentum=config.momentum, **params),
        "adam": lambda: torch.optim.Adam(model.parameters(), **params),
        "adamw": lambda: torch.optim.AdamW(model.parameters(), **params),
    }[config.optimizer]()
    bs = config.batch_size
    n_batches = n // bs + (1 if n % bs > 1 else 0)
    total = config.epochs * n_batches
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(config.schedule, config.warmup, s, total)
    )
    return optimizer, schedule, n_batches


class StreamDropout(torch.nn.Module):
    """nn.Dropout drawing its mask from a given generator (the engine's per-member stream), for
    the reference loops that train torch modules beside the engine."""

    def __init__(self, p: float, gen: torch.Generator):
        super().__init__()
        self.p, self.gen = p, gen

    def forward(self, x):
        if not self.training:
            return x
        mask = torch.empty_like(x).bernoulli_(1 - self.p, generator=self.gen)
        return x * mask / (1 - self.p)


def made_up_suite(tmp_path) -> str:
    """Two small tables: a classification with an id column to drop and a missing target, and a
    regression with a text column."""
    import numpy as np
    from sklearn.datasets import load_breast_cancer, load_diabetes

    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    cancer = x.iloc[:, :5].assign(kind=np.where(y == 1, "b", "m"), id=np.arange(len(y)))
    cancer.loc[3, "kind"] = None
    cancer.to_csv(tmp_path / "cancer.csv", index=False)
    x, y = load_diabetes(return_X_y=True, as_frame=True)
    x.assign(sex=np.where(x["sex"] > 0, "f", "m"), y=y).to_csv(tmp_path / "diabetes.csv", index=False)
    cancer_kind = {"name": "cancer-kind", "table": "cancer.csv", "target": "kind", "task": "classification"}
    suite = {"targets": [
        {**cancer_kind, "drop": ["id"]},
        {"name": "diabetes-y", "table": "diabetes.csv", "target": "y", "task": "regression"},
    ]}  # fmt: skip
    (tmp_path / "suite.json").write_text(json.dumps(suite))
    return str(tmp_path / "suite.json")
