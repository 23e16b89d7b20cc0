"""ZCA whitening: decorrelate the pixels once, on the device, from the training split's statistics.

An MLP sees each pixel as an unrelated input, so the strong correlations between neighbouring
pixels make its first layer's loss surface badly conditioned; ZCA (Bell & Sejnowski) rotates the
data to its principal axes, rescales each to unit variance (damped by `eps`, which keeps the
noise directions from being blown up) and rotates back, so a whitened image still looks like an
image (edges stand out) and flips and shifts still mean what they meant.

The transform is fitted on the training split only (validation and test must not leak into it)
and applied once per process to the training and validation splits; the trials of a search share
that copy. At the end of a fit the transform is folded into the first Linear layer
(`fold_into_first_linear`), so the model a fit returns, saves and exports takes the ordinary
normalized inputs like every other model: nothing downstream needs to know it was whitened.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections import OrderedDict

import torch
from torch import nn

from search.data.datasets import Dataset

MAX_CACHED = 2  # whitened copies kept per dataset (one per eps): each is a copy of train + val

# dataset -> its (mean, eigenvalues, eigenvectors), and eps -> (whitened dataset, mean, matrix)
_EIGEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_WHITENED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def clear_cache() -> None:
    _EIGEN.clear()
    _WHITENED.clear()


def _eigen(data: Dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and eigen-decomposition of the training split's pixel covariance (float64)."""
    if data not in _EIGEN:
        x = data.x_train
        mean = x.mean(0, dtype=torch.float64)
        centered = x - mean.to(x.dtype)
        cov = (centered.T @ centered).double() / max(1, len(x) - 1)
        values, vectors = torch.linalg.eigh(cov)
        _EIGEN[data] = (mean, values.clamp(min=0.0), vectors)
    return _EIGEN[data]


def zca_matrix(data: Dataset, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, W), float64, with whitened = (x - mean) @ W; W = U diag(1/sqrt(s + eps)) U^T."""
    mean, values, vectors = _eigen(data)
    w = (vectors * (values + eps).rsqrt()) @ vectors.T
    return mean, w


def whitened(data: Dataset, eps: float) -> Dataset:
    """`data` with its training and validation rows ZCA-whitened (the test split is left as it is:
    only a folded model meets it). Memoized per dataset and eps."""
    per_eps: OrderedDict = _WHITENED.setdefault(data, OrderedDict())
    key = float(eps)
    if key not in per_eps:
        mean, w = zca_matrix(data, key)
        m, w32 = mean.to(data.x_train.dtype), w.to(data.x_train.dtype)

        def apply(x: torch.Tensor) -> torch.Tensor:
            return (x - m) @ w32

        per_eps[key] = dataclasses.replace(data, x_train=apply(data.x_train), x_val=apply(data.x_val))
        while len(per_eps) > MAX_CACHED:
            per_eps.popitem(last=False)
    per_eps.move_to_end(key)
    return per_eps[key]


def fold_into_first_linear(model: nn.Module, mean: torch.Tensor, w: torch.Tensor) -> None:
    """Rewrite the first Linear layer so that model(x) == unfolded_model((x - mean) @ w).

    Linear(z) = A z + b with z = W (x - mean) (W is symmetric) is (A W) x + (b - A W mean).
    """
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    with torch.no_grad():
        a = first.weight.double() @ w.to(first.weight.device)
        b = first.bias.double() - a @ mean.to(first.weight.device)
        first.weight.copy_(a.to(first.weight.dtype))
        first.bias.copy_(b.to(first.bias.dtype))
