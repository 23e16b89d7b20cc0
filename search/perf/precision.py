"""`python -m search.bench --precision`: what bf16 autocast buys an epoch over float32.

One process, one dataset, one model (the bench's: the notebook's 3072-512-256-10 unless the
flags say otherwise): the same fit under float32 and under bf16 (search.device's autocast, float32
master weights), alternated round by round (search.perf.alternate), a warm-up epoch then one
measured epoch each. `bf16_speedup` is the median over rounds of fp32 epoch / bf16 epoch; each
fit's validation score after its two epochs sits beside it, so a speedup that cost accuracy shows.
Where the hardware has no bf16 matmul (an older CPU) bf16 is emulated and the speedup is below 1:
that is why `auto` keeps float32 there.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from search.data.datasets import Dataset
from search.device import cpu_has_bf16, describe, forced_precision, reduced_precision
from search.perf.alternate import alternate, quartiles, ratios
from search.training.config import TrainConfig
from search.training.fit import fit


def run_precision_bench(
    config: TrainConfig, data: Dataset, *, rounds: int = 5, progress=lambda line: None
) -> dict[str, Any]:
    """Alternated float32 and bf16 fits of `config`; every figure in a JSON-ready dict."""
    cfg = config.replace(epochs=2)  # one warm-up epoch, one measured
    scores: dict[str, list[float]] = {"fp32": [], "bf16": []}

    def timed(choice: str):
        def run() -> float:
            with forced_precision(choice):
                result = fit(cfg, data)
            scores[choice].append(result.history[-1].val_score)
            return result.history[-1].seconds

        return run

    times = alternate([("fp32", timed("fp32")), ("bf16", timed("bf16"))], rounds=rounds, progress=progress)
    rs = ratios(times["fp32"], times["bf16"])
    with forced_precision("auto"):
        auto = "bf16" if reduced_precision(data.device) else "fp32"
    return {
        "device": describe(data.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_bf16": cpu_has_bf16() if data.device.type == "cpu" else None,
        "auto_picks": auto,
        "n_train": len(data.x_train),
        "batch_size": config.batch_size,
        "config": {k: v for k, v in cfg.to_dict().items() if k != "epochs"},
        "rounds": rounds,
        "timing": "training pass of the second epoch of each fit (the first is a warm-up); "
        "float32 and bf16 fits alternate, swapping order each round",
        "fp32_epoch_times_s": times["fp32"],
        "bf16_epoch_times_s": times["bf16"],
        "fp32_epoch_s": statistics.median(times["fp32"]),
        "bf16_epoch_s": statistics.median(times["bf16"]),
        "fp32_val_scores": scores["fp32"],
        "bf16_val_scores": scores["bf16"],
        "ratios": rs,
        "bf16_speedup": statistics.median(rs),
        "bf16_speedup_quartiles": list(quartiles(rs)),
    }


def format_precision(r: dict[str, Any]) -> str:
    q1, q3 = r["bf16_speedup_quartiles"]
    return "\n".join(
        [
            f"bf16 against float32 on {r['device']}, {r['n_train']:,} images, batch {r['batch_size']}, "
            f"median of {r['rounds']} alternated rounds:",
            f"  float32 epoch  {r['fp32_epoch_s']:.3f} s  (validation after 2 epochs: "
            f"{statistics.median(r['fp32_val_scores']):.4f})",
            f"  bf16 epoch     {r['bf16_epoch_s']:.3f} s  (validation after 2 epochs: "
            f"{statistics.median(r['bf16_val_scores']):.4f})",
            f"  bf16_speedup   {r['bf16_speedup']:.2f}x  (the rounds' middle half: {q1:.2f}x to {q3:.2f}x); "
            f"SEARCH_PRECISION=auto picks {r['auto_picks']} here",
        ]
    )
