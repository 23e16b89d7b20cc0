"""Study files: the bundled ones load, a broken one is refused in one line naming file and key."""

import pytest

from search.errors import UserError
from search.tuning.study_file import PACKAGE_STUDIES, load_study


@pytest.mark.parametrize("name", ["cifar10", "digits"])
def test_bundled_studies_load(name):
    spec = load_study(name)
    assert spec.name == name and spec.dataset == name and spec.epochs >= 1
    assert {"optimizer", "activation", "l1", "weight_decay", "dropout", "bn_momentum"} <= set(spec.space)
    assert "lr" in spec.space or {"lr_sgd", "lr_adam", "lr_adamw", "lr_rmsprop"} <= set(spec.space)


def _write(tmp_path, text):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return str(path)


def test_toml_syntax_error_names_the_file(tmp_path):
    path = _write(tmp_path, "[study]\ndataset = digits\n")
    with pytest.raises(UserError, match=r"s\.toml: TOML syntax error"):
        load_study(path)


def test_unknown_study_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown study 'nope'.*digits"):
        load_study("nope")


@pytest.mark.parametrize(
    "text, words",
    [
        ('[study]\ndataset = "mnist"\n', ["dataset 'mnist'", "cifar10"]),
        ('[study]\ndataset = "digits"\nsampler = "grid"\n', ["sampler 'grid'", "tpe"]),
        ('[study]\ndataset = "digits"\npruner = "asha"\n', ["pruner 'asha'", "hyperband"]),
        ('[study]\ndataset = "digits"\nepochs = "ten"\n', ["study.epochs", "expected int"]),
        ('[study]\ndataset = "digits"\nlr = 0.1\n', ["study.lr", "unknown key"]),
        ("[study]\nepochs = 3\n", ["study.dataset is required"]),
    ],
)
def test_bad_study_table_is_refused_in_one_line(tmp_path, text, words):
    with pytest.raises(UserError) as e:
        load_study(_write(tmp_path, text))
    assert "\n" not in str(e.value) and "s.toml" in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_command_line_overrides_are_checked_too():
    spec = load_study("digits").with_overrides(epochs=2, pruner=None)
    assert spec.epochs == 2 and spec.pruner == "median"
    with pytest.raises(UserError, match="sampler 'grid'"):
        load_study("digits").with_overrides(sampler="grid")


def test_the_space_table_is_kept_as_written_for_the_study_record():
    spec = load_study("digits")
    assert spec.raw_space["lr"] == {"low": 1e-4, "high": 1e-1, "log": True}
    assert set(spec.raw_space) == set(spec.space)


BASELINE_STUDY = """
[study]
dataset = "digits"
epochs = 4
pruner = "halving"
min_epochs = 2
startup_trials = 3

[space]
n_layers = {low = 1, high = 2}
width = {low = 16, high = 64}
optimizer = ["sgd", "adam"]
lr = {sgd = {low = 0.01, high = 0.3, log = true}, adam = {low = 1e-4, high = 1e-2, log = true}}

[baseline]
hidden = [32]
optimizer = "sgd"
lr = 0.05
"""


def test_a_baseline_table_is_read_and_checked_against_the_space(tmp_path):
    spec = load_study(_write(tmp_path, BASELINE_STUDY))
    assert spec.baseline.hidden == (32,) and spec.baseline.lr == 0.05
    assert spec.baseline_params() == {"n_layers": 1, "width_0": 32, "optimizer": "sgd", "lr_sgd": 0.05}
    assert (spec.pruner, spec.min_epochs, spec.startup_trials) == ("halving", 2, 3)


@pytest.mark.parametrize(
    "old, new, words",
    [
        ("lr = 0.05\n", "lr = 0.9\n", ["[baseline]", "lr_sgd"]),
        ("hidden = [32]", "hidden = [32]\ncolour = 1", ["[baseline] colour", "unknown field"]),
        ("hidden = [32]", "hidden = [32]\nepochs = 3", ["[baseline] epochs", "come from the study"]),
        ('optimizer = "sgd"\nlr', 'optimizer = "lbfgs"\nlr', ["[baseline]", "lbfgs"]),
        # a known value the space's choices leave out: Optuna's FixedTrial raises ValueError there
        ('optimizer = ["sgd", "adam"]', 'optimizer = ["adam"]', ["[baseline]", "'sgd' not in"]),
    ],
)
def test_a_bad_baseline_is_refused_in_one_line(tmp_path, old, new, words):
    text = BASELINE_STUDY.replace("[baseline]", "[baseline]\n").replace(old, new)
    with pytest.raises(UserError) as e:
        load_study(_write(tmp_path, text))
    assert "\n" not in str(e.value) and "s.toml" in str(e.value)
    for w in words:
        assert w in str(e.value)


START = """
[[start]]
hidden = [64, 16]
optimizer = "adam"
lr = 0.003

[[start]]
hidden = [48]
optimizer = "sgd"
lr = 0.1
"""


def test_start_tables_are_read_in_order_as_params_of_the_space(tmp_path):
    spec = load_study(_write(tmp_path, BASELINE_STUDY + START))
    assert spec.start_params() == [
        {"n_layers": 2, "width_0": 64, "width_1": 16, "optimizer": "adam", "lr_adam": 0.003},
        {"n_layers": 1, "width_0": 48, "optimizer": "sgd", "lr_sgd": 0.1},
    ]


def test_a_start_table_with_objectives_is_tried_only_in_a_study_with_them(tmp_path):
    text = BASELINE_STUDY + START.replace("hidden = [48]", 'objectives = ["score", "params"]\nhidden = [48]')
    spec = load_study(_write(tmp_path, text))
    big = {"n_layers": 2, "width_0": 64, "width_1": 16, "optimizer": "adam", "lr_adam": 0.003}
    assert spec.start_params() == [big]
    small = {"n_layers": 1, "width_0": 48, "optimizer": "sgd", "lr_sgd": 0.1}
    assert spec.with_overrides(objectives=("score", "params")).start_params() == [big, small]
    assert spec.with_overrides(objectives=("score", "latency")).start_params() == [big]


@pytest.mark.parametrize(
    "old, new, words",
    [
        ("lr = 0.1\n", "lr = 0.9\n", ["[[start]] #2", "lr_sgd"]),
        ("hidden = [48]", "hidden = [48]\nseed = 3", ["[[start]] #2 seed", "come from the study"]),
        ("[[start]]\nhidden = [64, 16]", "[start]\nhidden = [64, 16]", ["[[start]]", "array of tables"]),
        ("hidden = [48]", 'objectives = ["params"]\nhidden = [48]', ["[[start]] #2 objectives", "allowed"]),
    ],
)
def test_a_bad_start_config_is_refused_in_one_line(tmp_path, old, new, words):
    text = BASELINE_STUDY + START.replace(old, new, 1)
    if words[1] == "array of tables":
        text = BASELINE_STUDY + "\n[start]\nhidden = [64, 16]\n"
    with pytest.raises(UserError) as e:
        load_study(_write(tmp_path, text))
    assert "\n" not in str(e.value) and "s.toml" in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_the_default_studys_baseline_is_the_notebooks_model():
    base = load_study("cifar10").baseline
    assert base.hidden == (512, 256) and base.activation == "relu" and not base.batchnorm
    assert (base.optimizer, base.lr, base.momentum, base.batch_size) == ("sgd", 0.001, 0.9, 128)
    assert (base.schedule, base.label_smoothing, base.hflip, base.translate, base.whiten) == (
        "constant", 0.0, False, 0, "none")  # fmt: skip


@pytest.mark.parametrize("path", sorted(PACKAGE_STUDIES.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_study_file_loads_with_an_ensemble_pool(path):
    spec = load_study(str(path))
    assert spec.ensemble >= 1 and spec.space, spec
