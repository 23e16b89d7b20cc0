"""Training-batch augmentation on the device, vectorized over the batch (airbench's approach).

Batches are rows of the normalized (or whitened) image tensor, [B, C*H*W]. A flip mirrors a
random half of them left-right; a shift moves each image by its own (dx, dy) in
[-translate, translate], filling the uncovered border with zeros, which is the mean pixel after
normalization. No Python loop over images, and only training batches are augmented: validation
and test never are.

On whitened data the same operations are applied to the whitened image. ZCA of natural images is
close to a convolution (its statistics barely depend on position), so flipping or shifting a
whitened image is close to whitening the flipped or shifted one, at 1/50th of the cost.
"""

from __future__ import annotations

import torch

from search.errors import UserError
from search.training.config import TrainConfig


def check_augmentable(config: TrainConfig, image_shape: tuple[int, ...] | None, dataset: str) -> None:
    """Refuse flips and shifts on data without a height and width to flip or shift."""
    if not config.augments:
        return
    if image_shape is None or len(image_shape) != 3 or min(image_shape[1:]) < 2:
        raise UserError(
            f"hflip and translate need image data; dataset {dataset!r} has shape {image_shape}: "
            "set hflip = false and translate = 0"
        )
    if config.translate >= min(image_shape[1:]):
        raise UserError(
            f"translate = {config.translate} pixels would shift {dataset!r}'s "
            f"{image_shape[1]}x{image_shape[2]} images out of the frame: use less than {min(image_shape[1:])}"
        )


class Augmenter:
    """The augmented rows of one training tensor, batch by batch. Its own generator: turning
    augmentation on changes neither the weight init nor the batch order of the same seed.

    Flips cost nothing per batch: a mirrored copy of the whole tensor is made once, and a batch
    takes each row from the plain or the mirrored half with the index_select it needs anyway.
    Shifts are one `gather` per batch: every (dy, dx) has a precomputed map from output pixel to
    source pixel, pointing at an appended zero where the shifted image uncovers its border.
    """

    def __init__(self, config: TrainConfig, image_shape: tuple[int, int, int], source: torch.Tensor):
        self.hflip, self.t = config.hflip, config.translate
        self.c, self.h, self.w = image_shape
        self.n, device = len(source), source.device
        self.gen = torch.Generator(device=device).manual_seed(config.seed + 0x5EED)
        self.source = source
        if self.hflip:
            mirrored = source.view(self.n, self.c, self.h, self.w).flip(3).reshape(self.n, -1)
            self.source = torch.cat([source, mirrored])
        if self.t:
            hw, span = self.h * self.w, 2 * self.t + 1
            rows = torch.arange(self.h, device=device).view(1, -1, 1)
            cols = torch.arange(self.w, device=device).view(1, 1, -1)
            d = torch.arange(-self.t, self.t + 1, device=device)
            dy, dx = d.repeat_interleave(span).view(-1, 1, 1), d.repeat(span).view(-1, 1, 1)
            src_r, src_c = rows - dy, cols - dx  # output (r, c) shows source (r - dy, c - dx)
            inside = (src_r >= 0) & (src_r < self.h) & (src_c >= 0) & (src_c < self.w)
            flat = src_r.clamp(0, self.h - 1) * self.w + src_c.clamp(0, self.w - 1)
            self.maps = torch.where(inside, flat, hw).view(span * span, hw)  # [shifts, H*W]

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows `idx` of the source tensor, each flipped and shifted at random: [len(idx), C*H*W]."""
        b = len(idx)
        if self.hflip:
            flip = torch.rand(b, device=idx.device, generator=self.gen) < 0.5
            idx = idx + flip * self.n
        x = self.source.index_select(0, idx)
        if not self.t:
            return x
        hw = self.h * self.w
        shift = torch.randint(0, len(self.maps), (b,), device=idx.device, generator=self.gen)
        index = self.maps.index_select(0, shift).view(b, 1, hw).expand(b, self.c, hw)
        padded = torch.cat([x.view(b, self.c, hw), x.new_zeros(b, self.c, 1)], 2)
        return torch.gather(padded, 2, index).view(b, -1)
