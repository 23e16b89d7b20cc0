"""search.bench --predict-speed: a real export and HistGradientBoosting timed on the same rows, what
each predicted while timed checked against its untimed predictions, the rows counted. No speed is
asserted."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from search.bench import build_parser, request_from_args
from search.errors import UserError
from search.perf import predict_speed
from search.perf.predict_speed import (
    ARMS,
    MODES,
    Case,
    format_predict_speed,
    load_case,
    run_predict_speed,
    time_mode,
)

SINGLE = 5


def small_case() -> Case:
    """Breast cancer on four columns and a text one (HistGradientBoosting's categories path)."""
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    x = x.iloc[:, :4].assign(size=np.where(x.iloc[:, 5] > x.iloc[:, 5].median(), "big", "small"))
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return Case("cancer", "test", "malignant", "classification", x_tr, x_te, y_tr, y_te)


@pytest.fixture(scope="module")
def measured():
    with pytest.MonkeyPatch.context() as mp, threadpool_limits(1, user_api="openmp"):
        mp.setattr(predict_speed, "MIN_ROUND_S", 0.0)  # one pass a round: the test times nothing
        # OpenMP's threads crawl on a busy shared CPU: HistGradientBoosting on one
        case = small_case()
        return case, run_predict_speed(
            case=case, budget_s=None, trials=1, epochs=1, single_rows=SINGLE, rounds=2
        )


def test_the_timed_passes_predicted_what_each_model_predicts_untimed(measured):
    case, r = measured
    bad = [(mode, arm) for mode in MODES for arm in ARMS if not r["modes"][mode][arm]["same_predictions"]]
    assert bad == []
    n = len(case.x_test)
    rows = {mode: {arm: r["modes"][mode][arm]["rows"] for arm in ARMS} for mode in MODES}
    assert rows == {
        "single": dict.fromkeys(ARMS, SINGLE),
        "batch": dict.fromkeys(ARMS, n),
        "all": dict.fromkeys(ARMS, n),
    }
    assert [r["modes"][m]["batch_rows"] for m in MODES] == [1, min(n, predict_speed.BATCH), n]
    # HistGradientBoosting at its defaults on the same training rows, the text column as categories
    cast = {"size": "category"}
    trees = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
    with threadpool_limits(1, user_api="openmp"):
        trees.fit(case.x_train.astype(cast), case.y_train)
        assert r["score"]["hgb"] == float((trees.predict(case.x_test.astype(cast)) == case.y_test).mean())
    assert 0.0 <= r["score"]["search"] <= 1.0 and r["model"]["n_params"] > 0


def test_the_figures_are_the_rounds_medians_and_travel_as_json(measured):
    _, r = measured
    assert json.loads(json.dumps(r))["target"] == "cancer"
    assert r["threads"]["torch"] >= 1 and r["rounds"] == 2
    for mode in MODES:
        m = r["modes"][mode]
        for arm in ARMS:
            a = m[arm]
            assert len(a["seconds"]) == 2 and a["passes"] == 1
            assert a["rates"] == [a["rows"] / s for s in a["seconds"]]
            assert a["rows_per_s"] == statistics.median(a["rates"])
        assert m["ratio"] == [s / h for s, h in zip(m["search"]["rates"], m["hgb"]["rates"], strict=True)]
        assert m["ratio_median"] == statistics.median(m["ratio"])
    text = format_predict_speed(r)
    assert f"single rows ({SINGLE})" in text and "search/HGB" in text and "differ" not in text


def test_time_mode_counts_the_rows_it_times_and_catches_a_path_that_predicts_other_rows():
    data = np.arange(10.0)
    calls = []

    def right(batch):
        calls.append(len(batch))
        return batch * 2

    batches = [data[i : i + 1] for i in range(6)]  # six single rows of the ten
    out = time_mode({"right": (right, batches), "wrong": (lambda b: b * 2 + 1, batches)},
                    {"right": data * 2, "wrong": data * 2}, rounds=3, min_round_s=0.0)  # fmt: skip
    assert out["right"]["rows"] == 6 and out["right"]["passes"] == 1 and len(out["right"]["seconds"]) == 3
    assert calls == [1] * 6 * (1 + 3)  # a warm-up pass, then one a round: each a row at a time
    assert out["right"]["same_predictions"] and not out["wrong"]["same_predictions"]


def test_the_target_is_one_of_the_suite_or_without_one_breast_cancer(tmp_path, monkeypatch):
    monkeypatch.setattr(predict_speed, "SHARED_SUITE", tmp_path / "absent.json")
    case = load_case()
    assert (case.name, len(case.x_train), len(case.x_test)) == ("breast_cancer", 455, 114)
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    x.assign(kind=np.where(y == 1, "b", "m")).iloc[:200].to_csv(tmp_path / "cancer.csv", index=False)
    entry = {"table": "cancer.csv", "target": "kind", "task": "classification"}
    suite = {"targets": [{"name": "one", **entry}, {"name": "two", **entry, "drop": ["mean area"]}]}
    (tmp_path / "suite.json").write_text(json.dumps(suite))
    assert load_case(tmp_path / "suite.json").name == "one"  # no HI-whi here: the first
    two = load_case(tmp_path / "suite.json", ["two"])
    assert (two.name, len(two.x_test), "mean area" in two.x_train.columns) == ("two", 40, False)
    with pytest.raises(UserError, match="one target"):
        load_case(tmp_path / "suite.json", ["one,two"])


def test_the_bench_flags_ask_for_it():
    args = build_parser().parse_args(["--predict-speed", "--only", "Wages-lwage", "--predict-rows", "50",
                                      "--predict-budget", "30", "--rounds", "3"])  # fmt: skip
    request = request_from_args(args)
    assert (request.kind, request.tables_only, request.predict_rows) == (
        "predict-speed",
        ("Wages-lwage",),
        50,
    )
    assert (request.predict_budget, request.rounds) == (30.0, 3)
