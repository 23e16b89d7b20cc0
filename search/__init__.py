"""Hyperparameter search for PyTorch MLP classifiers, built on Optuna."""

__version__ = "0.1.0"
