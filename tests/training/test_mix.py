"""MixUp and CutMix: what a mixed batch holds, member by member."""

import torch

from search.training.config import TrainConfig
from search.training.mix import Mixer

SHAPE = (1, 8, 8)


def _batch(b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i filled with the value i, labelled i: every pixel tells where it came from."""
    x = torch.arange(b, dtype=torch.float64).view(1, b, 1).expand(1, b, 64).clone()
    return x, torch.arange(b).view(1, b)


def test_cutmix_pastes_one_box_from_the_partner_and_lam_is_the_uncovered_share():
    mixer = Mixer([TrainConfig(cutmix=1.0, seed=3)], SHAPE)
    for _ in range(20):
        x, y = _batch(16)
        mixed, partner, lam = mixer.mix(x, y)
        own = mixed[0] == torch.arange(16, dtype=torch.float64).view(16, 1)
        from_partner = mixed[0] == partner[0].view(16, 1).double()
        moved = partner[0] != y[0]
        assert bool((own | from_partner).all())
        uncovered = own[moved].double().mean().item() if bool(moved.any()) else lam.item()
        assert abs(uncovered - lam.item()) < 1e-12


def test_mixup_blends_each_image_with_its_partner_by_lam_and_others_pass_through():
    mixer = Mixer([TrainConfig(mixup=0.4, seed=1), TrainConfig(seed=2)], SHAPE)
    x, y = _batch(16)
    x2 = torch.cat([x, x])
    mixed, partner, lam = mixer.mix(x2, torch.cat([y, y]))
    expected = lam[0] * x[0] + (1 - lam[0]) * x[0][partner[0]]
    assert torch.allclose(mixed[0], expected, rtol=0, atol=1e-12)
    assert sorted(partner[0].tolist()) == list(range(16)) and 0 < lam[0] < 1
    assert torch.equal(mixed[1], x[0]) and torch.equal(partner[1], y[0]) and lam[1].item() == 1.0
