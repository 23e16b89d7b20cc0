"""fit() trains as PyTorch's own modules and optimizers would, reports every epoch, stops on request,
and survives divergence.

The engine (search.training.stack, optim, fit) is checked against an independent training loop
written here with `nn.Sequential`, `torch.optim`'s optimizer classes, `LambdaLR` and
`F.cross_entropy`. Both run in float64, where rounding is 1e-16: the two compute the same sums in
other orders, and training amplifies that over these few epochs to 1e-15 (1e-11 for Adam and
RMSprop, which divide by each gradient's running size; measured: the largest relative gap across
the knobs below). `RTOL` = 1e-9 sits two to six orders above that and far
below what any knob does to the loss (a dropped label smoothing of 0.1, a wrong momentum: 1e-3 and
more), so the bound holds on any CPU and a broken knob fails it.
"""

import dataclasses
import math
import time

import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from helpers import StreamDropout, as_float64, assert_same_history, reference_optimizer
from torch import nn
from torch.optim.swa_utils import AveragedModel

from search.artifacts.evaluation import evaluate
from search.data.datasets import load_dataset
from search.training import stack
from search.training.augment import Augmenter
from search.training.config import TrainConfig
from search.training.fit import DROPOUT_SEED, fit, fit_stacked
from search.training.mix import MIX_SEED
from search.training.model import Block, build_mlp

RTOL = 1e-9

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0)


@pytest.fixture(scope="module")
def digits64(digits):
    return as_float64(digits)


class _Scale(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.s = nn.Parameter(torch.ones(features, dtype=torch.float64))

    def forward(self, x):
        return x * self.s


def _mixed(config: TrainConfig, image_shape, xb: torch.Tensor, gen: torch.Generator):
    """MixUp or CutMix as the papers define them, with the engine's draws in its documented order
    (search.training.mix): (batch, lam, partner permutation), or (batch, 1, None) unmixed."""
    if not (config.mixup or config.cutmix):
        return xb, 1.0, None
    cut = config.cutmix > 0 and (not config.mixup or bool(torch.rand((), generator=gen) < 0.5))
    alpha = config.cutmix if cut else config.mixup
    lam = float(scipy.stats.beta(alpha, alpha).ppf(torch.rand((), dtype=torch.float64, generator=gen).item()))
    perm = torch.randperm(len(xb), generator=gen)
    if not cut:
        return lam * xb + (1 - lam) * xb[perm], lam, perm
    c, h, w = image_shape
    cy, cx = int(torch.randint(0, h, (), generator=gen)), int(torch.randint(0, w, (), generator=gen))
    half_h, half_w = int(h * math.sqrt(1 - lam)) // 2, int(w * math.sqrt(1 - lam)) // 2
    top, bottom = max(cy - half_h, 0), min(cy + half_h, h)
    left, right = max(cx - half_w, 0), min(cx + half_w, w)
    images = xb.view(-1, c, h, w).clone()
    images[:, :, top:bottom, left:right] = xb.view(-1, c, h, w)[perm][:, :, top:bottom, left:right]
    return images.view(len(xb), -1), 1 - (bottom - top) * (right - left) / (h * w), perm


def reference_fit(config: TrainConfig, data) -> list[tuple[float, float, float]]:
    """(train loss, val loss, val accuracy) per epoch, from PyTorch's modules and optimizers."""
    torch.manual_seed(config.seed)
    model = build_mlp(config.replace(feature_scale=False), in_features=data.in_features,
                      n_classes=data.n_classes).double()  # fmt: skip
    if config.feature_scale:  # RealMLP's scale layer, written here: x * s, s from 1
        model = nn.Sequential(_Scale(data.in_features), *model)
    # `ema`: torch's own AveragedModel, with the engine's warm-up of the decay
    decay = lambda t: min(config.ema, (1 + int(t)) / (10 + int(t)))  # noqa: E731 (t: a tensor)
    averaged = AveragedModel(model, avg_fn=lambda a, p, n: decay(n) * a + (1 - decay(n)) * p)
    drops = torch.Generator().manual_seed(config.seed + DROPOUT_SEED)
    for i, m in enumerate(model):
        if isinstance(m, nn.Dropout):
            model[i] = StreamDropout(m.p, drops)
        if isinstance(m, Block) and isinstance(m.drop, nn.Dropout):
            m.drop = StreamDropout(m.drop.p, drops)
    x, y, n, bs = data.x_train, data.y_train, len(data.x_train), config.batch_size
    optimizer, schedule, n_batches = reference_optimizer(model, config, n)
    augment = Augmenter([config], data.image_shape, x) if config.augments else None
    batches = torch.Generator().manual_seed(config.seed)
    mixes = torch.Generator().manual_seed(config.seed + MIX_SEED)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    out = []
    for _ in range(config.epochs):
        model.train()
        order = torch.randperm(n, generator=batches)
        losses = []
        for b in range(n_batches):
            idx = order[b * bs : (b + 1) * bs]
            xb = augment.take(idx.view(1, -1)) if augment is not None else x[idx]
            xb, lam, partner = _mixed(config, data.image_shape, xb, mixes)
            logits = model(xb)
            loss = F.cross_entropy(logits, y[idx], label_smoothing=config.label_smoothing)
            if partner is not None:
                partner_loss = F.cross_entropy(
                    logits, y[idx][partner], label_smoothing=config.label_smoothing
                )
                loss = lam * loss + (1 - lam) * partner_loss
            loss = loss + config.l1 * sum(m.weight.abs().sum() for m in linears)
            optimizer.zero_grad()
            loss.backward()
            for i, m in enumerate(model[:-1]):  # a bias right before BatchNorm: its true gradient
                if isinstance(m, nn.Linear) and isinstance(model[i + 1], nn.BatchNorm1d):  # is zero
                    m.bias.grad.zero_()
            optimizer.step()
            schedule.step()
            averaged.update_parameters(model)
            losses.append(loss.item())
        model.eval()
        scored = model
        if config.ema > 0:  # the average's weights with the live BatchNorm statistics
            scored = averaged.module.eval()
            for mine, live in zip(scored.buffers(), model.buffers(), strict=True):
                mine.copy_(live)
        with torch.no_grad():
            logits = scored(data.x_val)
            val_loss = F.cross_entropy(logits, data.y_val).item()
            val_score = (logits.argmax(1) == data.y_val).double().mean().item()
        out.append((sum(losses) / n_batches, val_loss, val_score))
    return out


BASE = TrainConfig(hidden=(32, 24), epochs=3, batch_size=64, lr=0.05, seed=1)
KNOBS = {
    "plain sgd": dict(batchnorm=False),
    "momentum, weight decay": dict(momentum=0.5, weight_decay=1e-2),
    "batchnorm momentum": dict(bn_momentum=0.37),
    "dropout": dict(dropout=0.3),
    "l1": dict(l1=1e-3),
    "label smoothing": dict(label_smoothing=0.2),
    "adam": dict(optimizer="adam", lr=3e-3),
    "adamw": dict(optimizer="adamw", lr=3e-3, weight_decay=1e-2),
    "rmsprop": dict(optimizer="rmsprop", lr=1e-3, momentum=0.5),
    "cosine with warm-up": dict(schedule="cosine", warmup=0.2),
    "one-cycle": dict(schedule="onecycle", warmup=0.3),
    "gelu": dict(activation="gelu"),
    "sigmoid, no batchnorm": dict(activation="sigmoid", batchnorm=False),
    "layernorm": dict(batchnorm=False, layernorm=True),
    "residual blocks, batchnorm, dropout, l1": dict(
        hidden=(24, 24, 24), residual=True, expansion=2, dropout=0.2, l1=1e-4
    ),
    "residual blocks, layernorm, adamw": dict(
        hidden=(16, 16), residual=True, batchnorm=False, layernorm=True, optimizer="adamw", lr=3e-3
    ),
    "residual blocks, no norm, sigmoid": dict(
        hidden=(16, 16), residual=True, batchnorm=False, activation="sigmoid"
    ),
    "layernorm, adamw, dropout, ema": dict(
        batchnorm=False, layernorm=True, optimizer="adamw", lr=3e-3, weight_decay=1e-2, dropout=0.2, ema=0.9
    ),
    "flips and shifts": dict(hflip=True, translate=2),
    "odd last batch": dict(batch_size=100),  # 1,149 rows: a last batch of 49
    "linear model": dict(hidden=()),
    "ema with batchnorm": dict(ema=0.9),
    "ema, adam, dropout": dict(ema=0.95, optimizer="adam", lr=3e-3, dropout=0.2, batchnorm=False),
    "mixup": dict(mixup=0.4),
    "cutmix, label smoothing": dict(cutmix=1.0, label_smoothing=0.1),
    "cutmix or mixup, flips": dict(cutmix=1.0, mixup=0.2, hflip=True),
    "feature scale": dict(feature_scale=True),
    "feature scale, adamw": dict(feature_scale=True, optimizer="adamw", lr=3e-3, weight_decay=0.1),
    "feature scale, linear model, l1": dict(feature_scale=True, hidden=(), l1=1e-3),
}


@pytest.mark.parametrize("knob", sorted(KNOBS))
def test_each_knob_trains_as_pytorchs_own_modules_and_optimizers_do(digits64, knob):
    config = BASE.replace(**KNOBS[knob])
    ours = fit(config, digits64)
    theirs = reference_fit(config, digits64)
    assert len(theirs) == config.epochs
    assert_same_history(ours, theirs, RTOL)


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_the_returned_model_scores_as_the_engine_scored_it(digits64, ema):
    # with `ema`, the returned weights are the average, the ones validation scored
    config = TrainConfig(hidden=(64, 32), dropout=0.2, optimizer="adam", lr=3e-3, epochs=6, ema=ema)
    result = fit(config, digits64)
    assert result.epochs_run == 6 and not result.stopped and result.diverged is None
    assert result.val_score > 0.9
    # The portable nn.Sequential against the engine's own scoring, in float64: the same model.
    loss, acc = evaluate(result.model, digits64.x_val, digits64.y_val)
    assert acc == result.val_score
    assert loss == pytest.approx(result.history[-1].val_loss, rel=RTOL)


@pytest.mark.parametrize("whiten", ["none", "zca"])
def test_test_time_flips_score_validation_as_the_returned_model_does(digits64, whiten):
    # With ZCA the returned model has the whitening folded into its first layer and mirrors the
    # plain inputs: the engine must score whiten(mirror(x)), not mirror(whiten(x)).
    config = TrainConfig(hidden=(32,), optimizer="adam", lr=3e-3, epochs=3, hflip=True, tta_hflip=True,
                         whiten=whiten)  # fmt: skip
    result = fit(config, digits64)
    loss, acc = evaluate(result.model, digits64.x_val, digits64.y_val)
    assert acc == result.val_score
    assert loss == pytest.approx(result.history[-1].val_loss, rel=RTOL)
    # Stacked beside a member without the knob, each scores as it does alone.
    plain = config.replace(tta_hflip=False)
    both = fit_stacked([config, plain], digits64)
    alone = fit(plain, digits64)
    assert both[0].history[-1].val_loss == pytest.approx(result.history[-1].val_loss, rel=RTOL)
    assert both[1].history[-1].val_loss == pytest.approx(alone.history[-1].val_loss, rel=RTOL)
    assert alone.history[-1].val_loss != pytest.approx(result.history[-1].val_loss, rel=1e-4)


def test_a_bias_right_before_batchnorm_keeps_its_initial_value(digits):
    """Its true gradient is zero (BatchNorm subtracts the batch mean); Adam must not turn
    rounding noise into steps. Without BatchNorm the same bias trains."""
    config = TrainConfig(hidden=(16,), optimizer="adam", lr=1e-2, epochs=2, seed=5)
    torch.manual_seed(config.seed)
    initial = build_mlp(config, in_features=digits.in_features, n_classes=digits.n_classes)[0].bias
    assert torch.equal(fit(config, digits).model[0].bias, initial)
    trained = fit(config.replace(batchnorm=False), digits).model[0].bias
    assert not torch.allclose(trained, initial)


def test_same_seed_trains_the_same_model_on_cpu(digits):
    config = TrainConfig(hidden=(32,), dropout=0.2, epochs=2, seed=3, hflip=True, translate=1)
    a, b = fit(config, digits), fit(config, digits)
    assert [m.val_score for m in a.history] == [m.val_score for m in b.history]
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_bf16_on_the_cpu_trains_in_bf16_to_float32s_accuracy(digits, monkeypatch):
    """SEARCH_PRECISION=bf16 (auto's choice on AVX512-BF16 and AMX CPUs) changes the arithmetic,
    so the weights differ from float32's, but not what the model learns."""
    config = TrainConfig(hidden=(64, 32), optimizer="adamw", lr=3e-3, epochs=6, seed=2)
    monkeypatch.setenv("SEARCH_PRECISION", "fp32")
    full = fit(config, digits)
    monkeypatch.setenv("SEARCH_PRECISION", "bf16")
    half = fit(config, digits)
    assert not torch.allclose(full.model[0].weight, half.model[0].weight, atol=1e-4)
    assert half.model[0].weight.dtype == torch.float32  # the master weights stay float32
    assert half.val_score > 0.9 and abs(half.val_score - full.val_score) < 0.03


def test_on_epoch_sees_every_epoch_and_can_stop_training(digits):
    seen = []

    def on_epoch(m):
        seen.append(m.epoch)
        return m.epoch == 2

    result = fit(TrainConfig(hidden=(16,), epochs=5), digits, on_epoch=on_epoch)
    assert seen == [1, 2] and result.stopped and result.epochs_run == 2


def test_nan_loss_ends_training_with_a_reason_instead_of_raising(digits):
    poisoned = digits.x_train.clone()
    poisoned[5] = float("inf")
    result = fit(TrainConfig(hidden=(32,), epochs=4), dataclasses.replace(digits, x_train=poisoned))
    assert result.epochs_run == 0
    assert result.diverged is not None and "became" in result.diverged
    assert not math.isfinite(float(result.diverged.split("became ")[1].split()[0]))


def test_train_seconds_exclude_time_spent_in_the_callback(digits):
    started = time.perf_counter()
    result = fit(TrainConfig(hidden=(16,), epochs=2), digits, on_epoch=lambda m: time.sleep(0.3))
    wall = time.perf_counter() - started
    assert result.train_seconds <= wall - 0.6 + 0.05


def test_epoch_seconds_leave_validation_out(digits, monkeypatch):
    real_predict = stack.StackedMLP.predict

    def slow_predict(*args, **kwargs):
        time.sleep(0.25)
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(stack.StackedMLP, "predict", slow_predict)
    started = time.perf_counter()
    result = fit(TrainConfig(hidden=(16,), epochs=3), digits)
    wall = time.perf_counter() - started
    assert all(m.seconds > 0 for m in result.history)
    assert result.train_seconds <= wall - 3 * 0.25  # the 0.75 s spent validating is not training


def test_full_training_uses_train_and_validation(digits, monkeypatch):
    seen_sizes = []
    orig = torch.randperm

    def spy(n, *args, **kwargs):
        seen_sizes.append(n)
        return orig(n, *args, **kwargs)

    monkeypatch.setattr(torch, "randperm", spy)
    fit(TrainConfig(hidden=(8,), epochs=1), digits, include_val=True)
    assert seen_sizes == [len(digits.x_train) + len(digits.x_val)]


def test_a_stopped_fit_is_a_truncated_run_of_the_full_budgets_schedule(digits):
    config = TrainConfig(hidden=(32,), optimizer="sgd", lr=0.05, schedule="onecycle", warmup=0.3, epochs=6)
    full = fit(config, digits)
    stopped = fit(config, digits, on_epoch=lambda m: m.epoch == 2)
    short = fit(config.replace(epochs=2), digits)  # a schedule sized for 2 epochs is another curve
    assert stopped.stopped and stopped.epochs_run == 2
    assert [m.train_loss for m in stopped.history] == [m.train_loss for m in full.history[:2]]
    assert [m.train_loss for m in short.history] != [m.train_loss for m in full.history[:2]]
