"""search.optuna_versions: internals only on a tested Optuna, the switch, and one warning."""

import warnings

import pytest

from search import optuna_versions
from search.optuna_versions import ENV, TESTED, internals_allowed, minor


@pytest.fixture
def version(monkeypatch):
    """Pretend another Optuna is installed; each test starts with no warning given yet."""
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(optuna_versions, "_warned", set())

    def set_version(v: str) -> None:
        monkeypatch.setattr(optuna_versions, "optuna_version", lambda: v)

    return set_version


def test_minor_reads_major_and_minor_of_any_version_string():
    assert [minor(v) for v in ("5.0.0", "5.1.0rc1", "5.12.3.dev0", "6.0")] == ["5.0", "5.1", "5.12", "6.0"]


def test_a_tested_optuna_allows_the_internals_without_a_warning(version):
    version(f"{TESTED[0]}.7")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert internals_allowed()


def test_an_untested_optuna_gets_the_public_path_and_one_warning_naming_it(version):
    version("5.99.0")
    with pytest.warns(RuntimeWarning, match=r"Optuna 5\.99\.0 .*SEARCH_OPTUNA_INTERNALS=on"):
        assert not internals_allowed()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second ask is silent
        assert not internals_allowed()


@pytest.mark.parametrize("switch, tested, allowed", [
    ("off", True, False), ("0", True, False), ("OFF ", True, False),
    ("on", False, True), ("1", False, True),
])  # fmt: skip
def test_the_switch_wins_over_the_version_table(version, monkeypatch, switch, tested, allowed):
    version(f"{TESTED[0]}.0" if tested else "5.99.0")
    monkeypatch.setenv(ENV, switch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert internals_allowed() is allowed
