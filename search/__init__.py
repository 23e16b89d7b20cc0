"""Hyperparameter search for PyTorch MLP classifiers, built on Optuna."""

import os as _os

# libgomp (torch's CPU threads) reads this once, when torch loads: a waiting thread spins briefly,
# then sleeps. The default spin steals the core its partner needs on a shared CPU: measured here,
# 5-30 s per CIFAR-10 epoch next to one busy process instead of 1.6 s; with this, 5.1-5.6 s, and
# 1.68 s when idle. Every `python -m search.*` imports this package before torch.
_os.environ.setdefault("GOMP_SPINCOUNT", "10000")

__version__ = "0.1.0"
