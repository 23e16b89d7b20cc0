"""MixUp and CutMix: each training batch blended with a shuffled copy of itself, per member.

MixUp (Zhang et al., 2018) replaces a batch x with lam * x + (1 - lam) * x[perm]; CutMix (Yun et
al., 2019) pastes into every image the same box from its partner x[perm], and lam becomes the share
of the image left uncovered. Either way the loss is lam * loss(y) + (1 - lam) * loss(y[perm]), and
only training batches are mixed: validation and test never are. lam is drawn once per batch from
Beta(alpha, alpha), as timm's "batch" mode does.

Each member draws from its own CPU generator, seeded apart from its other streams, in this order
per batch: a coin (only when both knobs are on: which of the two), u ~ U(0, 1) (lam is Beta's
inverse CDF at u, from SciPy: torch samples Beta only from its global generator), the partner
permutation, then for CutMix the box centre (row, column). The draws stay on the host, so a GPU
never waits for a random number; the K permutations travel to the device as one tensor per batch.
"""

from __future__ import annotations

import torch
from scipy.special import betaincinv

from search.training.config import TrainConfig

MIX_SEED = 0x313C  # added to a config's seed: the mixing stream's own seed


def cut_box(lam: float, h: int, w: int, cy: int, cx: int) -> tuple[int, int, int, int]:
    """CutMix's box around (cy, cx) covering about 1 - lam of an h x w image, clipped to it:
    (top, bottom, left, right)."""
    ch, cw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
    return max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)


class Mixer:
    """The mixed training batches of K members at once; members without either knob pass through
    (lam = 1, partner = themselves)."""

    def __init__(self, configs: list[TrainConfig], image_shape: tuple[int, ...] | None):
        self.alphas = [(c.mixup, c.cutmix) for c in configs]
        self.gens = [torch.Generator().manual_seed(c.seed + MIX_SEED) for c in configs]
        self.image_shape = image_shape

    def keep(self, rows: list[int]) -> None:
        """Only these members (positions in the current stack) go on."""
        self.alphas = [self.alphas[r] for r in rows]
        self.gens = [self.gens[r] for r in rows]

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [K, B, F], y [K, B] -> (mixed x, each row's partner labels [K, B], lam [K, 1])."""
        k, b = y.shape
        perms, lams, boxes = [], [], {}
        for row, ((mixup, cutmix), g) in enumerate(zip(self.alphas, self.gens, strict=True)):
            if not (mixup or cutmix):
                perms.append(torch.arange(b))
                lams.append(1.0)
                continue
            cut = cutmix > 0 and (not mixup or bool(torch.rand((), generator=g) < 0.5))
            alpha = cutmix if cut else mixup
            lam = float(betaincinv(alpha, alpha, torch.rand((), dtype=torch.float64, generator=g).item()))
            perms.append(torch.randperm(b, generator=g))
            if cut:
                assert self.image_shape is not None, "CutMix needs images (check_augmentable)"
                _, h, w = self.image_shape
                cy, cx = int(torch.randint(0, h, (), generator=g)), int(torch.randint(0, w, (), generator=g))
                boxes[row] = top, bottom, left, right = cut_box(lam, h, w, cy, cx)
                lam = 1.0 - (bottom - top) * (right - left) / (h * w)
            lams.append(lam)
        perm = torch.stack(perms).to(x.device)
        partner_x = x.gather(1, perm.unsqueeze(2).expand_as(x))
        lam_k = torch.tensor(lams, dtype=x.dtype).to(x.device).view(k, 1)
        blend = [r for r, (mixup, _) in enumerate(self.alphas) if mixup and r not in boxes]
        out = x.clone()
        if blend:
            out[blend] = torch.lerp(partner_x[blend], x[blend], lam_k[blend].unsqueeze(2))
        for row, (top, bottom, left, right) in boxes.items():
            assert self.image_shape is not None  # a box comes only from CutMix, on images
            images, partners = out[row].view(b, *self.image_shape), partner_x[row].view(b, *self.image_shape)
            images[:, :, top:bottom, left:right] = partners[:, :, top:bottom, left:right]
        return out, y.gather(1, perm), lam_k
