"""Flips and shifts act on training batches only, image by image as a loop would."""

import pytest
import torch
import torch.nn.functional as F
from helpers import as_float64

from search.artifacts.evaluation import evaluate
from search.data.datasets import load_dataset
from search.errors import UserError
from search.training.augment import Augmenter, check_augmentable
from search.training.config import TrainConfig
from search.training.fit import fit

SHAPE = (3, 6, 5)


def _batch(n=64):
    return torch.randn(n, SHAPE[0] * SHAPE[1] * SHAPE[2], generator=torch.Generator().manual_seed(0))


def _take(config, x, idx=None):
    """Rows `idx` (all by default) of `x`, augmented as `fit` augments its training batches."""
    idx = torch.arange(len(x)) if idx is None else idx
    return Augmenter([config], SHAPE, x).take(idx.view(1, -1))


def _shifted(img: torch.Tensor, dy: int, dx: int, t: int) -> torch.Tensor:
    """One image moved by (dy, dx) in [-t, t], zeros where it uncovers: a plain slice of a pad."""
    _, h, w = img.shape
    padded = F.pad(img, (t, t, t, t))
    return padded[:, t - dy : t - dy + h, t - dx : t - dx + w]


def test_hflip_mirrors_about_half_the_images_and_leaves_the_rest():
    x = _batch()
    out = _take(TrainConfig(hflip=True), x).view(-1, *SHAPE)
    imgs = x.view(-1, *SHAPE)
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, imgs, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, imgs, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 16 < sum(flipped) < 48


def test_translate_equals_a_zero_padded_shift_of_each_image():
    t = 2
    x = _batch()
    out = _take(TrainConfig(translate=t), x).view(-1, *SHAPE)
    shifts_seen = set()
    for o, img in zip(out, x.view(-1, *SHAPE), strict=True):
        match = [
            (dy, dx)
            for dy in range(-t, t + 1)
            for dx in range(-t, t + 1)
            if torch.equal(o, _shifted(img, dy, dx, t))
        ]
        assert match, "an output that is no shift of its input"
        shifts_seen.add(match[0])
    assert len(shifts_seen) > 10  # per-image shifts, not one for the whole batch


def test_augmentation_changes_neither_shape_nor_the_input():
    x = _batch()
    before = x.clone()
    out = _take(TrainConfig(hflip=True, translate=1), x)
    assert out.shape == x.shape and torch.equal(x, before)


def test_flips_and_shifts_together_are_a_shift_of_the_image_or_of_its_mirror():
    t, x = 1, _batch()
    out = _take(TrainConfig(hflip=True, translate=t), x).view(-1, *SHAPE)
    for o, img in zip(out, x.view(-1, *SHAPE), strict=True):
        candidates = [_shifted(im, dy, dx, t) for im in (img, img.flip(2))
                      for dy in range(-t, t + 1) for dx in range(-t, t + 1)]  # fmt: skip
        assert any(torch.equal(o, cand) for cand in candidates)


def test_a_batch_takes_the_rows_it_is_asked_for():
    x = _batch()
    idx = torch.tensor([5, 0, 63, 5])
    plain = _take(TrainConfig(translate=1), x, idx).view(-1, *SHAPE)
    for o, i in zip(plain, idx.tolist(), strict=True):
        img = x[i].view(*SHAPE)
        assert any(torch.equal(o, _shifted(img, dy, dx, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def test_flips_and_shifts_need_an_image():
    with pytest.raises(UserError, match="need image data"):
        check_augmentable(TrainConfig(hflip=True), (64, 1, 1), "tabular")
    with pytest.raises(UserError, match="need image data"):
        check_augmentable(TrainConfig(tta_hflip=True), None, "table")
    with pytest.raises(UserError, match="need image data"):
        check_augmentable(TrainConfig(cutmix=1.0), None, "table")
    check_augmentable(TrainConfig(mixup=0.4), None, "table")  # MixUp blends rows of any shape
    with pytest.raises(UserError, match="out of the frame"):
        check_augmentable(TrainConfig(translate=8), (1, 8, 8), "digits")
    check_augmentable(TrainConfig(), (64, 1, 1), "tabular")  # nothing asked: nothing refused


def test_fit_refuses_augmentation_on_data_without_images():
    data = load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0)
    flat = type(data)(**{**data.__dict__, "image_shape": (64, 1, 1)})
    with pytest.raises(UserError, match="need image data"):
        fit(TrainConfig(hidden=(8,), hflip=True, epochs=1), flat)


def test_validation_is_never_augmented():
    data = load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0)
    data = as_float64(data)  # float64: the engine's scoring and the portable model's agree to 1e-15
    result = fit(TrainConfig(hidden=(32,), hflip=True, translate=1, epochs=2), data)
    loss, acc = evaluate(result.model, data.x_val, data.y_val)  # the plain validation images
    assert result.history[-1].val_loss == pytest.approx(loss, rel=1e-9)
    assert result.history[-1].val_score == acc
    plain = fit(TrainConfig(hidden=(32,), epochs=2), data)
    assert plain.history[-1].train_loss != result.history[-1].train_loss


def test_one_padded_copy_serves_every_trial_and_grows_only_when_asked_for_more():
    from search.training.augment import padded_images

    x = _batch()
    wide = padded_images(x, SHAPE, 3, True)
    assert padded_images(x, SHAPE, 1, False) is wide  # smaller shifts, no flips: the same copy
    t = 1
    out = _take(TrainConfig(translate=t), x).view(-1, *SHAPE)  # read through the 3-pixel copy
    for o, img in zip(out, x.view(-1, *SHAPE), strict=True):
        assert any(
            torch.equal(o, _shifted(img, dy, dx, t)) for dy in range(-t, t + 1) for dx in range(-t, t + 1)
        )
    grown = padded_images(x, SHAPE, 4, False)
    assert grown is not wide and grown.t == 4 and grown.mirrored  # widened, flips kept
