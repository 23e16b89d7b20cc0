"""search.posthoc.certify: fresh seeds, ranking by mean validation, the winner's one test touch."""

from __future__ import annotations

import json
import math
import statistics

import optuna
import pytest
import scipy.stats
import torch
from optuna.trial import TrialState

from search.artifacts.evaluation import best_config, evaluate, load_model, read_best
from search.data.datasets import load_dataset
from search.posthoc import certify, seed_fits
from search.posthoc.certify import (
    CERTIFIED_BEST,
    CERTIFIED_JSON,
    CERTIFIED_MODEL,
    CERTIFIED_TXT,
    Candidate,
    SeedFit,
    certify_study,
    fresh_seeds,
    rank,
    t_interval,
)
from search.posthoc.retrain import retrain
from search.training.config import TrainConfig
from search.training.fit import EpochMetrics, FitResult, fit
from search.tuning.space import parse_space, replay_config

TOP, SEEDS = 3, 2
CPU = torch.device("cpu")


# The thread count the shared study was searched with: the same float sums.
pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0)


@pytest.fixture(scope="module")
def certified(digits_study, tmp_path_factory):
    """Certify the shared study (read-only storage) into a private results folder, recording
    every model that evaluate_test is given."""
    tested = []
    real = certify.evaluate_test

    def counting(model, data, *args):
        tested.append(model)
        return real(model, data)

    results = tmp_path_factory.mktemp("certified")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(certify, "evaluate_test", counting)
        done = certify_study(
            storage_url=digits_study.storage_url, study_name=None, top=TOP, seeds=SEEDS, jobs=1,
            results_dir=results, device=CPU,
        )  # fmt: skip
    payload = json.loads((done.out_dir / CERTIFIED_JSON).read_text())
    return done, payload, tested


def complete_by_value(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    return sorted(complete, key=lambda t: (-t.value, t.number))


# ---------------------------------------------------------------------------- seeds and figures


def test_fresh_seeds_are_reproducible_distinct_and_never_the_trials_own():
    for trial_seed in (0, 1, 7, 2**31 - 2):
        seeds = fresh_seeds(trial_seed, 5)
        assert seeds == fresh_seeds(trial_seed, 5)
        assert len(set(seeds)) == 5 and trial_seed not in seeds
        assert all(0 <= s < 2**31 - 1 for s in seeds)
        assert fresh_seeds(trial_seed, 2) == seeds[:2]  # more seeds extend fewer
    assert fresh_seeds(0, 3) != fresh_seeds(1, 3)


def test_the_interval_is_students_t_of_the_mean():
    values = [0.90, 0.92, 0.97]
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    half = 4.30265272974946 * std / math.sqrt(3)  # t(0.975, 2 degrees of freedom), from a table
    lo, hi = t_interval(values)
    assert lo == pytest.approx(mean - half, abs=1e-9) and hi == pytest.approx(mean + half, abs=1e-9)
    assert t_interval([0.9]) is None


def _candidate(rank_in_search: int, values: list[float | None]) -> Candidate:
    trial = optuna.trial.create_trial(value=1.0 - rank_in_search / 100, params={}, distributions={})
    fits = [SeedFit(i, v, None if v is not None else "nan", 1, 0.0, b"") for i, v in enumerate(values)]
    return Candidate(trial, rank_in_search, TrainConfig(), list(range(len(values))), fits)


def test_ranking_is_by_mean_validation_not_by_best_seed_nor_search_rank():
    lucky = _candidate(1, [0.99, 0.80])  # the best single seed, a worse mean (0.895)
    steady = _candidate(2, [0.93, 0.92])  # the best mean (0.925)
    tied = _candidate(3, [0.90, 0.89])  # 0.895, like `lucky`: the search rank breaks the tie
    unstable = _candidate(4, [None, 0.999])  # a diverged seed: last, whatever the other seed did
    ranked = rank([unstable, tied, lucky, steady])
    assert ranked == [steady, lucky, tied, unstable]
    assert [c.certified_rank for c in ranked] == [1, 2, 3, 4]


# ---------------------------------------------------------------------------- a real certification


def test_it_certifies_the_studys_top_complete_trials_with_fresh_seeds(digits_study, certified):
    _, payload, _ = certified
    expected = complete_by_value(digits_study.load())[:TOP]
    by_search = sorted(payload["configs"], key=lambda c: c["search_rank"])
    assert [c["trial_number"] for c in by_search] == [t.number for t in expected]
    assert [c["search_value"] for c in by_search] == [t.value for t in expected]
    for c, t in zip(by_search, expected, strict=True):
        assert c["params"] == t.params and c["trial_seed"] == t.user_attrs["seed"]
        assert len(c["seeds"]) == SEEDS == len(set(c["seeds"])) and t.user_attrs["seed"] not in c["seeds"]


def test_per_seed_values_equal_a_direct_fit_of_the_same_config_and_seed(digits_study, certified, data):
    _, payload, _ = certified
    attrs = digits_study.load().user_attrs
    space = parse_space(attrs["space"], where="test")
    for c in payload["configs"]:
        for seed, value in zip(c["seeds"], c["val_score"], strict=True):
            config = replay_config(c["params"], space, epochs=attrs["epochs"], seed=seed)
            assert fit(config, data).val_score == value, (c["trial_number"], seed)


def test_the_ranking_follows_the_mean_of_the_recorded_per_seed_values(certified):
    done, payload, _ = certified
    configs = payload["configs"]
    means = [statistics.fmean(c["val_score"]) for c in configs]
    assert means == sorted(means, reverse=True)
    assert [c["certified_rank"] for c in configs] == list(range(1, len(configs) + 1))
    for c, mean in zip(configs, means, strict=True):
        assert c["val_mean"] == pytest.approx(mean, abs=1e-15)
        assert c["val_std"] == pytest.approx(statistics.stdev(c["val_score"]), abs=1e-15)
    winner = payload["winner"]
    assert winner["trial_number"] == configs[0]["trial_number"] == done.winner.trial.number
    assert winner["val_mean"] == max(means)


def test_the_test_split_is_scored_for_the_winner_only_once_per_seed(certified, data):
    done, payload, tested = certified
    winner = payload["configs"][0]
    assert len(tested) == SEEDS  # not TOP * SEEDS
    # Each tested model is the winner's, seed by seed: it scores the winner's validation values.
    assert [evaluate(m, data.x_val, data.y_val)[1] for m in tested] == winner["val_score"]
    assert [evaluate(m, data.x_test, data.y_test)[1] for m in tested] == payload["winner"]["test_score"]


def test_the_winners_test_figures_equal_a_direct_fit_and_test(digits_study, certified, data):
    _, payload, _ = certified
    w, c = payload["winner"], payload["configs"][0]
    attrs = digits_study.load().user_attrs
    space = parse_space(attrs["space"], where="test")
    tests = []
    for seed in w["seeds"]:
        model = fit(replay_config(c["params"], space, epochs=attrs["epochs"], seed=seed), data).model
        tests.append(evaluate(model, data.x_test, data.y_test)[1])
    assert w["test_score"] == tests
    assert w["test_mean"] == pytest.approx(statistics.fmean(tests), abs=1e-15)
    assert w["test_std"] == pytest.approx(statistics.stdev(tests), abs=1e-15)
    assert w["n_test"] == len(data.y_test)
    lo, hi = w["test_ci95"]
    half = scipy.stats.t.ppf(0.975, len(tests) - 1) * statistics.stdev(tests) / len(tests) ** 0.5
    assert (lo, hi) == pytest.approx((w["test_mean"] - half, w["test_mean"] + half), abs=1e-12)


def test_certified_txt_is_the_table_of_certified_json(certified):
    done, payload, _ = certified
    text = (done.out_dir / CERTIFIED_TXT).read_text()
    rows = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[2]) for r in rows] == [c["trial_number"] for c in payload["configs"]]
    assert [r[0] for r in rows] == [str(i) for i in range(1, len(rows) + 1)]
    for r, c in zip(rows, payload["configs"], strict=True):
        assert r[4] == f"{c['val_mean']:.4f}" and r[-SEEDS:] == [f"{v:.4f}" for v in c["val_score"]]
    w = payload["winner"]
    assert f"winner: trial {w['trial_number']}" in text
    assert f"test accuracy {w['test_mean']:.4f} ± {w['test_std']:.4f}" in text
    assert payload["provenance"]["command"].startswith("python -m search.certify")


def test_certified_best_json_retrains_with_search_train_to_its_value(certified, tmp_path, data):
    done, payload, _ = certified
    best = read_best(done.out_dir / CERTIFIED_BEST)  # export's keys and types
    w = payload["winner"]
    assert best["trial_number"] == w["trial_number"] and best["config"]["seed"] == w["seeds"][0]
    assert best["value"] == payload["configs"][0]["val_score"][0]
    assert best_config(best) == TrainConfig.from_dict(payload["configs"][0]["config"]).replace(
        seed=w["seeds"][0]
    )
    model = load_model(best, done.out_dir / CERTIFIED_MODEL, in_features=64, n_classes=10)
    assert evaluate(model, data.x_test, data.y_test)[1] == best["test_score"] == w["test_score"][0]
    again = retrain(done.out_dir / CERTIFIED_BEST, device=CPU, out_dir=tmp_path)  # search.retrain's library
    assert again.reproduced is True and again.runs[0].evaluation.accuracy == best["test_score"]


# ---------------------------------------------------------------------------- a constructed case


def test_the_winner_is_the_best_mean_even_when_the_search_best_has_the_best_seed(
    digits_study, tmp_path, monkeypatch
):
    """Fake fits with chosen values: the search's best gets the best single seed and a poor mean;
    the search's second gets the best mean. Only the second's models may reach the test split."""
    ranked = complete_by_value(digits_study.load())[:3]
    plan = {ranked[0].number: [0.99, 0.70], ranked[1].number: [0.90, 0.90], ranked[2].number: [0.80, 0.85]}
    values = {}  # fresh seed -> its planned validation value
    for t in ranked:
        values.update(zip(fresh_seeds(t.user_attrs["seed"], 2), plan[t.number], strict=True))
    mark = {seed: i for i, seed in enumerate(values)}  # small ints: exact in a float32 bias
    real_fit = seed_fits.fit

    def fake_fit(config, data, **kw):
        one_epoch = real_fit(config.replace(epochs=1), data)  # a real model, marked with its seed
        with torch.no_grad():
            one_epoch.model[-1].bias.fill_(float(mark[config.seed]))
        return FitResult(one_epoch.model, [EpochMetrics(1, 0.0, 0.0, values[config.seed])])

    tested = []
    real_test = certify.evaluate_test
    monkeypatch.setattr(seed_fits, "fit", fake_fit)
    monkeypatch.setattr(
        certify, "evaluate_test", lambda m, d, *a: tested.append(int(m[-1].bias[0])) or real_test(m, d, *a)
    )
    done = certify_study(storage_url=digits_study.storage_url, study_name="digits", top=3, seeds=2,
                         results_dir=tmp_path, device=CPU)  # fmt: skip
    payload = json.loads((tmp_path / "digits" / CERTIFIED_JSON).read_text())
    second = ranked[1]
    assert payload["winner"]["trial_number"] == second.number == done.winner.trial.number
    assert [c["search_rank"] for c in payload["configs"]] == [2, 1, 3]
    assert payload["search_best"] == {"trial_number": ranked[0].number, "certified_rank": 2}
    assert tested == [mark[s] for s in fresh_seeds(second.user_attrs["seed"], 2)]
    text = (tmp_path / "digits" / CERTIFIED_TXT).read_text()
    assert f"the search's best, trial {ranked[0].number}, certified at rank 2" in text
