"""The search space: declared as data in a study file, sampled here and nowhere else.

A study file's `[space]` table gives each knob one of three forms:

    lr = 0.01                          # fixed: never sampled, not an Optuna param
    optimizer = ["sgd", "adam"]        # a list: categorical choice
    lr = {low = 1e-4, high = 0.1, log = true}   # a range (int knobs take `step` too)

`sample_config` is the only code in the project that calls `trial.suggest_*`. Replaying the best
trial's params goes through the same function with Optuna's `FixedTrial`, so search, export and
retraining cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

import optuna

from search.data.numeric import NUMERICS, ple_bins
from search.errors import UserError
from search.training.config import (
    ACTIVATIONS,
    MAX_ENSEMBLE,
    MAX_MIX_ALPHA,
    MAX_PLR,
    MAX_TRANSLATE,
    NORMS,
    NUM_EMBEDDINGS,
    OPTIMIZERS,
    SCHEDULES,
    WHITENINGS,
    TrainConfig,
)

# Every knob a study may declare, its type, and the values it allows.
INT_KNOBS = {
    "n_layers": (0, 16),
    "width": (1, 65536),
    "batch_size": (1, 1 << 20),
    "translate": (0, MAX_TRANSLATE),
    "expansion": (1, 64),
    "ensemble_k": (1, MAX_ENSEMBLE),
    "plr_frequencies": (1, MAX_PLR),
    "plr_dim": (1, MAX_PLR),
}
FLOAT_KNOBS = {
    "dropout": (0.0, 0.99),
    "bn_momentum": (0.0, 1.0),
    "lr": (1e-12, 1e3),
    "momentum": (0.0, 0.9999),
    "weight_decay": (0.0, 10.0),
    "l1": (0.0, 10.0),
    "warmup": (0.0, 0.99),
    "label_smoothing": (0.0, 0.9),
    "ema": (0.0, 0.9999),
    "mixup": (0.0, MAX_MIX_ALPHA),
    "cutmix": (0.0, MAX_MIX_ALPHA),
    "zca_eps": (1e-8, 1e4),
    "plr_sigma": (1e-4, 100.0),  # the PLR paper searched up to 100 (its README: 10 is often enough)
}
BOOL_KNOBS = ("batchnorm", "residual", "hflip", "tta_hflip", "feature_scale")
CHOICE_KNOBS = {
    "activation": ACTIVATIONS,
    "optimizer": OPTIMIZERS,
    "batchnorm": (True, False),
    "norm": NORMS,  # batch, layer or none: batchnorm's alternative, not beside it
    "residual": (True, False),
    "schedule": SCHEDULES,
    "hflip": (True, False),
    "tta_hflip": (True, False),
    "feature_scale": (True, False),
    "whiten": WHITENINGS,
    "numeric": NUMERICS,  # tables: how numeric columns are scaled (search.data.tables)
    "num_embedding": NUM_EMBEDDINGS,  # tables: "periodic" embeds them (search.training.embeddings)
}
KNOBS = (*INT_KNOBS, *FLOAT_KNOBS, *CHOICE_KNOBS)
MOMENTUM_OPTIMIZERS = ("sgd", "rmsprop")  # the optimizers that take `momentum`
# `lr` may be a table with one entry per optimizer: each is stored as the param `lr_<optimizer>`,
# so Adam's range and SGD's never mix in TPE's model.
PER_OPTIMIZER = "lr"


@dataclass(frozen=True)
class Param:
    """One knob's declaration: exactly one of `value`, `choices` or (`low`, `high`) is used."""

    name: str
    kind: str  # "fixed", "choice", "int" or "float"
    value: Any = None
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None

    def describe(self) -> str:
        if self.kind == "fixed":
            return repr(self.value)
        if self.kind == "choice":
            return "{" + ", ".join(map(str, self.choices)) + "}"
        return f"[{self.low:g}, {self.high:g}]" + (" log" if self.log else "")


def parse_space(table: dict[str, Any], *, where: str) -> dict[str, Param]:
    """Validate a `[space]` table; `where` names the file in the one-line error."""
    if not isinstance(table, dict):
        raise UserError(f"{where}: [space] must be a table of knobs")
    if "batchnorm" in table and "norm" in table:
        raise UserError(f"{where}: space.batchnorm and space.norm both choose the norm: keep one")
    embeddings, numerics = table.get("num_embedding"), table.get("numeric", TrainConfig().numeric)
    embeddings, numerics = (v if isinstance(v, list) else [v] for v in (embeddings, numerics))
    if "periodic" in embeddings and all(isinstance(n, str) and ple_bins(n) for n in numerics):
        raise UserError(
            f'{where}: space.num_embedding = "periodic" never applies: it embeds scaled numeric columns, '
            "and every space.numeric is a piecewise-linear encoding (bins)"
        )
    space = {}
    for name, raw in table.items():
        if name not in KNOBS:
            raise UserError(f"{where}: space.{name}: unknown knob; allowed: {', '.join(KNOBS)}")
        if name == PER_OPTIMIZER and _is_per_optimizer(raw):
            space.update(_parse_per_optimizer(raw, table, where=f"{where}: space.{name}"))
            continue
        space[name] = _parse_param(name, raw, where=f"{where}: space.{name}")
    return space


def lr_param(optimizer: str) -> str:
    return f"{PER_OPTIMIZER}_{optimizer}"


def _is_per_optimizer(raw: Any) -> bool:
    return isinstance(raw, dict) and bool(raw) and not set(raw) & {"low", "high", "log", "step"}


def _parse_per_optimizer(raw: dict[str, Any], table: dict[str, Any], *, where: str) -> dict[str, Param]:
    unknown = set(raw) - set(OPTIMIZERS)
    if unknown:
        raise UserError(
            f"{where}: {', '.join(sorted(unknown))}: not an optimizer; a per-optimizer lr table "
            f"has keys from {', '.join(OPTIMIZERS)}"
        )
    opt = table.get("optimizer", TrainConfig().optimizer)
    used = opt if isinstance(opt, list) else [opt]
    missing = [o for o in used if isinstance(o, str) and o not in raw]
    if missing:
        raise UserError(f"{where}: no lr for optimizer(s) {', '.join(missing)}, which space.optimizer allows")
    out = {}
    for name, sub in raw.items():
        p = _parse_param(PER_OPTIMIZER, sub, where=f"{where}.{name}")
        out[lr_param(name)] = dataclasses.replace(p, name=lr_param(name))
    return out


def _parse_param(name: str, raw: Any, *, where: str) -> Param:
    if isinstance(raw, dict):
        return _parse_range(name, raw, where=where)
    if isinstance(raw, list):
        if not raw:
            raise UserError(f"{where}: an empty list of choices")
        for v in raw:
            _check_value(name, v, where=where)
        if len(set(raw)) != len(raw):
            raise UserError(f"{where}: repeated choices in {raw}")
        return Param(name, "choice", choices=tuple(raw))
    _check_value(name, raw, where=where)
    return Param(name, "fixed", value=raw)


def _parse_range(name: str, raw: dict[str, Any], *, where: str) -> Param:
    if name in CHOICE_KNOBS:
        allowed = ", ".join(map(str, CHOICE_KNOBS[name]))
        raise UserError(f"{where}: takes a value or a list of choices from {allowed}, not a range")
    extra = set(raw) - {"low", "high", "log", "step"}
    if extra or not {"low", "high"} <= set(raw):
        raise UserError(f"{where}: a range is {{low = ..., high = ...[, log = true][, step = ...]}}")
    low, high, log, step = raw["low"], raw["high"], raw.get("log", False), raw.get("step")
    for v in (low, high):
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise UserError(f"{where}: {v!r} is not a number")
    if not isinstance(log, bool):
        raise UserError(f"{where}: log must be true or false")
    if low > high:
        raise UserError(f"{where}: low ({low}) > high ({high})")
    if log and low <= 0:
        raise UserError(f"{where}: a log range needs low > 0, got low = {low}")
    _check_value(name, low, where=where)
    _check_value(name, high, where=where)
    if step is not None:
        if log:
            raise UserError(f"{where}: step and log cannot be combined")
        if not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0:
            raise UserError(f"{where}: step must be a positive number")
    kind = "int" if name in INT_KNOBS else "float"
    return Param(name, kind, low=low, high=high, log=log, step=step)


def _check_value(name: str, v: Any, *, where: str) -> None:
    if name in CHOICE_KNOBS:
        allowed = CHOICE_KNOBS[name]
        if isinstance(v, bool) != (name in BOOL_KNOBS) or v not in allowed:
            raise UserError(f"{where}: {v!r} is not allowed; allowed: {', '.join(map(str, allowed))}")
        return
    lo, hi = INT_KNOBS.get(name) or FLOAT_KNOBS[name]
    is_int = isinstance(v, int) and not isinstance(v, bool)
    if name in INT_KNOBS and not is_int:
        raise UserError(f"{where}: {v!r} is not an integer")
    if not (is_int or isinstance(v, float)) or not math.isfinite(v):
        raise UserError(f"{where}: {v!r} is not a number")
    if not lo <= v <= hi:
        raise UserError(f"{where}: {v!r} is outside the allowed [{lo:g}, {hi:g}]")


def _suggest(trial: optuna.trial.BaseTrial, p: Param, name: str | None = None) -> Any:
    name = name or p.name
    if p.kind == "fixed":
        return p.value
    if p.kind == "choice":
        return trial.suggest_categorical(name, list(p.choices))
    if p.kind == "int":
        return trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(name, float(p.low), float(p.high), step=p.step, log=p.log)


def sample_config(
    trial: optuna.trial.BaseTrial,
    space: dict[str, Param],
    *,
    epochs: int,
    seed: int,
    defaults: TrainConfig | None = None,
) -> TrainConfig:
    """Draw one config. Knobs a study leaves out keep `defaults` (the TrainConfig defaults).

    The space is conditional: `width_i` exists only for i < n_layers (only `width_0` with
    residual blocks, which share it; `residual` from 2 layers, `expansion` with it), `bn_momentum` only with
    BatchNorm, `momentum` only for sgd and rmsprop, `lr_<optimizer>` only for its optimizer,
    `zca_eps` only with ZCA, `num_embedding` only with a scaled (not piecewise-linear) `numeric`,
    the `plr_*` sizes only with the periodic embedding, so no param is stored that did nothing.
    """
    base = defaults or TrainConfig()

    def draw(name: str, default: Any, param_name: str | None = None) -> Any:
        p = space.get(name)
        return default if p is None else _suggest(trial, p, param_name)

    n_layers = draw("n_layers", len(base.hidden))
    residual = draw("residual", base.residual) if n_layers > 1 else base.residual
    drawn = n_layers if not residual else min(n_layers, 1)  # residual blocks share one width
    if "width" in space:
        hidden = tuple(draw("width", None, f"width_{i}") for i in range(drawn))
    else:  # keep the default widths, trimmed or padded with the last one
        widths = list(base.hidden) or [256]
        hidden = tuple(widths[min(i, len(widths) - 1)] for i in range(drawn))
    hidden += hidden[-1:] * (n_layers - drawn)
    if not n_layers:  # a linear model has no hidden layer to normalize
        batchnorm = layernorm = False
    elif "norm" in space:
        norm = draw("norm", base.norm)
        batchnorm, layernorm = norm == "batch", norm == "layer"
    else:
        batchnorm = draw("batchnorm", base.batchnorm)
        layernorm = base.layernorm and not batchnorm
    optimizer = draw("optimizer", base.optimizer)
    whiten = draw("whiten", base.whiten)
    lr_name = lr_param(optimizer)
    lr = _suggest(trial, space[lr_name]) if lr_name in space else draw("lr", base.lr)
    values = dict(
        hidden=hidden,
        activation=draw("activation", base.activation) if n_layers else base.activation,
        dropout=draw("dropout", base.dropout) if n_layers else 0.0,
        batchnorm=batchnorm,
        layernorm=layernorm,
        residual=residual,
        expansion=draw("expansion", base.expansion) if residual and n_layers > 1 else base.expansion,
        ensemble_k=draw("ensemble_k", base.ensemble_k),
        feature_scale=draw("feature_scale", base.feature_scale),
        bn_momentum=draw("bn_momentum", base.bn_momentum) if batchnorm else base.bn_momentum,
        optimizer=optimizer,
        lr=lr,
        momentum=draw("momentum", base.momentum) if optimizer in MOMENTUM_OPTIMIZERS else 0.0,
        weight_decay=draw("weight_decay", base.weight_decay),
        l1=draw("l1", base.l1),
        batch_size=draw("batch_size", base.batch_size),
        schedule=draw("schedule", base.schedule),
        warmup=draw("warmup", base.warmup),
        label_smoothing=draw("label_smoothing", base.label_smoothing),
        ema=draw("ema", base.ema),
        mixup=draw("mixup", base.mixup),
        cutmix=draw("cutmix", base.cutmix),
        hflip=draw("hflip", base.hflip),
        tta_hflip=draw("tta_hflip", base.tta_hflip),
        translate=draw("translate", base.translate),
        whiten=whiten,
        zca_eps=draw("zca_eps", base.zca_eps) if whiten == "zca" else base.zca_eps,
        numeric=draw("numeric", base.numeric),
    )
    # the embedding takes scaled numeric columns, which a piecewise-linear encoding has made bins
    scaled = ple_bins(values["numeric"]) is None
    periodic = (draw("num_embedding", base.num_embedding) if scaled else "none") == "periodic"
    values.update(
        num_embedding="periodic" if periodic else "none",
        plr_frequencies=draw("plr_frequencies", base.plr_frequencies) if periodic else base.plr_frequencies,
        plr_sigma=draw("plr_sigma", base.plr_sigma) if periodic else base.plr_sigma,
        plr_dim=draw("plr_dim", base.plr_dim) if periodic else base.plr_dim,
    )
    return TrainConfig(**values, epochs=epochs, seed=seed)


def replay_config(params: dict[str, Any], space: dict[str, Param], *, epochs: int, seed: int) -> TrainConfig:
    """The config a trial with these params trained: the same code path, fed by a FixedTrial."""
    try:
        with warnings.catch_warnings():
            # FixedTrial only warns about a value outside its range; a replay must be exact.
            warnings.simplefilter("error", UserWarning)
            return sample_config(optuna.trial.FixedTrial(params), space, epochs=epochs, seed=seed)
    except (ValueError, UserWarning) as e:  # a param the space needs is missing or out of range
        raise UserError(f"the stored params do not fit this study's space: {e}") from None


def config_params(config: TrainConfig, space: dict[str, Param], *, epochs: int) -> dict[str, Any]:
    """The params under which this space samples exactly `config` (a study's baseline), checked
    by replaying them: a value outside a range, or a knob the space fixes to something else, is
    refused in one line that names it."""
    offered: dict[str, Any] = {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)}
    offered["n_layers"] = len(config.hidden)
    offered["norm"] = config.norm
    offered.update({f"width_{i}": w for i, w in enumerate(config.hidden)})
    offered.update({lr_param(o): config.lr for o in OPTIMIZERS})
    recorder = optuna.trial.FixedTrial(offered)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        try:
            sample_config(recorder, space, epochs=epochs, seed=config.seed)
        except (UserWarning, ValueError) as e:  # a value outside a range; a choice not offered
            raise UserError(f"does not fit the space: {e}") from None
    params = dict(recorder.params)
    replayed = replay_config(params, space, epochs=epochs, seed=config.seed)
    wanted = config.replace(epochs=epochs)
    differ = [
        f.name
        for f in dataclasses.fields(TrainConfig)
        if getattr(replayed, f.name) != getattr(wanted, f.name)
    ]
    differ = [n for n in differ if n not in ("extra", *_inert(wanted))]
    if differ:
        got = ", ".join(
            f"{n} = {getattr(wanted, n)!r} (the space gives {getattr(replayed, n)!r})" for n in differ
        )
        raise UserError(f"does not fit the space: {got}")
    return params


def _inert(config: TrainConfig) -> tuple[str, ...]:
    """Fields that change nothing for this config, so a baseline may leave them at any value."""
    inert = []
    if config.optimizer not in MOMENTUM_OPTIMIZERS:
        inert.append("momentum")
    if not config.batchnorm:
        inert.append("bn_momentum")
    if config.whiten != "zca":
        inert.append("zca_eps")
    if len(config.hidden) < 2:
        inert.append("residual")
    if not config.residual or len(config.hidden) < 2:
        inert.append("expansion")
    if not config.hidden:
        inert += ["activation", "dropout", "batchnorm", "layernorm"]
    if config.num_embedding != "periodic":
        inert += ["plr_frequencies", "plr_sigma", "plr_dim"]
    if ple_bins(config.numeric) is not None:
        inert.append("num_embedding")
    return tuple(inert)


# The params that shape a stacked model as a whole (search.training.fit.stack_key): the
# members of one stack share them, every other param is per member.
STACK_PARAMS = (
    "n_layers", "residual", "expansion", "ensemble_k", "batch_size", "whiten", "zca_eps", "numeric",
    "num_embedding", "plr_frequencies", "plr_dim",
)  # fmt: skip


def stack_params(params: dict[str, Any]) -> dict[str, Any]:
    """The params of a trial that the other members of its stack must share."""
    return {k: v for k, v in params.items() if k in STACK_PARAMS}


def trial_seed(base_seed: int, trial_number: int) -> int:
    """Each trial's weight-init and batch-order seed: distinct per trial, reproducible."""
    return (base_seed * 1_000_003 + trial_number) % (2**31 - 1)
