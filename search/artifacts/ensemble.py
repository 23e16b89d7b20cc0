"""An ensemble from a finished study: greedy selection with replacement over its trials'
validation outputs (Caruana et al. 2004, as auto-sklearn and AutoGluon do), and the model it makes.

Each step adds the trial (again, if it helps most) whose inclusion scores best on the validation
split under the study's metric, ties going to the lower validation loss; after STEPS steps the
best prefix wins, the earliest on ties, so the ensemble is never worse on validation than the best
single trial it starts from. The weights are the counts over the steps. Members average their
class probabilities (the ensemble's output is the log of that mean, so it reads as logits
everywhere a model's would) or their standardized regression outputs. The test split plays no part.

A table's trials may encode their rows with different numeric transforms; members must share one
input, so the selection runs within each transform's trials and the best group wins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.artifacts.evaluation import load_state
from search.data.datasets import Dataset
from search.data.targets import losses_and_scores
from search.errors import UserError, first_line
from search.files import atomic_write
from search.training.config import TrainConfig
from search.training.model import build_for, build_mlp
from search.tuning import pool

STEPS = 25  # greedy steps: AutoGluon's default; auto-sklearn takes 50


@dataclass(frozen=True)
class Selection:
    counts: dict[int, int]  # trial number -> times chosen in the winning prefix
    configs: dict[int, TrainConfig]  # each member's config
    val_score: float  # the ensemble's validation score (the study's metric)
    single: int  # the best trial alone: the first step's choice
    single_score: float  # its validation score from the same outputs
    numeric: str  # the members' shared numeric transform (a table's; "standard" for images)

    @property
    def weights(self) -> dict[int, float]:
        """Member -> weight, summing to 1, largest first."""
        total = sum(self.counts.values())
        return {n: c / total for n, c in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))}

    @property
    def gain(self) -> float:
        return self.val_score - self.single_score


def greedy(
    outputs: torch.Tensor, y: torch.Tensor, *, task: str, metric: str, target, steps: int = STEPS
) -> tuple[list[int], float, float]:
    """Candidates' outputs [M, N, C] (log-probabilities or regression outputs), y [N]: each
    candidate's count in the winning prefix, and that prefix's (score, loss)."""
    probs = outputs if task == "regression" else outputs.exp()
    total = torch.zeros_like(probs[0])
    counts = [0] * len(probs)
    best: tuple[float, float, list[int]] | None = None
    for step in range(1, steps + 1):
        mixed = (total[None] + probs) / step
        logits = mixed if task == "regression" else mixed.clamp_min(1e-30).log()
        losses, scores = losses_and_scores(logits, y, task=task, metric=metric, target=target)
        keys = [(s if math.isfinite(s) else -math.inf, -loss if math.isfinite(loss) else -math.inf)
                for s, loss in zip(scores, losses, strict=True)]  # fmt: skip
        pick = max(range(len(keys)), key=lambda i: (keys[i], -i))
        total += probs[pick]
        counts[pick] += 1
        if best is None or keys[pick] > (best[0], -best[1]):
            best = (keys[pick][0], -keys[pick][1], counts.copy())
    assert best is not None
    return best[2], best[0], best[1]


def select(entries: list[pool.Entry], data: Dataset, *, steps: int = STEPS) -> Selection | None:
    """The best ensemble of these pool entries on `data`'s validation split; None without any."""
    y = data.y_val
    entries = [e for e in entries if len(e.outputs) == len(y)]  # another split's: not comparable
    groups: dict[str, list[pool.Entry]] = {}
    for e in entries:
        groups.setdefault(e.config.numeric, []).append(e)
    found: Selection | None = None
    for numeric, group in groups.items():
        group = sorted(group, key=lambda e: (-e.value, e.trial_number))
        outputs = torch.stack([e.outputs for e in group]).to(y.device)
        how: dict[str, Any] = dict(task=data.task, metric=data.metric, target=data.target)
        counts, score, _ = greedy(outputs, y, steps=steps, **how)
        _, (single,) = losses_and_scores(outputs[:1], y, **how)
        chosen = {group[i].trial_number: c for i, c in enumerate(counts) if c}
        sel = Selection(chosen, {e.trial_number: e.config for e in group if e.trial_number in chosen},
                        score, group[0].trial_number, single, numeric)  # fmt: skip
        if found is None or sel.val_score > found.val_score:
            found = sel
    return found


class Ensemble(nn.Module):
    """Members' weighted mean probability, as log-probabilities (or their weighted mean output,
    for regression); takes what every member takes: the rows of one numeric transform."""

    weights: torch.Tensor  # a buffer: the members' weights, summing to 1

    def __init__(self, models: Sequence[nn.Module], weights: list[float], *, regression: bool):
        super().__init__()
        self.members = nn.ModuleList(models)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float64))
        self.regression = regression

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = torch.stack([m(x) for m in self.members])
        outs = outs.to(torch.promote_types(outs.dtype, torch.float32))  # not in bfloat16 under autocast
        w = self.weights.to(device=outs.device, dtype=outs.dtype).view(-1, 1, 1)
        if self.regression:
            return (w * outs).sum(0)
        return torch.logsumexp(torch.log_softmax(outs, dim=2) + w.log(), dim=0)


def build(selection: Selection, directory: str | Path, data: Dataset) -> Ensemble:
    """The selection's members with their kept (half-precision) weights, on `data`'s device and
    dtype, in eval mode."""
    models, weights = [], []
    for n, w in selection.weights.items():
        config = selection.configs[n]
        model = build_for(config, data)
        load_state(model, pool.load_weights(directory, n), source=f"pool trial {n}")
        models.append(model.to(device=data.device, dtype=data.x_val.dtype))
        weights.append(w)
    return Ensemble(models, weights, regression=data.task == "regression").to(data.device).eval()


def choose(results: str | Path, completed: dict[int, float], data: Dataset, best_value: float):
    """(selection, ensemble) when the pool's selection beats the study's best trial on
    validation with more than one member; otherwise (selection or None, None)."""
    directory = pool.pool_dir(results)
    selection = select(pool.candidates(directory, completed), data)
    if selection is None or len(selection.counts) < 2 or not selection.val_score > best_value:
        return selection, None
    return selection, build(selection, directory, data)


# ---------------------------------------------------------------------------- the file


def save(
    path: Path, ensemble: Ensemble, trials: list[int], configs: list[TrainConfig], numeric: str, *, half: bool
) -> Path:
    """ensemble.pt: each member's trial number, config, weight and state_dict (in half precision
    where `half`: the pool's members are kept so); loads with `load` or with nothing but PyTorch."""
    state = pool.half_state if half else (lambda m: {k: v.detach().cpu() for k, v in m.state_dict().items()})
    members = [
        {"trial_number": n, "weight": w, "config": c.to_dict(), "state_dict": state(m)}
        for n, c, w, m in zip(trials, configs, ensemble.weights.tolist(), ensemble.members, strict=True)
    ]
    payload = {"format": 1, "numeric": numeric, "regression": ensemble.regression, "members": members}
    return atomic_write(path, lambda fh: torch.save(payload, fh))


def save_selected(path: Path, selection: Selection, ensemble: Ensemble, *, half: bool = True) -> Path:
    """ensemble.pt for the selection: in half precision as the pool kept it, or (`half=False`) as
    trained, so the file scores exactly what was scored."""
    trials = list(selection.weights)
    return save(path, ensemble, trials, [selection.configs[n] for n in trials], selection.numeric, half=half)


def is_the_model(best: dict[str, Any]) -> bool:
    """Whether best.json's export is its ensemble.pt: the selection's ensemble won, or the
    chosen configs were cross-fitted (search.artifacts.refit) into one."""
    return bool((best.get("ensemble") or {}).get("exported") or (best.get("refit") or {}).get("folds"))


def read(path: Path) -> dict[str, Any]:
    """ensemble.pt as saved: {numeric, regression, members: [{trial_number, weight, config, state_dict}]}."""
    try:
        payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        payload["members"][0]["config"]
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; python -m search.export writes it for a study whose "
                        "ensemble beats its best trial") from None  # fmt: skip
    except Exception as e:  # torch raises several types for a damaged or foreign file
        raise UserError(f"{path}: not an ensemble file ({first_line(e)})") from None
    return payload


def load(
    path: Path,
    *,
    in_features: int,
    n_classes: int,
    image_shape=None,
    device: str | torch.device = "cpu",
    numeric_features: int = 0,
) -> Ensemble:
    """ensemble.pt's members on inputs of `in_features` columns, the first `numeric_features` numeric."""
    payload = read(path)
    members = payload["members"]
    models = []
    for m in members:
        config = TrainConfig.from_dict(m["config"])
        model = build_mlp(config, in_features=in_features, n_classes=n_classes, image_shape=image_shape,
                          numeric_features=numeric_features)  # fmt: skip
        load_state(model, m["state_dict"], source=f"{path} trial {m['trial_number']}")
        models.append(model)
    weights = [m["weight"] for m in members]
    return Ensemble(models, weights, regression=payload["regression"]).to(device).eval()


def summary_lines(selection: Selection, metric: str) -> list[str]:
    """For people: the members and weights, and the validation gain over the best single trial."""
    parts = ", ".join(f"trial {n} x{selection.counts[n]}" for n in selection.weights)
    picks = sum(selection.counts.values())
    return [
        f"ensemble of {len(selection.counts)} trials ({parts}; {picks} greedy picks)",
        f"validation {metric}: ensemble {selection.val_score:.4f}, best single trial "
        f"{selection.single} {selection.single_score:.4f} ({selection.gain:+.4f})",
    ]
