"""Training-batch augmentation on the device, vectorized over the batch (airbench's approach).

A flip mirrors a random half of a batch's images left-right; a shift moves each image by its own
(dx, dy) in [-translate, translate], filling the border with zeros (the mean pixel after
normalization). Only training batches are augmented. A batch is one `index_select`, augmented or
not: the training tensor is kept once per process as zero-padded images (and their mirror images),
and each row of a shifted image is a contiguous window of that copy, so the rows, the flip and the
shift are only where each window starts (`unfold`). On whitened data the same operations act on
the whitened image: ZCA of natural images is close to a convolution, so this is close to whitening
the shifted image, at 1/50th of the cost.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from search.errors import UserError
from search.training.config import TrainConfig

AUGMENT_SEED = 0x5EED  # added to a config's seed: the augmentation stream's own seed


def check_augmentable(config: TrainConfig, image_shape: tuple[int, ...] | None, dataset: str) -> None:
    """Refuse flips and shifts on data without a height and width to flip or shift."""
    if not config.needs_images:
        return
    if image_shape is None or len(image_shape) != 3 or min(image_shape[1:]) < 2:
        raise UserError(
            f"hflip, tta_hflip, translate and cutmix need image data; dataset {dataset!r} has shape "
            f"{image_shape}: set hflip = false, tta_hflip = false, translate = 0 and cutmix = 0"
        )
    if config.translate >= min(image_shape[1:]):
        raise UserError(
            f"translate = {config.translate} pixels would shift {dataset!r}'s "
            f"{image_shape[1]}x{image_shape[2]} images out of the frame: use less than {min(image_shape[1:])}"
        )


# id(training tensor) -> (a weak reference to it, its padded copy): tensors compare element by
# element, so they cannot be the keys of a WeakKeyDictionary.
_PADDED: dict[int, tuple[weakref.ref, PaddedImages]] = {}


class PaddedImages:
    """A training tensor [N, C*H*W] as zero-padded images (and their mirror images after them)."""

    def __init__(self, source: torch.Tensor, image_shape: tuple[int, int, int], t: int, mirrored: bool):
        c, h, w = image_shape
        self.n, self.t, self.c, self.h, self.w, self.mirrored = len(source), t, c, h, w, mirrored
        images = source.view(self.n, c, h, w)
        if mirrored:
            images = torch.cat([images, images.flip(3)])
        self.padded = F.pad(images, (t, t, t, t)) if t else images.contiguous()
        self.hp, self.wp = h + 2 * t, w + 2 * t
        self.rows = self.padded.view(len(self.padded), -1)  # without a shift: whole rows
        # Every W-pixel window of the padded copy, overlapping: a view, nothing copied.
        self.windows = self.padded.view(-1).unfold(0, w, 1)
        ch = torch.arange(c, device=source.device).view(-1, 1)
        r = torch.arange(h, device=source.device).view(1, -1)
        self.base = ((ch * self.hp + r + t) * self.wp + t).view(-1)  # unshifted image 0's rows
        self.image_size = c * self.hp * self.wp

    def take(self, rows: torch.Tensor, dy: torch.Tensor | None = None, dx: torch.Tensor | None = None):
        """Images `rows` (n + i: image i mirrored), each shifted by its (dy, dx): output pixel
        (r, c) shows the image's (r - dy, c - dx), or 0 outside it. [len(rows), C*H*W]."""
        if dy is None:
            if not self.t:
                return self.rows.index_select(0, rows)
            dy = dx = torch.zeros_like(rows)
        assert dx is not None, "dy and dx come together"
        start = rows * self.image_size - dy * self.wp - dx
        windows = self.windows.index_select(0, (start.view(-1, 1) + self.base).view(-1))
        return windows.view(len(rows), -1)


def padded_images(source: torch.Tensor, image_shape, t: int, mirrored: bool) -> PaddedImages:
    """A padded copy of `source` that serves shifts up to `t` (and flips, if `mirrored`): one per
    tensor and process, kept while the tensor lives and widened when a trial asks for more, so
    the trials of a search share it (for CIFAR-10 with 4-pixel shifts and flips, 1.7 GB)."""
    entry = _PADDED.get(id(source))
    held = entry[1] if entry is not None and entry[0]() is source else None
    if held is not None and held.t >= t and (held.mirrored or not mirrored):
        return held
    if held is not None:
        t, mirrored = max(t, held.t), mirrored or held.mirrored
    images = PaddedImages(source, tuple(image_shape), t, mirrored)
    key = id(source)
    _PADDED[key] = (weakref.ref(source, lambda _ref: _PADDED.pop(key, None)), images)
    return images


def _offsets(shift: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift number s of (2t+1)^2, dy major, as its (dy, dx) in [-t, t]."""
    span = 2 * t + 1
    return shift // span - t, shift % span - t


class Augmenter:
    """The augmented training rows of K members at once. Each member draws, per batch, a flip for
    every image (a coin) and then a shift (one of (2t+1)^2) from its own generator, seeded apart
    from its weight init and batch order (turning augmentation on changes neither), so its rows
    do not depend on its neighbours; all K batches then come out of one index_select. Members
    without a flip read the plain images; without a shift, shift zero."""

    def __init__(self, configs: list[TrainConfig], image_shape: tuple[int, int, int], source: torch.Tensor):
        self.n, device = len(source), source.device
        self.flips = [c.hflip for c in configs]
        self.ts = [c.translate for c in configs]
        self.gens = [torch.Generator(device=device).manual_seed(c.seed + AUGMENT_SEED) for c in configs]
        self.images = padded_images(source, image_shape, max(self.ts), any(self.flips))

    def keep(self, rows: list[int]) -> None:
        """Only these members (positions in the current stack) go on."""
        self.flips = [self.flips[r] for r in rows]
        self.ts = [self.ts[r] for r in rows]
        self.gens = [self.gens[r] for r in rows]

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """idx [K, B] (member k's batch in row k) -> the augmented rows, [K*B, C*H*W]."""
        b, device = idx.shape[1], idx.device
        flips, dys, dxs = [], [], []
        for flip, t, g in zip(self.flips, self.ts, self.gens, strict=True):
            coin = (torch.rand(b, device=device, generator=g) < 0.5) if flip else None
            flips.append(coin * self.n if coin is not None else idx.new_zeros(b))
            if t:
                span = 2 * t + 1
                dy, dx = _offsets(torch.randint(0, span * span, (b,), device=device, generator=g), t)
            else:
                dy = dx = idx.new_zeros(b)
            dys.append(dy)
            dxs.append(dx)
        rows = (idx + torch.stack(flips)).view(-1) if any(self.flips) else idx.reshape(-1)
        if not any(self.ts):
            return self.images.take(rows)
        return self.images.take(rows, torch.cat(dys), torch.cat(dxs))
