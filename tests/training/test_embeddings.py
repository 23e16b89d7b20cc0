"""`num_embedding = "periodic"`: the PLR embedding of a table's numeric columns (Gorishniy et al.
2022), checked against its authors' own package, `rtdl_num_embeddings`.

`PeriodicEmbeddings(n, d, n_frequencies=k, frequency_init_scale=sigma, activation=True,
lite=False)` with our weights copied in gives the same outputs and gradients (measured: 0 apart,
bit for bit, in float64 and float32: the same operations in the same order; the test allows
1e-13 of the largest entry); the engine trains a model with the embedding as rtdl's module in
front of our layers trains under `torch.optim` (float64; measured within 3e-14 relative over
these knobs, `RTOL` as tests/training/test_fit.py derives it), alone or stacked; the parameter
counts, layer shapes and the architecture line count the embedding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import StreamDropout, as_float64, reference_optimizer
from sklearn.datasets import load_breast_cancer, load_diabetes
from torch import nn

from search.artifacts.evaluation import evaluate
from search.data.tables import TableSpec, load_table
from search.errors import UserError
from search.training.config import TrainConfig
from search.training.embeddings import PeriodicEmbedding, periodic
from search.training.fit import DROPOUT_SEED, fit, fit_stacked
from search.training.model import (
    FeatureScale,
    architecture,
    build_for,
    build_mlp,
    count_params,
    layer_shapes,
    member_flops,
    param_count,
    shape_of,
)
from search.training.stack import layout_of

rtdl = pytest.importorskip("rtdl_num_embeddings", reason="the parity tests need the PLR authors' package")

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")

RTOL = 1e-9  # tests/training/test_fit.py: float64 training, other sums' order, a few epochs


def _twin(ours: PeriodicEmbedding, sigma: float = 0.1) -> nn.Module:
    """rtdl's PLR module with our weights copied in."""
    n, k = ours.frequencies.shape
    theirs = rtdl.PeriodicEmbeddings(
        n, ours.bias.shape[1], n_frequencies=k, frequency_init_scale=sigma, activation=True, lite=False
    ).to(ours.weight.dtype)
    with torch.no_grad():
        theirs.periodic.weight.copy_(ours.frequencies)
        theirs.linear.weight.copy_(ours.weight)
        theirs.linear.bias.copy_(ours.bias)
    return theirs


class _Rtdl(nn.Module):
    """rtdl's PLR module on the first n columns, flattened as its README's MLP-PLR does, the
    other columns passed beside it."""

    def __init__(self, ours: PeriodicEmbedding, sigma: float):
        super().__init__()
        self.n, self.plr = ours.frequencies.shape[0], _twin(ours, sigma)

    def forward(self, x):
        return torch.cat([self.plr(x[:, : self.n]).flatten(1), x[:, self.n :]], 1)


@pytest.fixture(scope="module")
def cancer64():
    """breast_cancer as a table: 30 numeric columns (one with gaps: a missing-value indicator
    follows them) and a text column (one-hot columns last), in float64."""
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    frame = x.assign(kind=np.where(y == 1, "benign", "malignant"))
    frame["site"] = np.random.default_rng(0).choice(["a", "b", "c"], len(frame))
    frame.loc[::13, "mean radius"] = np.nan
    spec = TableSpec(train="cancer.csv", target="kind")
    return as_float64(load_table(spec, device="cpu", val_fraction=0.2, split_seed=0, frame=frame))


# --------------------------------------------------------------------- the module, against rtdl


def test_one_pass_and_its_gradients_match_rtdls_periodic_embeddings():
    n, k, d, extra, batch = 5, 7, 3, 4, 11
    torch.manual_seed(0)
    ours = PeriodicEmbedding(n, frequencies=k, dim=d, sigma=0.3).double()
    with torch.no_grad():  # frequencies far from their start, so a missing 2 pi would show
        ours.frequencies.mul_(3.0)
    theirs = _Rtdl(ours, 0.3)
    x = (3 * torch.randn(batch, n + extra, dtype=torch.float64)).requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    out, their_out = ours(x), theirs(x2)
    assert out.shape == (batch, n * d + extra)
    gap = (out - their_out).abs().max().item()
    assert gap <= 1e-13 * their_out.abs().max().item(), gap
    assert torch.equal(out[:, n * d :], x[:, n:])  # the other columns pass unchanged
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    (their_out * weights).sum().backward()
    pairs = [(ours.frequencies, theirs.plr.periodic.weight), (ours.weight, theirs.plr.linear.weight),
             (ours.bias, theirs.plr.linear.bias), (x, x2)]  # fmt: skip
    for mine, their in pairs:
        gap = (mine.grad - their.grad).abs().max().item()
        assert gap <= 1e-13 * their.grad.abs().max().item(), gap


def test_the_initialisation_is_rtdls():
    """Drawn as rtdl draws it, in the same order: the same tensors from the same seed."""
    torch.manual_seed(3)
    ours = PeriodicEmbedding(6, frequencies=16, dim=8, sigma=0.2)
    torch.manual_seed(3)
    theirs = rtdl.PeriodicEmbeddings(6, 8, n_frequencies=16, frequency_init_scale=0.2, lite=False)
    assert torch.equal(ours.frequencies, theirs.periodic.weight)
    assert torch.equal(ours.weight, theirs.linear.weight)
    assert torch.equal(ours.bias, theirs.linear.bias)
    assert ours.frequencies.abs().max() <= 3 * 0.2


def test_the_stacked_arithmetic_is_each_members_own():
    """`periodic` on [K, B, in] with K members' weights is each member's [B, in] pass."""
    torch.manual_seed(1)
    members = [PeriodicEmbedding(3, frequencies=4, dim=2, sigma=1.0).double() for _ in range(3)]
    x = torch.randn(3, 6, 5, dtype=torch.float64)
    stacked = periodic(
        x, *(torch.stack([getattr(m, a) for m in members]) for a in ("frequencies", "weight", "bias"))
    )
    for i, m in enumerate(members):
        assert torch.allclose(stacked[i], m(x[i]), rtol=0, atol=1e-15)


# --------------------------------------------------------------------- the model's shape


def test_the_model_embeds_only_the_numeric_columns_and_counts_the_embedding(cancer64):
    config = TrainConfig(hidden=(16, 8), num_embedding="periodic", plr_frequencies=6, plr_dim=4)
    shape = shape_of(config, cancer64)
    assert shape == dict(in_features=cancer64.in_features, n_classes=2, numeric_features=30)
    model = build_for(config, cancer64)
    embedding = model[0]
    assert isinstance(embedding, PeriodicEmbedding) and embedding.frequencies.shape == (30, 6)
    width = cancer64.in_features + 30 * 3  # each numeric column's one value becomes 4
    assert layer_shapes(config, **shape)[0] == (width, 16) == (model[1].in_features, 16)
    assert (
        architecture(config, **shape) == f"{cancer64.in_features}(plr=30x4,freq=6)-16(bn,relu)-8(bn,relu)-2"
    )
    assert member_flops(config, **shape) == width * 16 + 16 * 8 + 8 * 2 + 30 * 12 * 4
    assert layout_of([config], **shape).flops() == member_flops(config, **shape)
    configs = [config, config.replace(feature_scale=True), config.replace(ensemble_k=3, feature_scale=True),
               config.replace(hidden=(8, 8), residual=True, layernorm=True, batchnorm=False),
               config.replace(hidden=())]  # fmt: skip
    for c in configs:
        assert param_count(c, **shape) == count_params(build_for(c, cancer64)), c
    scaled = build_for(configs[1], cancer64)
    assert isinstance(scaled[1], FeatureScale) and scaled[1].weight.shape == (width,)  # after the embedding


def test_images_and_tables_without_numeric_columns_get_no_embedding():
    """As `numeric` does nothing to images, the embedding has no column to take there."""
    config = TrainConfig(hidden=(8,), num_embedding="periodic")
    model = build_mlp(config, in_features=12, n_classes=3, numeric_features=0)
    assert not any(isinstance(m, PeriodicEmbedding) for m in model)
    plain = config.replace(num_embedding="none")
    assert param_count(config, in_features=12, n_classes=3) == param_count(plain, in_features=12, n_classes=3)
    assert architecture(config, in_features=12, n_classes=3) == "12-8(bn,relu)-3"


def test_the_knobs_round_trip_and_bad_values_are_one_line():
    config = TrainConfig(num_embedding="periodic", plr_frequencies=16, plr_sigma=0.5, plr_dim=8)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.from_dict({}).num_embedding == "none"  # a best.json from before the knob
    bad = [
        ({"num_embedding": "plr"}, "num_embedding"), ({"plr_frequencies": 0}, "plr_frequencies"),
        ({"plr_dim": 2.5}, "plr_dim"), ({"plr_dim": True}, "plr_dim"), ({"plr_sigma": 0.0}, "plr_sigma"),
        ({"plr_sigma": math.inf}, "plr_sigma"),
        ({"num_embedding": "periodic", "numeric": "ple16"}, "pick one of the two"),
    ]  # fmt: skip
    for values, words in bad:
        with pytest.raises(UserError) as e:
            TrainConfig.from_dict(values)
        assert words in str(e.value) and "\n" not in str(e.value)
    TrainConfig(numeric="ple16", plr_dim=4)  # sizes without the embedding are inert, not wrong


# --------------------------------------------------------------------- training, against a loop


def reference_fit(config: TrainConfig, data) -> list[tuple[float, float, float]]:
    """(train loss, val loss, val accuracy) per epoch: rtdl's PLR module in front of our layers
    (whose training tests/training/test_fit.py checks), torch.optim, F.cross_entropy."""
    torch.manual_seed(config.seed)
    ours = build_for(config, data).double()
    model = nn.Sequential(_Rtdl(ours[0], config.plr_sigma), *ours[1:])
    drops = torch.Generator().manual_seed(config.seed + DROPOUT_SEED)
    for i, m in enumerate(model):
        if isinstance(m, nn.Dropout):
            model[i] = StreamDropout(m.p, drops)
    x, y, n, bs = data.x_train, data.y_train, len(data.x_train), config.batch_size
    optimizer, schedule, n_batches = reference_optimizer(model, config, n)
    batches = torch.Generator().manual_seed(config.seed)
    out = []
    for _ in range(config.epochs):
        model.train()
        order = torch.randperm(n, generator=batches)
        losses = []
        for b in range(n_batches):
            idx = order[b * bs : (b + 1) * bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            for i, m in enumerate(model[:-1]):  # a bias right before BatchNorm: its true gradient
                if isinstance(m, nn.Linear) and isinstance(model[i + 1], nn.BatchNorm1d):  # is zero
                    m.bias.grad.zero_()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            logits = model(data.x_val)
        accuracy = (logits.argmax(1) == data.y_val).double().mean().item()
        out.append((sum(losses) / n_batches, F.cross_entropy(logits, data.y_val).item(), accuracy))
    return out


BASE = TrainConfig(
    hidden=(24, 16), epochs=3, batch_size=64, lr=0.05, seed=2, num_embedding="periodic", plr_frequencies=8,
    plr_dim=4, plr_sigma=0.5,
)  # fmt: skip
KNOBS = {
    "sgd, batchnorm": dict(),
    "adam, weight decay, no norm": dict(optimizer="adam", lr=3e-3, weight_decay=1e-2, batchnorm=False),
    "adamw, cosine, dropout": dict(optimizer="adamw", lr=3e-3, schedule="cosine", warmup=0.2, dropout=0.2),
}


@pytest.mark.parametrize("knob", sorted(KNOBS))
def test_the_engine_trains_as_rtdls_module_and_torch_optim_do(cancer64, knob):
    config = BASE.replace(**KNOBS[knob])
    ours = fit(config, cancer64)
    theirs = reference_fit(config, cancer64)
    assert len(ours.history) == len(theirs) == config.epochs
    for m, (train_loss, val_loss, val_score) in zip(ours.history, theirs, strict=True):
        assert math.isclose(m.train_loss, train_loss, rel_tol=RTOL), (m, train_loss)
        assert math.isclose(m.val_loss, val_loss, rel_tol=RTOL), (m, val_loss)
        assert m.val_score == pytest.approx(val_score, abs=1e-12)
    loss, accuracy = evaluate(ours.model, cancer64.x_val, cancer64.y_val)  # the portable model
    assert accuracy == ours.val_score and loss == pytest.approx(ours.history[-1].val_loss, rel=RTOL)


def test_stacked_members_each_train_as_they_do_alone(cancer64):
    """Other widths, sigmas, optimizers, a feature scale, an ensemble: each its own embedding."""
    configs = [BASE, BASE.replace(hidden=(12, 20), plr_sigma=0.05, seed=5, feature_scale=True),
               BASE.replace(optimizer="adam", lr=3e-3, batchnorm=False, dropout=0.1, seed=7)]  # fmt: skip
    for group in (configs, [c.replace(ensemble_k=3) for c in configs]):
        together = fit_stacked(group, cancer64)
        for config, result in zip(group, together, strict=True):
            alone = fit(config, cancer64)
            for a, b in zip(alone.history, result.history, strict=True):
                assert math.isclose(a.train_loss, b.train_loss, rel_tol=RTOL), (config, a, b)
                assert math.isclose(a.val_loss, b.val_loss, rel_tol=RTOL), (config, a, b)
            state, again = alone.model.state_dict(), result.model.state_dict()
            assert all(torch.allclose(state[k], again[k], rtol=1e-9, atol=1e-12) for k in state)


def test_the_embeddings_sizes_are_part_of_the_stack_key(cancer64):
    with pytest.raises(ValueError, match="numeric scaling and embedding"):
        fit_stacked([BASE, BASE.replace(plr_dim=5)], cancer64)
    with pytest.raises(ValueError, match="numeric scaling and embedding"):
        fit_stacked([BASE, BASE.replace(num_embedding="none")], cancer64)


def test_a_resumed_fit_with_the_embedding_equals_the_uninterrupted_one(cancer64, tmp_path):
    from search.training.state import load_state, save_state

    config = BASE.replace(optimizer="adam", lr=3e-3)
    whole = fit(config, cancer64)
    states = []
    fit(config, cancer64, on_state=states.append)
    assert {"pf", "pw", "pb"} <= set(states[0].weights) and {"pf", "pw", "pb"} <= set(
        states[0].optimizer["exp_avg"]
    )
    resumed = fit(config, cancer64, resume=load_state(save_state(tmp_path / "state.pt", states[0])))
    assert [m.train_loss for m in resumed.history] == [m.train_loss for m in whole.history]
    state, again = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(state[k], again[k]) for k in state)


def test_a_model_with_the_embedding_learns_a_small_regression_table():
    """diabetes (442 rows, 10 numeric columns) through the table path: 15 epochs take the
    validation R^2 from below 0 to about 0.4. This nearly linear target is not where PLR wins:
    the plain MLP scores 0.43 here (measured, seed 0: 0.396 against 0.426; seed 1: 0.370 against
    0.476), so the test asks it to learn and to stay near the plain model, not to beat it."""
    spec = TableSpec(train="diabetes.csv", target="target")
    frame = load_diabetes(as_frame=True).frame
    data = load_table(spec, device="cpu", val_fraction=0.2, split_seed=0, frame=frame)
    config = TrainConfig(
        hidden=(64,), optimizer="adamw", lr=3e-3, weight_decay=1e-2, batch_size=32, epochs=15,
        schedule="cosine", dropout=0.2, num_embedding="periodic", plr_frequencies=16, plr_dim=8,
    )  # fmt: skip
    result = fit(config, data)
    plain = fit(config.replace(num_embedding="none"), data)
    assert result.history[-1].train_loss < 0.7 * result.history[0].train_loss
    assert result.history[0].val_score < 0.1 < 0.3 < result.val_score, [m.val_score for m in result.history]
    assert result.val_score > plain.val_score - 0.15, (result.val_score, plain.val_score)
