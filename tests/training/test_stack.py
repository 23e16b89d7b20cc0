"""A stack's contract: each member trains as it does alone (`fit`, a stack of one), whatever its
neighbours do: their widths, knobs, early stops, divergence, or an out-of-memory split.

The tolerance: in float64 a member's per-epoch losses equal its lone fit's within a relative 1e-9.
The two compute the same sums with other blockings (a batched matmul over K members, padded
widths), so they round differently at 1e-16, which these few epochs amplify to 1e-15, or 1e-11
where Adam or RMSprop divide by the gradients' running size (measured across the knobs below). A
knob a member took from a neighbour moves its loss by 1e-3 or more. Validation accuracy may differ
by one sample, an argmax flipped on a near-tie.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import as_float64
from torch import nn

from search.data.datasets import load_dataset
from search.training import plan, stack
from search.training.config import TrainConfig
from search.training.fit import fit, fit_stacked
from search.training.model import build_mlp
from search.training.plan import stack_capacity
from search.training.stack import StackedMLP, layout_of

RTOL = 1e-9

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def digits():
    return as_float64(load_dataset("digits", device=torch.device("cpu")))


BASE = TrainConfig(hidden=(32, 24), epochs=3, batch_size=64, lr=0.05, seed=1)

# Each per-member knob, as three members that differ in it (and in their seeds).
KNOBS = {
    "lr": [dict(lr=0.01), dict(lr=0.05), dict(lr=0.2)],
    "momentum": [dict(momentum=0.0), dict(momentum=0.5), dict(momentum=0.95)],
    "weight_decay": [dict(weight_decay=0.0), dict(weight_decay=1e-3), dict(weight_decay=5e-2)],
    "l1": [dict(l1=0.0), dict(l1=1e-5), dict(l1=1e-3)],
    "dropout": [dict(dropout=0.0), dict(dropout=0.2), dict(dropout=0.5)],
    "bn_momentum": [dict(bn_momentum=0.01), dict(bn_momentum=0.1), dict(bn_momentum=0.5)],
    "activation": [dict(activation="relu"), dict(activation="sigmoid"), dict(activation="gelu")],
    "optimizer": [
        dict(optimizer="adam", lr=3e-3),
        dict(optimizer="adamw", lr=3e-3, weight_decay=1e-2),
        dict(optimizer="rmsprop", lr=1e-3, momentum=0.5, batchnorm=False),
    ],
    "schedule": [dict(schedule="constant"), dict(schedule="cosine"), dict(schedule="onecycle", warmup=0.2)],
    "warmup": [dict(warmup=0.0, schedule="cosine"), dict(warmup=0.1, schedule="cosine"), dict(warmup=0.5)],
    "label_smoothing": [dict(label_smoothing=0.0), dict(label_smoothing=0.1), dict(label_smoothing=0.3)],
    "hflip": [dict(hflip=False), dict(hflip=True), dict(hflip=True, translate=1)],
    "translate": [dict(translate=0), dict(translate=1), dict(translate=3)],
    "widths": [dict(hidden=(32, 24)), dict(hidden=(8, 40)), dict(hidden=(17, 3))],
    "batchnorm": [dict(batchnorm=True), dict(batchnorm=False), dict(batchnorm=False, activation="tanh")],
    # a narrower LayerNorm member's mean and variance must count only its own units
    "norm": [dict(), dict(batchnorm=False, layernorm=True, hidden=(17, 40)), dict(batchnorm=False)],
    # residual blocks: a narrower member's stream and inner units padded (sigmoid(0) is not 0)
    "residual": [
        dict(hidden=(24, 24, 24), residual=True, expansion=2, dropout=0.2),
        dict(hidden=(10, 10, 10), residual=True, expansion=2, batchnorm=False, layernorm=True, l1=1e-4),
        dict(hidden=(16, 16, 16), residual=True, expansion=2, batchnorm=False, activation="sigmoid"),
    ],
    # (a LayerNorm over 3 ReLU units is too ill-conditioned for RTOL: 1e-14 grows 1000-fold an epoch)
    "layernorm, widths": [
        dict(batchnorm=False, layernorm=True, hidden=h) for h in ((32, 24), (8, 40), (17, 6))
    ],
    "ema": [dict(ema=0.0), dict(ema=0.9), dict(ema=0.99, optimizer="adam", lr=3e-3)],
    "mixup, cutmix": [dict(mixup=0.0), dict(mixup=0.4), dict(cutmix=1.0, hflip=True)],
    # a member without the scale beside two with it (weight decay must not move its unused one)
    "feature_scale": [
        dict(feature_scale=False, weight_decay=1e-2),
        dict(feature_scale=True, weight_decay=1e-2),
        dict(feature_scale=True, optimizer="adam", lr=3e-3, hidden=(8, 40)),
    ],
    # one stack shares k; each member's own sub-members, widths, norms and knobs
    "ensemble_k": [
        dict(ensemble_k=4, dropout=0.2),
        dict(ensemble_k=4, hidden=(17, 40), batchnorm=False, layernorm=True, feature_scale=True),
        dict(ensemble_k=4, hidden=(8, 40), batchnorm=False, activation="sigmoid", optimizer="adam", lr=3e-3),
    ],
    "ensemble_k, residual": [
        dict(ensemble_k=3, hidden=(24, 24, 24), residual=True, expansion=2, dropout=0.2),
        dict(ensemble_k=3, hidden=(10, 10, 10), residual=True, expansion=2, batchnorm=False, l1=1e-4),
        dict(
            ensemble_k=3, hidden=(16,) * 3, residual=True, expansion=2, batchnorm=False, activation="sigmoid"
        ),
    ],
}


def members(changes: list[dict]) -> list[TrainConfig]:
    return [BASE.replace(seed=10 + i, **c) for i, c in enumerate(changes)]


def assert_same_training(alone, together, n_val: int):
    assert len(alone.history) == len(together.history)
    for a, s in zip(alone.history, together.history, strict=True):
        assert a.epoch == s.epoch
        assert math.isclose(a.train_loss, s.train_loss, rel_tol=RTOL), (a, s)
        assert math.isclose(a.val_loss, s.val_loss, rel_tol=RTOL), (a, s)
        assert abs(a.val_score - s.val_score) <= 1.0 / n_val + 1e-12, (a, s)
    assert alone.stopped == together.stopped and alone.diverged == together.diverged


@pytest.mark.parametrize("knob", sorted(KNOBS))
def test_each_per_member_knob_trains_as_it_does_alone(digits, knob):
    configs = members(KNOBS[knob])
    together = fit_stacked(configs, digits)
    for config, result in zip(configs, together, strict=True):
        alone = fit(config, digits)
        assert_same_training(alone, result, len(digits.y_val))
        # The returned model holds the member's own weights, unpadded.
        for (name, a), (_, s) in zip(
            alone.model.state_dict().items(), result.model.state_dict().items(), strict=True
        ):
            assert a.shape == s.shape, name
            assert torch.allclose(a, s, rtol=1e-6, atol=1e-9), name


def test_a_member_stopped_midway_leaves_and_the_others_are_untouched(digits):
    configs = members(
        [dict(), dict(hidden=(40, 24), dropout=0.3), dict(optimizer="adam", lr=3e-3, batchnorm=False)]
    )
    configs = [c.replace(epochs=4) for c in configs]
    calls = []

    def on_epoch(metrics):
        calls.extend((i, m.epoch) for i, m in metrics.items())
        return [1] if 1 in metrics and metrics[1].epoch == 2 else []  # the widest, after epoch 2

    together = fit_stacked(configs, digits, on_epoch=on_epoch)
    assert together[1].stopped and together[1].epochs_run == 2
    assert sorted(calls) == sorted(
        [(0, e) for e in range(1, 5)] + [(1, 1), (1, 2)] + [(2, e) for e in range(1, 5)]
    )
    for i, config in enumerate(configs):
        alone = fit(config, digits, on_epoch=(lambda m: m.epoch == 2) if i == 1 else None)
        assert_same_training(alone, together[i], len(digits.y_val))


def test_a_diverging_member_ends_with_its_reason_and_the_others_are_untouched(digits):
    configs = members([dict(), dict(lr=1e200, batchnorm=False, momentum=0.99), dict(dropout=0.2)])
    together = fit_stacked(configs, digits)
    alone = [fit(c, digits) for c in configs]
    assert alone[1].diverged, "the test's diverging config must diverge alone too"
    assert together[1].diverged == alone[1].diverged
    for i in (0, 2):
        assert together[i].diverged is None
        assert_same_training(alone[i], together[i], len(digits.y_val))


def test_out_of_memory_splits_the_stack_and_no_epoch_is_reported_twice(digits, monkeypatch):
    configs = members([dict(), dict(lr=0.1), dict(dropout=0.2), dict(hidden=(16, 16))])
    real_forward = stack.StackedMLP.forward
    failed = []

    def forward(self, x, **kw):
        # The first stack of all four fails in its second epoch, once: as CUDA would, mid-run.
        if len(self.configs) == 4 and kw.get("train") and getattr(self, "_steps", 0) > 30 and not failed:
            failed.append(True)
            raise torch.OutOfMemoryError("injected")
        self._steps = getattr(self, "_steps", 0) + 1
        return real_forward(self, x, **kw)

    monkeypatch.setattr(stack.StackedMLP, "forward", forward)
    calls = []
    together = fit_stacked(
        configs, digits, on_epoch=lambda ms: calls.extend((i, m.epoch) for i, m in ms.items())
    )
    assert failed, "the injected error must have fired"
    assert sorted(calls) == sorted((i, e) for i in range(4) for e in range(1, 4))
    for config, result in zip(configs, together, strict=True):
        assert_same_training(fit(config, digits), result, len(digits.y_val))


@pytest.mark.parametrize(
    "other",
    [
        dict(hidden=(32,)),
        dict(batch_size=32),
        dict(hidden=(32, 32), residual=True),
        dict(hidden=(32, 32), residual=True, expansion=2),
        dict(ensemble_k=4),
    ],  # fmt: skip
    ids=["depth", "batch size", "blocks", "expansion", "ensemble size"],
)
def test_members_that_differ_in_depth_blocks_or_batch_size_are_refused(digits, other):
    first = BASE.replace(hidden=(32, 32), residual=True) if "expansion" in other else BASE
    with pytest.raises(ValueError, match="share depth, blocks, ensemble size, batch size"):
        fit_stacked([first, BASE.replace(**other)], digits)


def test_l1_is_the_sum_of_the_weight_matrices_magnitudes_never_biases_or_batchnorm():
    config = TrainConfig(hidden=(6, 5), l1=0.0)
    torch.manual_seed(0)
    model = build_mlp(config, in_features=4, n_classes=3)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-1, 1)  # biases and BatchNorm's affine weights far from zero too
    stacks = [
        StackedMLP([c], [model], layout_of([c], 4, 3), "cpu", torch.float32)
        for c in (config, config.replace(l1=0.01))
    ]
    logits, y = torch.randn(1, 7, 3), torch.randint(0, 3, (1, 7))
    gap = (stacks[1].loss(logits, y) - stacks[0].loss(logits, y)).item()
    expected = 0.01 * sum(m.weight.abs().sum().item() for m in model if isinstance(m, nn.Linear))
    assert gap == pytest.approx(expected, rel=1e-5)


def test_padding_share_counts_the_padded_multiply_adds(digits):
    a, b = BASE.replace(hidden=(32, 24), epochs=1), BASE.replace(hidden=(8, 40), epochs=1)
    # Padded layers: 64-32-40-10 for both; real ones 64-32-24-10 and 64-8-40-10.
    padded = 2 * (64 * 32 + 32 * 40 + 40 * 10)
    real = (64 * 32 + 32 * 24 + 24 * 10) + (64 * 8 + 8 * 40 + 40 * 10)
    assert layout_of([a, b], 64, 10).widths == (32, 40)
    results = fit_stacked([a, b], digits)
    assert all(math.isclose(r.stack_padding, 1 - real / padded) for r in results)
    assert fit_stacked([a, a.replace(seed=9)], digits)[0].stack_padding == 0.0


def test_stack_capacity_follows_the_devices_free_memory(digits, monkeypatch):
    per_member = plan.member_bytes(BASE, digits)
    monkeypatch.setattr(plan, "free_bytes", lambda device: int(per_member * 10 / plan.MEMORY_SHARE))
    assert stack_capacity(BASE, digits) == 10
    monkeypatch.setattr(plan, "free_bytes", lambda device: 1)
    assert stack_capacity(BASE, digits) == 1  # never below one: a trial alone always runs
