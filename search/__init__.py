"""Hyperparameter search for PyTorch MLP classifiers, built on Optuna.

The Python API (search.api), for notebooks and scripts:

    optimize   run or resume a study's search; returns the optuna.Study
    export_best   the best trial's files (python -m search.export); returns the paths written
    write_report  the study's HTML page (python -m search.report); returns its path
    load_best  the best trial's config and model, with the normalization its inputs need
    samples    a grid of training images, as a PIL image
    MLPSearchClassifier, MLPSearchRegressor   scikit-learn estimators that search an MLP in fit
    predictions  test images captioned by a model's predictions, as a PIL image
"""

import os as _os

# libgomp (torch's CPU threads) reads this once, when torch loads: a waiting thread spins briefly,
# then sleeps. The default spin steals the core its partner needs on a shared CPU: measured here,
# 5-30 s per CIFAR-10 epoch next to one busy process instead of 1.6 s; with this, 5.1-5.6 s, and
# 1.68 s when idle. Every `python -m search.*` imports this package before torch.
_os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from search.version import __version__ as __version__  # noqa: E402  # after GOMP_SPINCOUNT

__all__ = [
    "BestModel", "MLPSearchClassifier", "MLPSearchRegressor", "UserError", "export_best", "load_best",
    "optimize", "predictions", "samples", "write_report",
]  # fmt: skip


def __getattr__(name: str):
    # Loaded on first use, so `python -m search.X --help` does not import the whole library.
    if name == "UserError":
        from search.errors import UserError

        return UserError
    if name in ("MLPSearchClassifier", "MLPSearchRegressor"):
        from search import estimators

        return getattr(estimators, name)
    if name in __all__:
        from search import api

        return getattr(api, name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")
