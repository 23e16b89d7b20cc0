"""Only the search space samples; what it samples respects the study file, and replays exactly."""

import optuna
import pytest

from search.errors import UserError
from search.tuning.space import parse_space, replay_config, sample_config

SPACE = {
    "n_layers": {"low": 1, "high": 3},
    "width": {"low": 16, "high": 256, "log": True},
    "activation": ["relu", "tanh"],
    "dropout": {"low": 0.0, "high": 0.5},
    "batchnorm": [True, False],
    "bn_momentum": {"low": 0.01, "high": 0.5, "log": True},
    "optimizer": ["sgd", "adam"],
    "lr": {"low": 1e-4, "high": 1e-1, "log": True},
    "momentum": 0.8,
    "batch_size": [32, 64],
}


def _sample_many(space, n=60):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((trial, sample_config(trial, space, epochs=3, seed=0)))
        study.tell(trial, 0.0)
    return out


def test_sampling_respects_ranges_choices_and_log_scale():
    space = parse_space(SPACE, where="t.toml")
    for trial, c in _sample_many(space):
        assert 1 <= len(c.hidden) <= 3 and all(16 <= w <= 256 for w in c.hidden)
        assert c.activation in ("relu", "tanh") and c.batch_size in (32, 64)
        assert 0.0 <= c.dropout <= 0.5 and 1e-4 <= c.lr <= 1e-1
        assert trial.distributions["lr"].log and trial.distributions["width_0"].log
        assert not trial.distributions["dropout"].log


def test_fixed_values_are_used_but_never_become_params():
    space = parse_space(SPACE, where="t.toml")
    for trial, c in _sample_many(space, 20):
        assert "momentum" not in trial.params
        assert c.momentum == (0.8 if c.optimizer == "sgd" else 0.0)


def test_conditional_knobs_exist_only_when_they_matter():
    space = parse_space(SPACE, where="t.toml")
    for trial, c in _sample_many(space, 40):
        assert ("bn_momentum" in trial.params) == c.batchnorm
        widths = sorted(k for k in trial.params if k.startswith("width_"))
        assert widths == [f"width_{i}" for i in range(len(c.hidden))]


def test_log_range_spreads_over_decades():
    space = parse_space({"lr": {"low": 1e-5, "high": 1e-1, "log": True}}, where="t.toml")
    lrs = [c.lr for _, c in _sample_many(space, 200)]
    below_1e3 = sum(lr < 1e-3 for lr in lrs) / len(lrs)
    assert 0.35 < below_1e3 < 0.65  # half the decades lie below 1e-3; a linear draw gives ~1%


def test_replayed_params_give_the_same_config():
    space = parse_space(SPACE, where="t.toml")
    for trial, c in _sample_many(space, 20):
        assert replay_config(trial.params, space, epochs=3, seed=0) == c


def test_replay_of_params_outside_the_space_is_a_user_error():
    space = parse_space(SPACE, where="t.toml")
    with pytest.raises(UserError):
        replay_config({"n_layers": 9}, space, epochs=1, seed=0)


@pytest.mark.parametrize(
    "table, words",
    [
        ({"colour": ["red"]}, ["space.colour", "unknown knob", "activation"]),
        ({"lr": {"low": 0.1, "high": 0.01}}, ["space.lr", "low (0.1) > high (0.01)"]),
        ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, ["space.lr", "log range needs low > 0"]),
        ({"activation": ["relu", "swish"]}, ["space.activation", "'swish'", "allowed"]),
        ({"optimizer": "lbfgs"}, ["space.optimizer", "'lbfgs'", "adamw"]),
        ({"n_layers": {"low": 1.5, "high": 3}}, ["space.n_layers", "not an integer"]),
        ({"batchnorm": {"low": 0, "high": 1}}, ["space.batchnorm", "not a range"]),
    ],
)
def test_a_bad_space_is_refused_naming_file_key_and_what_is_allowed(table, words):
    with pytest.raises(UserError) as e:
        parse_space(table, where="studies/x.toml")
    message = str(e.value)
    assert message.startswith("studies/x.toml: ") and "\n" not in message
    for w in words:
        assert w in message


PER_OPTIMIZER = {
    "optimizer": ["sgd", "adam"],
    "lr": {"sgd": {"low": 0.01, "high": 0.3, "log": True}, "adam": {"low": 1e-4, "high": 1e-3, "log": True}},
}


def test_per_optimizer_lr_samples_each_optimizers_own_range():
    space = parse_space(PER_OPTIMIZER, where="t.toml")
    seen = set()
    for trial, c in _sample_many(space, 40):
        name = f"lr_{c.optimizer}"
        assert [k for k in trial.params if k.startswith("lr")] == [name]
        assert c.lr == trial.params[name]
        low, high = (0.01, 0.3) if c.optimizer == "sgd" else (1e-4, 1e-3)
        assert low <= c.lr <= high and trial.distributions[name].log
        seen.add(c.optimizer)
        assert replay_config(trial.params, space, epochs=3, seed=0) == c
    assert seen == {"sgd", "adam"}


@pytest.mark.parametrize(
    "table, words",
    [
        ({"optimizer": ["sgd", "adamw"], "lr": {"sgd": 0.1}}, ["space.lr", "no lr for optimizer(s) adamw"]),
        ({"lr": {"lbfgs": 0.1}}, ["space.lr", "lbfgs", "not an optimizer"]),
        (
            {"optimizer": ["adam"], "lr": {"adam": {"low": 1, "high": 0.1}}},
            ["space.lr.adam", "low (1) > high"],
        ),
    ],
)
def test_a_bad_per_optimizer_lr_table_is_refused(table, words):
    with pytest.raises(UserError) as e:
        parse_space(table, where="studies/x.toml")
    for w in words:
        assert w in str(e.value)


NEW_KNOBS = {
    "schedule": ["constant", "cosine", "onecycle"],
    "warmup": {"low": 0.0, "high": 0.3},
    "label_smoothing": {"low": 0.0, "high": 0.3},
    "hflip": [True, False],
    "translate": {"low": 0, "high": 4},
    "whiten": ["none", "zca"],
    "zca_eps": {"low": 0.1, "high": 1.0, "log": True},
}


def test_quality_knobs_are_sampled_into_the_config():
    space = parse_space(NEW_KNOBS, where="t.toml")
    configs = [c for _, c in _sample_many(space, 60)]
    assert {c.schedule for c in configs} == {"constant", "cosine", "onecycle"}
    assert {c.translate for c in configs} == {0, 1, 2, 3, 4} and {c.hflip for c in configs} == {True, False}
    assert all(0 <= c.warmup <= 0.3 and 0 <= c.label_smoothing <= 0.3 for c in configs)
    for trial, c in _sample_many(space, 30):
        assert ("zca_eps" in trial.params) == (c.whiten == "zca")


def test_hflip_takes_booleans_only():
    with pytest.raises(UserError, match="space.hflip"):
        parse_space({"hflip": ["yes", "no"]}, where="t.toml")


def test_a_baseline_config_becomes_the_params_that_replay_it():
    from search.training.config import TrainConfig
    from search.tuning.space import config_params

    space = parse_space({**SPACE, **PER_OPTIMIZER, **NEW_KNOBS}, where="t.toml")
    base = TrainConfig(hidden=(64, 32), batchnorm=False, optimizer="sgd", lr=0.05, momentum=0.8,
                       batch_size=32, schedule="cosine", translate=2, whiten="zca", zca_eps=0.5)  # fmt: skip
    params = config_params(base, space, epochs=3)
    assert params["lr_sgd"] == 0.05 and params["width_1"] == 32 and "bn_momentum" not in params
    assert replay_config(params, space, epochs=3, seed=0) == base.replace(epochs=3)


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(lr=0.5), ["lr_sgd", "0.5"]),  # outside sgd's range
        (dict(momentum=0.9), ["momentum = 0.9", "0.8"]),  # the space fixes momentum to 0.8
        (dict(hidden=(8,)), ["width_0", "8"]),
    ],
)
def test_a_baseline_the_space_cannot_express_is_refused(change, words):
    from search.training.config import TrainConfig
    from search.tuning.space import config_params

    space = parse_space({**SPACE, **PER_OPTIMIZER}, where="t.toml")
    base = TrainConfig(hidden=(64,), optimizer="sgd", lr=0.05, momentum=0.8, batch_size=32).replace(**change)
    with pytest.raises(UserError) as e:
        config_params(base, space, epochs=3)
    assert "baseline" in str(e.value) or "space" in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_the_norm_knob_picks_batch_layer_or_no_norm_and_replays():
    table = {k: v for k, v in SPACE.items() if k != "batchnorm"}
    space = parse_space({**table, "norm": ["batch", "layer", "none"]}, where="t.toml")
    seen = set()
    for trial, c in _sample_many(space, 60):
        assert c.norm == trial.params["norm"] and not (c.batchnorm and c.layernorm)
        assert ("bn_momentum" in trial.params) == (trial.params["norm"] == "batch")
        assert replay_config(trial.params, space, epochs=3, seed=0) == c
        seen.add(c.norm)
    assert seen == {"batch", "layer", "none"}


def test_a_baseline_with_layernorm_replays_through_the_norm_knob():
    from search.training.config import TrainConfig
    from search.tuning.space import config_params

    table = {k: v for k, v in SPACE.items() if k != "batchnorm"}
    space = parse_space({**table, "norm": ["batch", "layer", "none"]}, where="t.toml")
    base = TrainConfig(hidden=(64,), batchnorm=False, layernorm=True, optimizer="sgd", lr=0.05,
                       momentum=0.8, batch_size=32)  # fmt: skip
    params = config_params(base, space, epochs=3)
    assert params["norm"] == "layer"
    assert replay_config(params, space, epochs=3, seed=0) == base.replace(epochs=3)


@pytest.mark.parametrize(
    "table, words",
    [
        ({"batchnorm": [True, False], "norm": ["layer"]}, ["space.batchnorm", "space.norm", "keep one"]),
        ({"norm": ["group"]}, ["space.norm", "group"]),
    ],
)
def test_a_space_with_two_norm_knobs_or_an_unknown_norm_is_refused(table, words):
    with pytest.raises(UserError) as e:
        parse_space(table, where="t.toml")
    for w in words:
        assert w in str(e.value)


def test_a_config_with_both_norms_is_refused():
    from search.training.config import TrainConfig

    with pytest.raises(UserError, match="exclude each other"):
        TrainConfig(batchnorm=True, layernorm=True)


def test_residual_blocks_share_one_width_and_draw_their_expansion_only_when_on():
    from search.tuning.space import STACK_PARAMS

    space = parse_space({**SPACE, "residual": [True, False], "expansion": [2, 4]}, where="t.toml")
    seen = set()
    for trial, c in _sample_many(space, 80):
        on = trial.params.get("residual", False)
        assert c.residual == on and ("residual" in trial.params) == (len(c.hidden) > 1)
        assert ("expansion" in trial.params) == on
        if on:
            assert len(set(c.hidden)) == 1 and not any(f"width_{i}" in trial.params for i in (1, 2))
            assert c.expansion == trial.params["expansion"]
        assert replay_config(trial.params, space, epochs=3, seed=0) == c
        seen.add(on)
    assert seen == {True, False}
    assert {"residual", "expansion"} <= set(STACK_PARAMS)  # a stack's members share its blocks


def test_the_periodic_embedding_draws_its_sizes_only_when_on_and_never_with_bins():
    from search.tuning.space import STACK_PARAMS

    plr = {
        "num_embedding": ["none", "periodic"], "plr_frequencies": {"low": 4, "high": 64},
        "plr_sigma": {"low": 0.01, "high": 10.0, "log": True}, "plr_dim": {"low": 4, "high": 32},
    }  # fmt: skip
    space = parse_space({**SPACE, **plr, "numeric": ["standard", "ple16"]}, where="t.toml")
    seen = set()
    for trial, c in _sample_many(space, 80):
        on = c.num_embedding == "periodic"
        assert ("num_embedding" in trial.params) == (c.numeric == "standard")  # bins take no embedding
        assert all((name in trial.params) == on for name in ("plr_frequencies", "plr_sigma", "plr_dim"))
        if on:
            assert 4 <= c.plr_frequencies <= 64 and 4 <= c.plr_dim <= 32 and 0.01 <= c.plr_sigma <= 10.0
            assert trial.distributions["plr_sigma"].log
        assert replay_config(trial.params, space, epochs=3, seed=0) == c
        seen.add((c.numeric, c.num_embedding))
    assert seen == {("standard", "none"), ("standard", "periodic"), ("ple16", "none")}
    assert {"num_embedding", "plr_frequencies", "plr_dim"} <= set(STACK_PARAMS)  # they shape the input
    assert "plr_sigma" not in STACK_PARAMS  # only where the frequencies start: per member


def test_a_baseline_without_the_embedding_fits_a_space_that_searches_it():
    from search.training.config import TrainConfig
    from search.tuning.space import config_params

    space = parse_space({**SPACE, **PER_OPTIMIZER, "num_embedding": ["none", "periodic"],
                         "plr_dim": {"low": 4, "high": 32}}, where="t.toml")  # fmt: skip
    base = TrainConfig(hidden=(64,), optimizer="sgd", lr=0.05, momentum=0.8, batch_size=32, plr_dim=99)
    params = config_params(base, space, epochs=3)  # plr_dim is inert without the embedding
    assert params["num_embedding"] == "none" and "plr_dim" not in params
    with_it = base.replace(num_embedding="periodic", plr_dim=8)
    params = config_params(with_it, space, epochs=3)
    assert replay_config(params, space, epochs=3, seed=0) == with_it.replace(epochs=3)


@pytest.mark.parametrize(
    "table, words",
    [
        ({"num_embedding": "periodic", "numeric": "ple16"}, ["space.num_embedding", "never applies"]),
        ({"num_embedding": ["periodic"], "numeric": ["ple8", "ple64"]}, ["piecewise-linear"]),
        ({"num_embedding": ["plr"]}, ["space.num_embedding", "none, periodic"]),
        ({"plr_sigma": {"low": 0.0, "high": 1.0}}, ["space.plr_sigma", "outside"]),
        ({"plr_dim": {"low": 1, "high": 4096}}, ["space.plr_dim", "outside"]),
    ],
)
def test_a_bad_embedding_space_is_refused(table, words):
    with pytest.raises(UserError) as e:
        parse_space(table, where="t.toml")
    assert "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value)
