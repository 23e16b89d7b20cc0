"""Training-batch augmentation on the device, vectorized over the batch (airbench's approach).

Batches are rows of the normalized (or whitened) image tensor, [B, C*H*W]. A flip mirrors a
random half of them left-right; a shift moves each image by its own (dx, dy) in
[-translate, translate], filling the uncovered border with zeros, which is the mean pixel after
normalization. Both are one or two batched kernels (`torch.where`, `torch.gather`), no Python
loop over images, and only training batches are augmented: validation and test never are.

On whitened data the same operations are applied to the whitened image. ZCA of natural images is
close to a convolution (its statistics barely depend on position), so flipping or shifting a
whitened image is close to whitening the flipped or shifted one, at 1/50th of the cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
    """Flips and shifts a batch of rows. Its own generator: turning augmentation on changes
    neither the weight init nor the batch order of the same seed."""

    def __init__(self, config: TrainConfig, image_shape: tuple[int, int, int], device: torch.device):
        self.hflip, self.t = config.hflip, config.translate
        self.c, self.h, self.w = image_shape
        self.gen = torch.Generator(device=device).manual_seed(config.seed + 0x5EED)
        self.device = device
        if self.t:
            hp, wp = self.h + 2 * self.t, self.w + 2 * self.t
            # Flat index, inside a padded image, of each output pixel for a shift of (0, 0).
            rows = torch.arange(self.h, device=device).view(-1, 1) * wp
            self.base = (rows + torch.arange(self.w, device=device)).view(1, 1, -1)  # [1, 1, H*W]
            self.padded_size = hp * wp
            self.row_stride = wp

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b = len(x)
        img = x.view(b, self.c, self.h, self.w)
        if self.hflip:
            flip = torch.rand(b, device=self.device, generator=self.gen) < 0.5
            img = torch.where(flip.view(b, 1, 1, 1), img.flip(3), img)
        if self.t:
            span = 2 * self.t + 1
            shifts = torch.randint(0, span, (2, b), device=self.device, generator=self.gen)
            offset = (shifts[0] * self.row_stride + shifts[1]).view(b, 1, 1)  # dy rows, dx columns
            padded = F.pad(img, (self.t, self.t, self.t, self.t)).view(b, self.c, self.padded_size)
            index = (self.base + offset).expand(b, self.c, self.h * self.w)
            img = torch.gather(padded, 2, index)
        return img.reshape(b, -1)
