"""The k x n fits `certify` runs: in this process, or spread over worker processes that each load
the data once. A fit's figures do not depend on where it ran (the same seed, the same threads)."""

from __future__ import annotations

import io
import multiprocessing as mp
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch

from search.artifacts.evaluation import load_state
from search.data.datasets import Dataset
from search.device import worker_device
from search.training.config import TrainConfig
from search.training.fit import fit
from search.training.model import build_for
from search.tuning.binding import load_bound_dataset

# ---------------------------------------------------------------------------- the fits


@dataclass
class SeedFit:
    """One fit of one config with one seed, as the parent keeps it."""

    seed: int
    val_score: float | None  # the final epoch's (the search's objective value); None: diverged
    diverged: str | None
    epochs_run: int
    train_seconds: float
    state: bytes = field(repr=False)  # the final weights' state_dict, torch.save'd on the host


def _fit_one(config: TrainConfig, data: Dataset) -> SeedFit:
    result = fit(config, data)
    assert result.model is not None  # a finished fit holds its model
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in result.model.state_dict().items()}, buffer)
    return SeedFit(
        seed=config.seed,
        val_score=None if result.diverged else result.val_score,
        diverged=result.diverged,
        epochs_run=result.epochs_run,
        train_seconds=result.train_seconds,
        state=buffer.getvalue(),
    )


_WORKER_DATA: Dataset | None = None  # a worker process's dataset, loaded once by _init_worker


def _init_worker(binding: dict[str, Any], data_dir: str | None, device: str, threads, counter) -> None:
    global _WORKER_DATA
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if threads is not None:
        torch.set_num_threads(threads)
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    here = worker_device(torch.device(device), index)
    _WORKER_DATA, _ = load_bound_dataset(binding, data_dir=data_dir, device=here)


def _fit_in_worker(config: dict[str, Any]) -> SeedFit:
    assert _WORKER_DATA is not None, "the worker's initializer did not run"
    return _fit_one(TrainConfig.from_dict(config), _WORKER_DATA)


def run_fits(
    configs: Sequence[TrainConfig],
    data: Dataset,
    *,
    binding: dict[str, Any],
    data_dir: str | None,
    jobs: int = 1,
    threads: int | None = None,
    on_fit: Callable[[int, SeedFit], None] | None = None,
) -> list[SeedFit]:
    """Fit every config; the results in the order of `configs`, whatever order they finish in.

    jobs = 1: in this process, on `data`. jobs > 1: in that many spawned workers, each loading
    the study's data once (on `data`'s device) with `threads` torch threads.
    """
    done: dict[int, SeedFit] = {}  # index in `configs` -> its fit
    if jobs == 1 or len(configs) <= 1:
        for i, config in enumerate(configs):
            done[i] = _fit_one(config, data)
            if on_fit is not None:
                on_fit(i, done[i])
        return [done[i] for i in range(len(configs))]
    ctx = mp.get_context("spawn")  # CUDA cannot be forked; spawn also isolates torch's threads
    split = {k: binding[k] for k in ("dataset", "val_fraction", "split_seed")}
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, len(configs)), mp_context=ctx, initializer=_init_worker,
        initargs=(split, data_dir, str(data.device), threads, ctx.Value("i", 0)),
    )  # fmt: skip
    try:
        futures = {pool.submit(_fit_in_worker, c.to_dict()): i for i, c in enumerate(configs)}
        for future in as_completed(futures):
            i = futures[future]
            done[i] = future.result()
            if on_fit is not None:
                on_fit(i, done[i])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [done[i] for i in range(len(configs))]


def load_weights(config: TrainConfig, fit_: SeedFit, data: Dataset) -> torch.nn.Module:
    model = build_for(config, data)
    state = torch.load(io.BytesIO(fit_.state), map_location="cpu", weights_only=True)
    load_state(model, state, source=f"the weights of seed {fit_.seed}")
    return model.to(data.device)
