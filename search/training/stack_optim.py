"""Each member of a stack keeps its own PyTorch optimizer and lr schedule, over its row of the stack.

A stack's weights are one [K, P] tensor (search.training.stack_model); row k is member k's whole
model, contiguous. Each member gets `make_optimizer` and `make_scheduler` (the ones `fit` uses)
over that row, with its row of the gradient tensor as the row's `.grad`: PyTorch's fused kernel
steps the member in one pass with its own optimizer, lr, momentum and weight decay, doing the
arithmetic `fit` does. One hand-written, vectorized update for all K members was tried and
measured slower on the CPU: it makes a dozen unfused passes over [K, P] where the fused kernels
make one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from search.training.config import TrainConfig
from search.training.schedule import make_scheduler
from search.training.trainer import make_optimizer


class MemberOptimizers:
    """One optimizer and scheduler per row of `param`, reading the same row of `grad`."""

    def __init__(self, configs: list[TrainConfig], param: torch.Tensor, grad: torch.Tensor, total_steps: int):
        self.rows = _rows(param, grad)
        self.optimizers = [make_optimizer(c, [row], param.device) for c, row in zip(configs, self.rows)]
        self.schedulers = [make_scheduler(o, c, total_steps) for o, c in zip(self.optimizers, configs)]
        self.steps = 0

    def step(self) -> None:
        for optimizer, scheduler in zip(self.optimizers, self.schedulers):
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        self.steps += 1

    def keep(
        self, rows: list[int], param: torch.Tensor, grad: torch.Tensor, move: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        """Only these members go on, as rows of the stack's new `param` and `grad`; `move`
        carries a [n, P] tensor of the old layout to the new one, as it carried the weights."""
        self.optimizers = [self.optimizers[r] for r in rows]
        self.schedulers = [self.schedulers[r] for r in rows]
        self.rows = _rows(param, grad)
        for optimizer, new in zip(self.optimizers, self.rows):
            group = optimizer.param_groups[0]
            old = group["params"][0]
            state = optimizer.state.pop(old, {})
            group["params"][0] = new
            optimizer.state[new] = {
                k: move(v.unsqueeze(0))[0] if torch.is_tensor(v) and v.shape == old.shape else v
                for k, v in state.items()
            }


def _rows(param: torch.Tensor, grad: torch.Tensor) -> list[torch.Tensor]:
    rows = []
    for k in range(len(param)):
        row = param[k]
        row.grad = grad[k]
        rows.append(row)
    return rows
