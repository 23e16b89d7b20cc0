"""Piecewise-linear encoding of numeric columns (Gorishniy et al. 2022, arXiv 2203.05556).

Each numeric column becomes `n_bins` features: with the column's quantile bin edges
e_0 < e_1 < ... < e_T fitted on the training rows, the value x gives, for each bin t,
(x - e_t) / (e_{t+1} - e_t), clamped to [0, 1], so a value reads as "all bins below it full, its
own bin partly, the rest empty". The first bin is not clamped below and the last not above, so a
value outside the training range keeps moving the encoding; a column with a single bin is the
plain min-max scale. That is the paper's PLE, computed as its authors' `rtdl_num_embeddings`
computes it (tests/data/test_piecewise.py holds the two together). The MLP's first layer on
these features is the paper's "PLE + linear" embedding shared across one model.

A scikit-learn transformer, so it is fitted on the training rows with the rest of a table's
preprocessing and saved with it (skops; its fitted state is plain arrays).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted


class PiecewiseLinear(TransformerMixin, BaseEstimator):
    """Quantile bins per column (at most `n_bins`; fewer where quantiles coincide), encoded
    piecewise-linearly: a [n, sum of each column's bins] float array."""

    def __init__(self, n_bins: int = 16):
        self.n_bins = n_bins

    def fit(self, X, y=None):
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(f"expected a 2-D array, got shape {X.shape}")
        if int(self.n_bins) < 1:
            raise ValueError(f"n_bins must be >= 1, got {self.n_bins}")
        quantiles = np.linspace(0.0, 1.0, int(self.n_bins) + 1)
        lefts, widths, counts = [], [], []
        for column in X.T:
            edges = np.unique(np.quantile(column, quantiles)) if len(column) else np.zeros(1)
            if len(edges) < 2:  # a constant column: one bin of width 1 from its value
                edges = np.array([edges[0], edges[0] + 1.0])
            lefts.append(edges[:-1])
            widths.append(np.diff(edges))
            counts.append(len(edges) - 1)
        self.left_ = np.concatenate(lefts) if lefts else np.zeros(0)
        self.width_ = np.concatenate(widths) if widths else np.zeros(0)
        self.bins_per_column_ = np.asarray(counts, dtype=np.int64)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        check_is_fitted(self, "left_")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} columns, got shape {X.shape}")
        column = np.repeat(np.arange(X.shape[1]), self.bins_per_column_)
        z = (X[:, column] - self.left_) / self.width_
        out = np.empty_like(z)
        at = 0
        for n in self.bins_per_column_:
            part = z[:, at : at + n]
            if n == 1:
                out[:, at] = part[:, 0]
            else:
                out[:, at] = np.minimum(part[:, 0], 1.0)
                out[:, at + 1 : at + n - 1] = np.clip(part[:, 1:-1], 0.0, 1.0)
                out[:, at + n - 1] = np.maximum(part[:, -1], 0.0)
            at += n
        return out

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "left_")
        if input_features is None:
            input_features = [f"x{i}" for i in range(self.n_features_in_)]
        names = zip(input_features, self.bins_per_column_, strict=True)
        return np.asarray([f"{name}_bin{t}" for name, n in names for t in range(n)], dtype=object)
