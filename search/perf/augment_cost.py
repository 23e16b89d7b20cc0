"""`python -m search.bench --augment`: what the quality knobs cost per epoch.

One process, one dataset, one model (the notebook's 3072-512-256-10, SGD): a plain fit and a fit
with every per-batch knob on (flips, 4-pixel shifts, the one-cycle schedule with warm-up, label
smoothing) run alternately, a warm-up epoch then measured epochs each, swapping which goes first
every round so a busy neighbour slows both. `augment_overhead` is the median over rounds of
(augmented epoch / plain epoch) - 1: the share of training time the knobs add.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from search.data.datasets import Dataset
from search.device import describe
from search.perf.alternate import alternate, quartiles, ratios
from search.training.config import TrainConfig
from search.training.fit import fit

AUGMENTED = dict(hflip=True, translate=4, schedule="onecycle", warmup=0.2, label_smoothing=0.1)


def run_augment_bench(
    config: TrainConfig, data: Dataset, *, rounds: int = 5, progress=lambda line: None
) -> dict[str, Any]:
    """Alternated plain and augmented fits of `config`; every figure in a JSON-ready dict."""
    plain_cfg = config.replace(epochs=2)  # one warm-up epoch, one measured
    aug_cfg = plain_cfg.replace(**AUGMENTED)
    times = alternate(
        [("plain", lambda: fit(plain_cfg, data).history[-1].seconds),
         ("augmented", lambda: fit(aug_cfg, data).history[-1].seconds)],
        rounds=rounds, progress=progress,
    )  # fmt: skip
    plain_s, aug_s = times["plain"], times["augmented"]
    rs = ratios(aug_s, plain_s)
    return {
        "device": describe(data.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "n_train": len(data.x_train),
        "batch_size": config.batch_size,
        "config": {k: v for k, v in plain_cfg.to_dict().items() if k != "epochs"},
        "augmented_knobs": AUGMENTED,
        "rounds": rounds,
        "timing": "training pass of the second epoch of each fit (the first is a warm-up); "
        "plain and augmented fits alternate, swapping order each round",
        "plain_epoch_times_s": plain_s,
        "augmented_epoch_times_s": aug_s,
        "plain_epoch_s": statistics.median(plain_s),
        "augmented_epoch_s": statistics.median(aug_s),
        "ratios": rs,
        "augment_overhead": statistics.median(rs) - 1.0,
        # the middle half of the rounds' overheads: how far one round's figure is to be trusted
        "augment_overhead_quartiles": [q - 1.0 for q in quartiles(rs)],
    }


def format_augment(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"augmentation cost on {r['device']}, {r['n_train']:,} images, batch {r['batch_size']}, "
            f"median of {r['rounds']} alternated rounds:",
            f"  plain epoch      {r['plain_epoch_s']:.3f} s",
            f"  augmented epoch  {r['augmented_epoch_s']:.3f} s  (hflip, translate 4, one-cycle, "
            "label smoothing 0.1)",
            f"  augment_overhead {r['augment_overhead']:+.3f}  (the rounds' middle half: "
            f"{r['augment_overhead_quartiles'][0]:+.3f} to {r['augment_overhead_quartiles'][1]:+.3f})",
        ]
    )
