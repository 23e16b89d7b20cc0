"""Study files: the bundled ones load, a broken one is refused in one line naming file and key."""

import pytest

from search.errors import UserError
from search.study_file import load_study


@pytest.mark.parametrize("name", ["cifar10", "digits"])
def test_bundled_studies_load(name):
    spec = load_study(name)
    assert spec.name == name and spec.dataset == name and spec.epochs >= 1
    assert {"lr", "optimizer", "activation", "l1", "weight_decay", "dropout"} <= set(spec.space)


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
