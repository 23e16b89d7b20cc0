"""Each member of a stack keeps its own optimizer and lr schedule, over its row of the stack.

A stack's weights are one [K, P] tensor (search.training.stack_model); row k is member k's whole
model, contiguous. Each step calls PyTorch's functional optimizer (`torch.optim.sgd.sgd`,
`adam.adam`, `adamw.adamw`, `rmsprop.rmsprop`, the code `torch.optim`'s classes run) on each
member's row, with the member's lr from its schedule (`lr_factor`, what `fit`'s LambdaLR
multiplies by) and the kernels `fit` uses (fused where `optimizer_flags` says so). So a member
steps as `fit` steps it, at a third of the Python cost of an Optimizer and LambdaLR per member.
One hand-written update vectorized over all K was tried first and measured slower on the CPU: it
makes a dozen unfused passes over [K, P] where the fused kernels make one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim.adam import adam
from torch.optim.adamw import adamw
from torch.optim.rmsprop import rmsprop
from torch.optim.sgd import sgd

from search.training.config import TrainConfig
from search.training.device import optimizer_flags
from search.training.schedule import is_constant, lr_factor

# torch.optim's defaults, which `fit`'s optimizers keep
BETAS, ADAM_EPS = (0.9, 0.999), 1e-8
RMSPROP_ALPHA, RMSPROP_EPS = 0.99, 1e-8


class _MemberState:
    def __init__(self, config: TrainConfig, device: torch.device):
        self.config = config
        self.flags = optimizer_flags(device, config.optimizer)
        self.tensors: dict[str, torch.Tensor | None] = {}  # its optimizer's state, [P] each
        self.step = torch.zeros((), dtype=torch.float32, device=device)  # Adam's and RMSprop's count

    def buffer(self, name: str, like: torch.Tensor) -> torch.Tensor:
        if self.tensors.get(name) is None:
            self.tensors[name] = torch.zeros_like(like)
        return self.tensors[name]


class MemberOptimizers:
    """One optimizer state and lr schedule per row of `param`, reading the same row of `grad`."""

    def __init__(self, configs: list[TrainConfig], param: torch.Tensor, grad: torch.Tensor, total_steps: int):
        self.members = [_MemberState(c, param.device) for c in configs]
        self.param, self.grad = param, grad
        self.total_steps = total_steps
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        for k, m in enumerate(self.members):
            c, p, g = m.config, self.param[k], self.grad[k]
            lr = (
                c.lr
                if is_constant(c)
                else c.lr * lr_factor(c.schedule, c.warmup, self.steps, self.total_steps)
            )
            common = dict(lr=lr, weight_decay=c.weight_decay, maximize=False, **m.flags)
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
        self.steps += 1

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
