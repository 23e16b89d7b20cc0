"""`ensemble_k` (a TabM-style BatchEnsemble inside one model) and `feature_scale` (RealMLP's
learnable per-feature scale), checked against independent implementations.

The ensemble is checked against the TabM authors' own package, `tabm` (arXiv 2410.24210): its
`TabM` model, and its `LinearBatchEnsemble`, `LinearEnsemble`, `BatchNorm1dEnsemble`,
`LayerNormEnsemble` and `EnsembleView` modules assembled into the same layers, trained by
`torch.optim` in a loop written here. The tolerances are the design doc's ("How the test
tolerances are derived"): everything runs in float64, where rounding is 1e-16. One forward pass
and its gradients agree to 6e-16 of each tensor's largest entry (the same sums in another
blocking: the engine's batched matmul over [K, k*B, in], tabm's over [k, B, in]); after these few
epochs the losses agree to 4e-16 (measured: the largest relative gap over the knobs below, Adam
included). `ONE_STEP` = 1e-13 and `RTOL` = 1e-9 sit far above that and far below what a broken
knob does (a member's scaling left out, shared biases, a missing feature scale: 1e-3 and more).
"""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import as_float64, assert_same_history, reference_optimizer
from torch import nn

from search.artifacts.evaluation import evaluate
from search.data.datasets import load_dataset
from search.training.config import TrainConfig
from search.training.fit import DROPOUT_SEED, fit, fit_stacked
from search.training.model import (
    BatchEnsembleLinear,
    Block,
    EnsembleBatchNorm,
    EnsembleLayerNorm,
    EnsembleLinear,
    EnsembleView,
    FeatureScale,
    MemberMean,
    build_mlp,
)
from search.training.stack import StackedMLP, layout_of

RTOL = 1e-9
# One forward and backward pass: the largest gap, relative to the tensor's largest entry, measured
# 6e-16 (a single entry's own relative gap can be larger where a gradient's terms cancel).
ONE_STEP = 1e-13


def assert_near(ours: torch.Tensor, theirs: torch.Tensor, what: str = "") -> None:
    gap = (ours - theirs).abs().max().item()
    assert gap <= ONE_STEP * theirs.abs().max().item(), (what, gap)


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")

tabm = pytest.importorskip("tabm", reason="the parity tests need the TabM authors' `tabm` package")


@pytest.fixture(scope="module")
def digits64():
    return as_float64(load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0))


class _Scale(nn.Module):
    """x * s, s a learnable vector: RealMLP's scale layer, written here."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())

    def forward(self, x):
        return x * self.weight


class _Dropout(nn.Module):
    """Dropout on [B, k, w] drawing each member's mask from a generator as the engine does: one
    [k, B, w] draw per layer, member after member."""

    def __init__(self, p: float, gen: torch.Generator):
        super().__init__()
        self.p, self.gen = p, gen

    def forward(self, x):
        if not self.training:
            return x
        b, k, w = x.shape
        mask = torch.empty(k, b, w, dtype=x.dtype).bernoulli_(1 - self.p, generator=self.gen)
        return x * mask.transpose(0, 1) / (1 - self.p)


class _Residual(nn.Module):
    def __init__(self, norm, fc1, act, drop, fc2):
        super().__init__()
        self.norm, self.fc1, self.act, self.drop, self.fc2 = norm, fc1, act, drop, fc2

    def forward(self, x):
        return x + self.fc2(self.drop(self.act(self.fc1(self.norm(x)))))


def _copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    with torch.no_grad():
        dst.copy_(src.reshape(dst.shape))


def tabm_twin(model: nn.Sequential, k: int, drops: torch.Generator | None = None) -> nn.Sequential:
    """The same network of the `tabm` package's modules (and _Scale, _Dropout), our model's
    weights copied in; its output is every member's [B, k, n_classes], as TabM's is."""
    dtype = next(model.parameters()).dtype

    def twin(m: nn.Module) -> nn.Module:
        if isinstance(m, FeatureScale):
            return _Scale(m.weight)
        if isinstance(m, EnsembleView):
            return tabm.EnsembleView(k=k)
        if isinstance(m, BatchEnsembleLinear):
            shape = (m.in_features, m.out_features)
            out = tabm.LinearBatchEnsemble(*shape, k=k, scaling_init="ones", dtype=dtype)
            for name in ("weight", "r", "s", "bias"):
                _copy(getattr(out, name), getattr(m, name))
            return out
        if isinstance(m, EnsembleLinear):
            out = tabm.LinearEnsemble(m.weight.shape[1], m.weight.shape[2], k=k, dtype=dtype)
            _copy(out.weight, m.weight)
            _copy(out.bias, m.bias)
            return out
        if isinstance(m, EnsembleBatchNorm):
            out = tabm.BatchNorm1dEnsemble(m.num_features // k, k=k, momentum=m.momentum, dtype=dtype)
        elif isinstance(m, EnsembleLayerNorm):
            out = tabm.LayerNormEnsemble(m.width, k=k, dtype=dtype)
        else:
            if isinstance(m, Block):
                return _Residual(*(twin(c) for c in (m.norm, m.fc1, m.act, m.drop, m.fc2)))
            if isinstance(m, nn.Dropout):
                assert drops is not None
                return _Dropout(m.p, drops)
            return type(m)()  # an activation, or Identity
        _copy(out.affine.weight, m.weight)
        _copy(out.affine.bias, m.bias)
        return out

    return nn.Sequential(*(twin(m) for m in model if not isinstance(m, MemberMean)))


def _member_mean(outputs: torch.Tensor, regression: bool) -> torch.Tensor:
    """[B, k, n] -> the members' mean output, or the log of their mean probability."""
    if regression:
        return outputs.mean(1)
    return torch.log(outputs.softmax(-1).mean(1))


# --------------------------------------------------------------------- one pass, against TabM itself


@pytest.mark.parametrize("n_classes", [3, 1], ids=["classification", "regression"])
def test_one_pass_and_its_gradients_match_tabms_own_model(n_classes):
    """tabm.TabM (its 'tabm' architecture: BatchEnsemble layers, random-sign first scaling, one
    linear head per member), our weights copied in: the same outputs from the portable model and
    from the engine, the same loss (the mean of each member's) and the same gradients."""
    k, d_in, width, batch = 4, 7, 16, 9
    config = TrainConfig(hidden=(width,) * 3, batchnorm=False, ensemble_k=k, seed=3)
    torch.manual_seed(config.seed)
    ours = build_mlp(config, in_features=d_in, n_classes=n_classes).double()
    theirs = tabm.TabM(
        n_num_features=d_in, d_out=n_classes, n_blocks=3, d_block=width, dropout=0.0, k=k,
        arch_type="tabm", start_scaling_init="random-signs",
    ).double()  # fmt: skip
    linears = [m for m in ours if isinstance(m, BatchEnsembleLinear)]
    for block, mine in zip(theirs.backbone.blocks, linears, strict=True):
        for name in ("weight", "r", "s", "bias"):
            _copy(getattr(block[0], name), getattr(mine, name))
    _copy(theirs.output.weight, ours[-2].weight)
    _copy(theirs.output.bias, ours[-2].bias)

    x = torch.randn(batch, d_in, dtype=torch.float64)
    y = torch.randn(batch, dtype=torch.float64) if n_classes == 1 else torch.randint(0, n_classes, (batch,))
    members = theirs.eval()(x)  # [B, k, n]: no dropout, no norm, so train and eval agree
    assert_near(ours.train()(x), members)
    assert_near(ours.eval()(x), _member_mean(members, n_classes == 1))

    # The engine, from the same initial weights.
    stack = StackedMLP([config], [ours], layout_of([config], d_in, n_classes), "cpu", torch.float64,
                       regression=n_classes == 1)  # fmt: skip
    logits = stack.forward(x.unsqueeze(0), train=True)  # [1, k*B, n], member after member
    assert_near(logits.view(k, batch, n_classes).transpose(0, 1), members.detach())
    loss = stack.loss(logits, y.unsqueeze(0))[0]
    flat = theirs.train()(x).flatten(0, 1)  # rows b*k + j
    target = y.repeat_interleave(k)
    their_loss = F.mse_loss(flat[:, 0], target) if n_classes == 1 else F.cross_entropy(flat, target)
    assert math.isclose(loss.item(), their_loss.item(), rel_tol=ONE_STEP)
    loss.backward()
    their_loss.backward()
    pairs = {"wh": theirs.output.weight, "bh": theirs.output.bias}
    for i, block in enumerate(theirs.backbone.blocks):
        lin = block[0]
        pairs.update({f"r{i}": lin.r, f"s{i}": lin.s, f"b{i}": lin.bias})
        assert_near(stack.grads[f"w{i}"][0].T, lin.weight.grad, f"w{i}")
    for name, p in pairs.items():
        assert_near(stack.grads[name][0], p.grad, name)


def test_the_initialisation_is_tabms():
    """TabM's: the first layer's r random signs, every other scaling 1, each layer's bias the same
    for every member, the heads each their own."""
    config = TrainConfig(hidden=(32, 32), ensemble_k=8)
    model = build_mlp(config, in_features=64, n_classes=10)
    first, second = [m for m in model if isinstance(m, BatchEnsembleLinear)]
    assert set(first.r.unique().tolist()) == {-1.0, 1.0}
    assert 0.3 < (first.r > 0).double().mean().item() < 0.7
    for scaling in (first.s, second.r, second.s):
        assert torch.equal(scaling, torch.ones_like(scaling))
    for lin in (first, second):
        assert torch.equal(lin.bias, lin.bias[:1].expand_as(lin.bias))
        assert lin.weight.abs().max() <= lin.in_features**-0.5
    head = model[-2]
    assert isinstance(head, EnsembleLinear) and not torch.equal(head.weight[0], head.weight[1])


# --------------------------------------------------------------------- training, against a loop


def reference_fit(config: TrainConfig, data) -> list[tuple[float, float, float]]:
    """(train loss, val loss, val accuracy) per epoch: tabm's modules, torch.optim's optimizers,
    each member's cross-entropy (squared error) on the same batch averaged, the members' mean
    probability (output) scored; a regression's accuracy is nan."""
    k, regression = config.ensemble_k, data.task == "regression"
    torch.manual_seed(config.seed)
    ours = build_mlp(config, in_features=data.in_features, n_classes=data.n_classes).double()
    drops = torch.Generator().manual_seed(config.seed + DROPOUT_SEED)
    model = tabm_twin(ours, k, drops)
    x, y, n, bs = data.x_train, data.y_train, len(data.x_train), config.batch_size
    optimizer, schedule, n_batches = reference_optimizer(model, config, n)
    batches = torch.Generator().manual_seed(config.seed)
    linears = (tabm.LinearBatchEnsemble, tabm.LinearEnsemble)
    matrices = [m.weight for m in model.modules() if isinstance(m, linears)]
    before_bn = [
        lin for lin, nxt in zip(model, list(model)[1:], strict=False)
        if isinstance(lin, tabm.LinearBatchEnsemble) and isinstance(nxt, tabm.BatchNorm1dEnsemble)
    ]  # fmt: skip
    out = []
    for _ in range(config.epochs):
        model.train()
        order = torch.randperm(n, generator=batches)
        losses = []
        for b in range(n_batches):
            idx = order[b * bs : (b + 1) * bs]
            members = model(x[idx]).flatten(0, 1)  # [B * k, classes]: row b*k + j, member j
            target = y[idx].repeat_interleave(k)
            if regression:
                loss = F.mse_loss(members[:, 0], target)
            else:
                loss = F.cross_entropy(members, target, label_smoothing=config.label_smoothing)
            loss = loss + config.l1 * sum(w.abs().sum() for w in matrices)
            optimizer.zero_grad()
            loss.backward()
            for lin in before_bn:  # a bias right before BatchNorm: its true gradient is zero
                lin.bias.grad.zero_()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            logits = _member_mean(model(data.x_val), regression)
            if regression:
                val_loss, val_score = F.mse_loss(logits[:, 0], data.y_val).item(), math.nan
            else:
                val_loss = F.cross_entropy(logits, data.y_val).item()
                val_score = (logits.argmax(1) == data.y_val).double().mean().item()
        out.append((sum(losses) / n_batches, val_loss, val_score))
    return out


BASE = TrainConfig(hidden=(32, 24), epochs=3, batch_size=64, lr=0.05, seed=1, batchnorm=False, ensemble_k=4)
KNOBS = {
    "tabm: no norm, relu": dict(),
    "dropout, momentum, weight decay": dict(dropout=0.2, momentum=0.5, weight_decay=1e-2),
    "batchnorm": dict(batchnorm=True, bn_momentum=0.3),
    "layernorm, gelu": dict(layernorm=True, activation="gelu"),
    "adam, label smoothing, l1": dict(optimizer="adam", lr=3e-3, label_smoothing=0.1, l1=1e-4),
    "adamw, cosine": dict(optimizer="adamw", lr=3e-3, weight_decay=1e-2, schedule="cosine", warmup=0.2),
    "residual blocks, batchnorm, dropout": dict(
        hidden=(16, 16, 16), residual=True, expansion=2, batchnorm=True, dropout=0.2
    ),
    "feature scale": dict(feature_scale=True, weight_decay=1e-2),
    "32 members, a linear model": dict(ensemble_k=32, hidden=()),
}


@pytest.mark.parametrize("knob", sorted(KNOBS))
def test_an_ensemble_trains_as_tabms_modules_and_torch_optim_do(digits64, knob):
    config = BASE.replace(**KNOBS[knob])
    ours = fit(config, digits64)
    theirs = reference_fit(config, digits64)
    assert len(theirs) == config.epochs
    assert_same_history(ours, theirs, RTOL)


def as_regression(data):
    """digits with its standardized label as a regression target."""
    y = [t.double() for t in (data.y_train, data.y_val, data.y_test)]
    mean, std = y[0].mean(), y[0].std()
    y = [(t - mean) / std for t in y]
    return dataclasses.replace(data, classes=(), task="regression", metric="r2", y_train=y[0], y_val=y[1],
                               y_test=y[2])  # fmt: skip


def test_a_regression_ensemble_trains_on_its_members_mean_squared_error_and_scores_their_mean(digits64):
    data = as_regression(digits64)
    config = BASE.replace(batchnorm=True, dropout=0.1, optimizer="adam", lr=3e-3)
    ours = fit(config, data)
    theirs = reference_fit(config, data)
    for m, (train_loss, val_loss, _) in zip(ours.history, theirs, strict=True):
        assert math.isclose(m.train_loss, train_loss, rel_tol=RTOL), (m, train_loss)
        assert math.isclose(m.val_loss, val_loss, rel_tol=RTOL), (m, val_loss)
    ours.model.eval()
    with torch.no_grad():
        out = ours.model(data.x_val)
    assert out.shape == (len(data.x_val), 1)
    assert F.mse_loss(out[:, 0], data.y_val).item() == pytest.approx(ours.history[-1].val_loss, rel=RTOL)


# --------------------------------------------------------------------- the portable model


@pytest.mark.parametrize(
    "changes",
    [
        dict(batchnorm=True, dropout=0.2),
        dict(layernorm=True, feature_scale=True),
        dict(hidden=(16, 16), residual=True, expansion=2, batchnorm=True),
        dict(whiten="zca", feature_scale=True),  # the whitening cannot fold into a BatchEnsemble layer
        dict(tta_hflip=True, hflip=True),
        dict(hidden=(), feature_scale=True),
        dict(ensemble_k=1, whiten="zca", feature_scale=True),  # folded: W diag(s) A, and s = 1
        dict(ensemble_k=1, hidden=(), whiten="zca", feature_scale=True),
    ],
    ids=[
        "batchnorm",
        "layernorm, scale",
        "residual",
        "zca, scale",
        "test-time flips",
        "linear",
        "one model, zca fold, scale",
        "linear model, zca fold, scale",
    ],
)
def test_the_returned_model_scores_as_the_engine_scored_it(digits64, changes):
    config = BASE.replace(**changes)
    result = fit(config, digits64)
    loss, acc = evaluate(result.model, digits64.x_val, digits64.y_val)
    assert acc == result.val_score
    assert loss == pytest.approx(result.history[-1].val_loss, rel=RTOL)


def test_the_portable_model_loads_with_plain_pytorch_and_answers_with_the_members_mean_probability():
    config = TrainConfig(hidden=(12, 8), ensemble_k=5, feature_scale=True, dropout=0.1)
    torch.manual_seed(0)
    model = build_mlp(config, in_features=6, n_classes=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # every member, scale and norm away from its start
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    again = build_mlp(config, in_features=6, n_classes=3)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(10, 6)
    model.eval(), again.eval()
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
        members = nn.Sequential(*model[:-1])(x)  # [B, k, classes]: everything but the mean
        assert members.shape == (10, 5, 3)
        probabilities = members.double().softmax(-1).mean(1)
        torch.testing.assert_close(model(x).double().exp(), probabilities, rtol=1e-5, atol=1e-7)
    assert model.train()(x).shape == (10, 5, 3)  # in training, each member's own output


def test_the_ensemble_size_is_part_of_the_stack_key_and_shows_in_the_architecture(digits64):
    from search.training.model import architecture

    with pytest.raises(ValueError, match="ensemble size"):
        fit_stacked([BASE, BASE.replace(ensemble_k=2)], digits64)
    assert architecture(BASE.replace(feature_scale=True), in_features=64, n_classes=10) == (
        "64(scale)-32(relu)-24(relu)-10 k=4"
    )


@pytest.mark.parametrize(
    "bad", [{"ensemble_k": 0}, {"ensemble_k": 1.5}, {"ensemble_k": True}, {"feature_scale": "yes"}]
)
def test_invalid_knob_values_are_refused_in_one_line(bad):
    from search.errors import UserError

    with pytest.raises(UserError) as e:
        TrainConfig.from_dict(bad)
    assert next(iter(bad)) in str(e.value) and "\n" not in str(e.value)


def test_both_knobs_round_trip_through_json():
    import json

    config = TrainConfig(ensemble_k=32, feature_scale=True)
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.ensemble_k == 32 and again.feature_scale is True


def test_a_study_file_may_search_both_knobs():
    import optuna

    from search.tuning.space import STACK_PARAMS, parse_space, replay_config, sample_config

    space = parse_space({"ensemble_k": [1, 8, 32], "feature_scale": [True, False]}, where="t.toml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        config = sample_config(trial, space, epochs=3, seed=0)
        assert config.ensemble_k == trial.params["ensemble_k"]
        assert config.feature_scale == trial.params["feature_scale"]
        assert replay_config(trial.params, space, epochs=3, seed=0) == config
        seen.add((config.ensemble_k, config.feature_scale))
        study.tell(trial, 0.0)
    assert len(seen) == 6
    assert "ensemble_k" in STACK_PARAMS and "feature_scale" not in STACK_PARAMS  # one stack shares k
    from search.errors import UserError

    for bad in ({"ensemble_k": [0, 8]}, {"ensemble_k": [1.5]}, {"feature_scale": ["yes"]}):
        with pytest.raises(UserError):
            parse_space(bad, where="t.toml")
