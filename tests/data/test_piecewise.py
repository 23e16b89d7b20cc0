"""Piecewise-linear encoding: the same bins and encodings as the paper's authors' package, fitted
on the training rows, saved with the preprocessing, and a model trained on it."""

import numpy as np
import pandas as pd
import pytest
import torch

from search.data.piecewise import PiecewiseLinear


def _columns(rng, n=400):
    return np.column_stack([
        rng.normal(size=n),  # continuous
        rng.exponential(size=n) ** 2,  # skewed
        rng.integers(0, 3, size=n).astype(float),  # few distinct values: quantiles coincide
        np.r_[np.zeros(n - 5), rng.normal(size=5)],  # mostly one value
    ])  # fmt: skip


def test_bins_and_encodings_match_rtdl_num_embeddings():
    rtdl = pytest.importorskip("rtdl_num_embeddings", reason="the reference: pip install rtdl_num_embeddings")
    rng = np.random.default_rng(0)
    train, test = _columns(rng), _columns(rng, 300) * 1.5  # test values beyond the training range too
    ours = PiecewiseLinear(n_bins=8).fit(train)
    bins = rtdl.compute_bins(torch.as_tensor(train), n_bins=8)
    assert list(ours.bins_per_column_) == [len(b) - 1 for b in bins]
    assert np.allclose(ours.left_, np.concatenate([b[:-1].numpy() for b in bins]), rtol=0, atol=1e-12)
    reference = rtdl.PiecewiseLinearEncoding(bins)(torch.as_tensor(test)).numpy()
    # rtdl keeps 1/width and -left/width in float32 buffers: agreement to float32's rounding
    assert np.allclose(ours.transform(test), reference, rtol=1e-6, atol=1e-6)


def test_a_value_reads_as_full_bins_below_a_partial_bin_and_empty_bins_above():
    ple = PiecewiseLinear(n_bins=4).fit(np.arange(9.0).reshape(-1, 1))  # edges 0, 2, 4, 6, 8
    assert ple.transform([[5.0]]).tolist() == [[1.0, 1.0, 0.5, 0.0]]
    assert ple.transform([[-2.0]]).tolist() == [[-1.0, 0.0, 0.0, 0.0]]  # below: the first bin goes on
    assert ple.transform([[10.0]]).tolist() == [[1.0, 1.0, 1.0, 2.0]]  # above: the last bin goes on
    assert list(ple.get_feature_names_out(["age"])) == ["age_bin0", "age_bin1", "age_bin2", "age_bin3"]


def test_a_constant_column_gets_one_bin_and_no_division_by_zero():
    ple = PiecewiseLinear(n_bins=16).fit(np.full((10, 1), 3.0))
    assert ple.bins_per_column_.tolist() == [1]
    assert ple.transform([[3.0], [4.0]]).tolist() == [[0.0], [1.0]]


def test_a_table_study_trains_on_piecewise_linear_inputs_and_predicts_from_the_saved_file(tmp_path):
    from sklearn.datasets import load_diabetes

    from search.artifacts.predict import Preprocess, load_preprocess
    from search.data.tables import TableSpec, load_table
    from search.training.config import TrainConfig
    from search.training.fit import fit

    frame = load_diabetes(as_frame=True).frame
    spec = TableSpec(train="diabetes.csv", target="target")
    data = load_table(spec, device="cpu", val_fraction=0.2, split_seed=0, frame=frame)
    wide = data.variant("ple16")
    numeric_columns = data.table.numeric
    assert wide.in_features > data.in_features  # each numeric column became up to 16 features
    assert wide.in_features == sum(
        data.table.transformer("ple16").named_transformers_["numeric"][-1].bins_per_column_
    ) + (data.in_features - len(numeric_columns))
    config = TrainConfig(hidden=(32,), numeric="ple16", optimizer="adamw", lr=3e-3, epochs=3, batch_size=64)
    result = fit(config, data)
    assert result.model[0].in_features == wide.in_features
    path = Preprocess.of(data, "ple16").save(tmp_path / "preprocess.skops")
    loaded = load_preprocess(path)  # skops, with the transformer among its trusted types
    rows = pd.DataFrame(data.table.frames["test"])
    assert np.allclose(loaded.transformer.transform(rows), data.table.encode("ple16", rows), atol=1e-6)
