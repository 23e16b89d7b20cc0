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
            self.maps = shift_maps(self.t, self.h, self.w, device)

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows `idx` of the source tensor, each flipped and shifted at random: [len(idx), C*H*W]."""
        b = len(idx)
        if self.hflip:
            flip = torch.rand(b, device=idx.device, generator=self.gen) < 0.5
            idx = idx + flip * self.n
        x = self.source.index_select(0, idx)
        if not self.t:
            return x
        shift = torch.randint(0, len(self.maps), (b,), device=idx.device, generator=self.gen)
        return shifted(x, self.maps.index_select(0, shift), self.c)


def shift_maps(t: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """For every (dy, dx) in [-t, t]^2 (dy major), the source pixel of each output pixel of an
    H x W image, or H*W (an appended zero) where the shift uncovers the border: [(2t+1)^2, H*W]."""
    hw, span = h * w, 2 * t + 1
    rows = torch.arange(h, device=device).view(1, -1, 1)
    cols = torch.arange(w, device=device).view(1, 1, -1)
    d = torch.arange(-t, t + 1, device=device)
    dy, dx = d.repeat_interleave(span).view(-1, 1, 1), d.repeat(span).view(-1, 1, 1)
    src_r, src_c = rows - dy, cols - dx  # output (r, c) shows source (r - dy, c - dx)
    inside = (src_r >= 0) & (src_r < h) & (src_c >= 0) & (src_c < w)
    flat = src_r.clamp(0, h - 1) * w + src_c.clamp(0, w - 1)
    return torch.where(inside, flat, hw).view(span * span, hw)


def shifted(x: torch.Tensor, maps: torch.Tensor, channels: int) -> torch.Tensor:
    """Each row of x [B, C*H*W] moved through its own map (a row of `shift_maps`): one gather."""
    b, hw = len(x), maps.shape[1]
    index = maps.view(b, 1, hw).expand(b, channels, hw)
    padded = torch.cat([x.view(b, channels, hw), x.new_zeros(b, channels, 1)], 2)
    return torch.gather(padded, 2, index).view(b, -1)


class StackAugmenter:
    """The rows `Augmenter` gives, for K configs at once (search.training.stacked): each member
    draws its flips and shifts from its own generator, in the order its own Augmenter would, so
    its rows are the ones it gets when trained alone; all K batches then come out of one
    index_select and one gather. Members without a flip read the plain half; without a shift,
    the identity map (a shift of zero)."""

    def __init__(self, configs: list[TrainConfig], image_shape: tuple[int, int, int], source: torch.Tensor):
        self.c, self.h, self.w = image_shape
        self.n, device = len(source), source.device
        self.flips = [c.hflip for c in configs]
        self.ts = [c.translate for c in configs]
        self.gens = [torch.Generator(device=device).manual_seed(c.seed + 0x5EED) for c in configs]
        self.source = source
        if any(self.flips):
            mirrored = source.view(self.n, self.c, self.h, self.w).flip(3).reshape(self.n, -1)
            self.source = torch.cat([source, mirrored])
        self.t = max(self.ts)
        if self.t:
            self.maps = shift_maps(self.t, self.h, self.w, device)
            span = 2 * self.t + 1
            self.center = torch.tensor(self.t * span + self.t, device=device)
            # lut[t][i]: member shift i of its own (2t+1)^2 table, as a row of the widest table
            self.luts = {}
            for t in set(self.ts) - {0}:
                i = torch.arange((2 * t + 1) ** 2, device=device)
                dy, dx = i // (2 * t + 1) - t, i % (2 * t + 1) - t
                self.luts[t] = (dy + self.t) * span + (dx + self.t)

    def keep(self, rows: list[int]) -> None:
        """Only these members (positions in the current stack) go on."""
        self.flips = [self.flips[r] for r in rows]
        self.ts = [self.ts[r] for r in rows]
        self.gens = [self.gens[r] for r in rows]

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """idx [K, B] (member k's batch in row k) -> the augmented rows, [K*B, C*H*W]."""
        b, device = idx.shape[1], idx.device
        if any(self.flips):  # each member's flip draw comes before its shift draw, as in Augmenter
            flips = [
                (torch.rand(b, device=device, generator=g) < 0.5) * self.n if flip else idx.new_zeros(b)
                for flip, g in zip(self.flips, self.gens)
            ]
            idx = idx + torch.stack(flips)
        shifts = [self._shift(t, g, b, device) for t, g in zip(self.ts, self.gens)] if self.t else []
        x = self.source.index_select(0, idx.reshape(-1))
        if not self.t:
            return x
        return shifted(x, self.maps.index_select(0, torch.cat(shifts)), self.c)

    def _shift(self, t: int, gen: torch.Generator, b: int, device) -> torch.Tensor:
        if not t:
            return self.center.expand(b)
        drawn = torch.randint(0, (2 * t + 1) ** 2, (b,), device=device, generator=gen)
        return self.luts[t].index_select(0, drawn)
