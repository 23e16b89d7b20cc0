"""Each member of a stack keeps its own optimizer and lr schedule, over its row of the stack.

Row k of a stack's [K, P] weights is member k's whole model. Each step calls PyTorch's functional
optimizer (`torch.optim.sgd.sgd`, `adam.adam`, ...: the code `torch.optim`'s classes run) on each
row, with the member's scheduled lr and the device's fastest kernels (fused where `optimizer_flags`
says so). One update vectorized over all K by hand measured slower on the CPU: a dozen unfused
passes over [K, P] where a fused kernel makes one.

A member with `ema` also keeps the moving average of its row as one more buffer ("ema"), so the
average is saved, resumed and narrowed with the stack exactly as Adam's moments are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim.adam import adam
from torch.optim.adamw import adamw
from torch.optim.rmsprop import rmsprop
from torch.optim.sgd import sgd

from search.device import optimizer_flags
from search.training.config import TrainConfig
from search.training.schedule import lr_factor

# torch.optim's defaults
BETAS, ADAM_EPS = (0.9, 0.999), 1e-8
RMSPROP_ALPHA, RMSPROP_EPS = 0.99, 1e-8


class _MemberState:
    def __init__(self, config: TrainConfig, like: torch.Tensor):
        self.config = config
        self.flags = optimizer_flags(like.device, config.optimizer)
        self.tensors: dict[str, torch.Tensor | None] = {}  # its optimizer's state, [P] each
        self.step = torch.zeros((), dtype=torch.float32, device=like.device)  # Adam's and RMSprop's count

    def buffer(self, name: str, like: torch.Tensor) -> torch.Tensor:
        tensor = self.tensors.get(name)
        if tensor is None:
            tensor = self.tensors[name] = torch.zeros_like(like)
        return tensor


class MemberOptimizers:
    """One optimizer state and lr schedule per row of `param`, reading the same row of `grad`.
    `steps`: the steps already taken (a resumed fit's), which place each member on its schedule."""

    def __init__(
        self,
        configs: list[TrainConfig],
        param: torch.Tensor,
        grad: torch.Tensor,
        total_steps: int,
        steps: int = 0,
    ):
        self.members = [_MemberState(c, param[0]) for c in configs]
        self.param, self.grad = param, grad
        self.total_steps, self.steps = total_steps, steps
        for m in self.members:
            m.step.fill_(steps)

    @torch.no_grad()
    def step(self) -> None:
        for k, m in enumerate(self.members):
            c, p, g = m.config, self.param[k], self.grad[k]
            lr = c.lr * lr_factor(c.schedule, c.warmup, self.steps, self.total_steps)
            common: dict[str, Any] = dict(lr=lr, weight_decay=c.weight_decay, maximize=False, **m.flags)
            if c.optimizer == "sgd":
                bufs = [m.tensors.get("momentum_buffer")]  # None: the first step creates it
                sgd([p], [g], bufs, momentum=c.momentum, dampening=0.0, nesterov=False, **common)
                m.tensors["momentum_buffer"] = bufs[0]
            elif c.optimizer == "rmsprop":
                momentum = [m.buffer("momentum_buffer", p)] if c.momentum > 0 else []
                rmsprop(
                    [p], [g], [m.buffer("square_avg", p)], [], momentum, [m.step], alpha=RMSPROP_ALPHA,
                    eps=RMSPROP_EPS, momentum=c.momentum, centered=False, **common,
                )  # fmt: skip
            else:
                step = adamw if c.optimizer == "adamw" else adam
                step(
                    [p], [g], [m.buffer("exp_avg", p)], [m.buffer("exp_avg_sq", p)], [], [m.step],
                    amsgrad=False, beta1=BETAS[0], beta2=BETAS[1], eps=ADAM_EPS, **common,
                )  # fmt: skip
            if c.ema > 0:
                average = m.tensors.get("ema")
                if average is None:  # the first step's weights start the average
                    m.tensors["ema"] = p.detach().clone()
                else:
                    average.lerp_(p, 1.0 - min(c.ema, (1 + self.steps) / (10 + self.steps)))
        self.steps += 1

    def averages(self) -> dict[int, torch.Tensor]:
        """Row -> its weights' moving average, for the members that keep one."""
        return {k: ema for k, m in enumerate(self.members) if (ema := m.tensors.get("ema")) is not None}

    def buffers(self, row: int) -> dict[str, torch.Tensor]:
        """Member `row`'s optimizer state, each a [P] row of the stack's layout."""
        return {k: v for k, v in self.members[row].tensors.items() if v is not None}

    def set_buffers(self, row: int, tensors: dict[str, torch.Tensor]) -> None:
        self.members[row].tensors = dict(tensors)

    def keep(
        self,
        rows: list[int],
        param: torch.Tensor,
        grad: torch.Tensor,
        move: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        """Only these members go on, as rows of the stack's new `param` and `grad`; `move`
        carries a [n, P] tensor of the old layout to the new one, as it carried the weights."""
        self.members = [self.members[r] for r in rows]
        self.param, self.grad = param, grad
        for m in self.members:
            m.tensors = {k: None if v is None else move(v.unsqueeze(0))[0] for k, v in m.tensors.items()}
