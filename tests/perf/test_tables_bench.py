"""search.bench --tables: every suite target on its reference split, the search as the user's two
commands, the peers in child processes stopped at the budget; rows kept and peers cached across
reruns; the summary's arithmetic."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import made_up_suite
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from search.bench import build_parser, request_from_args
from search.errors import UserError
from search.perf import peers, tables
from search.perf.table_suite import SHARED_SUITE, load_suite, reference_split
from search.perf.tables import format_tables, run_tables_bench, summarize


def test_the_reference_split_and_a_real_search_and_peer_on_it(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # OpenMP's threads crawl on a busy shared CPU
    suite = made_up_suite(tmp_path)
    # 12 s: at 4 s a busy CPU finished no trial of the first stack, and the row was `failed`
    r = run_tables_bench(
        suite=suite, only=["cancer-kind"], budget_s=12, folder=tmp_path / "out", peers=("hgb",)
    )
    (row,) = r["rows"]
    frame = pd.read_csv(tmp_path / "cancer.csv").dropna(subset=["kind"])
    features, target = frame.drop(columns=["kind", "id"]), frame["kind"]
    x_tr, x_te, y_tr, y_te = train_test_split(
        features, target, test_size=0.2, random_state=0, stratify=target
    )
    trees = HistGradientBoostingClassifier(random_state=0).fit(x_tr, y_tr)
    assert row["models"]["hgb"]["score"] == float((trees.predict(x_te) == y_te).mean())
    assert "failed" not in row["models"]["search"], row["models"]["search"]
    assert row["n_test"] == len(x_te) == row["models"]["search"]["n_test"]  # the search scored those rows
    search = row["models"]["search"]
    assert 0.5 < search["score"] <= 1.0, search
    assert "--test cancer-test.csv" in search["command"] and "--drop id" in search["command"]
    assert json.loads((tmp_path / "out" / "rows.json").read_text())["entries"]["cancer-kind"] == row
    text = format_tables(r)
    assert "cancer-kind" in text and f"{100 * search['score']:.2f}" in text and "mean rank" in text


def fake_peer(calls):
    def run_peer(peer, split, *, budget_s):
        calls.append(peer)
        return {"score": 0.6, "wall_s": 1.0, "child_s": 3.0}

    return run_peer


def test_a_killed_run_keeps_its_rows_and_a_rerun_does_the_rest_with_the_peers_cached(tmp_path, monkeypatch):
    suite, out = made_up_suite(tmp_path), tmp_path / "out"
    fits: list[str] = []
    searches: list[str] = []

    def search(t, frames, *, budget_s, folder):
        searches.append(t.name)
        if len(searches) == 2 and kill[0]:
            raise KeyboardInterrupt  # killed during the second target's search
        return {"score": 0.7, "wall_s": budget_s, "n_test": len(frames[1])}

    kill = [True]
    monkeypatch.setattr(peers, "run_peer", fake_peer(fits))
    monkeypatch.setattr(tables, "run_search", search)
    two = ("hgb", "catboost")
    with pytest.raises(KeyboardInterrupt):
        run_tables_bench(suite=suite, budget_s=5, folder=out, peers=two)
    assert list(json.loads((out / "rows.json").read_text())["entries"]) == ["cancer-kind"]
    assert len(fits) == 4  # both targets' peers fitted before the second search died
    kill[0] = False
    fits.clear(), searches.clear()
    r = run_tables_bench(suite=suite, budget_s=5, folder=out, peers=two)
    assert searches == ["diabetes-y"] and fits == []  # only what was lost; the peers from the cache
    assert [row["name"] for row in r["rows"]] == ["cancer-kind", "diabetes-y"]

    searches.clear()
    monkeypatch.setattr(tables, "code_fingerprint", lambda: "changed")  # a change to `search`
    run_tables_bench(suite=suite, budget_s=5, folder=out, peers=two)
    assert searches == ["cancer-kind", "diabetes-y"] and fits == []  # its own rows only

    searches.clear()
    run_tables_bench(suite=suite, budget_s=5, folder=out, peers=two, rerun_peers=True)
    assert searches == [] and len(fits) == 4

    fits.clear()
    run_tables_bench(suite=suite, budget_s=0.5, folder=out, peers=two)  # a 1 s fit would now be stopped
    assert len(fits) == 4 and searches == ["cancer-kind", "diabetes-y"]  # another budget, another row


def test_a_peer_past_its_budget_is_stopped_and_a_missing_package_says_how_to_install_it(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    suite = load_suite(made_up_suite(tmp_path))
    _, split = reference_split(suite[1])
    assert peers.run_peer("sklearn-mlp", split, budget_s=0.01) == {"stopped": 0.01}  # 200 epochs: seconds
    done = peers.run_peer("hgb", split, budget_s=60)
    assert 0 < done["score"] < 1 and "rmse" in done and done["wall_s"] < done["child_s"]
    monkeypatch.setattr(peers, "package_version", lambda peer: None)
    assert peers.run_peer("catboost", split, budget_s=60) == {"not_installed": "pip install catboost"}


def test_summary_wins_gap_and_mean_rank_on_the_figures_as_shown():
    stopped, failed, absent = {"stopped": 60}, {"failed": "boom"}, {"not_installed": "pip install pytabkit"}

    def row(search, hgb, catboost, realmlp):
        figs = {"search": search, "hgb": hgb, "catboost": catboost, "realmlp": realmlp}
        return {
            "models": {m: {"score": v, "wall_s": 1.0} if isinstance(v, float) else v for m, v in figs.items()}
        }

    rows = [
        row(0.80, 0.78, 0.800001, stopped),  # catboost ties the search at two decimals of points
        row(0.50, 0.55, 0.52, 0.50),
        row(0.9012, 0.90, failed, absent),
    ]
    s = summarize(rows, ["search", "hgb", "catboost", "realmlp"])
    assert s["wins"] == {
        "hgb": {"wins": 2, "ties": 0, "losses": 1},  # 80 > 78, 50 < 55, 90.12 > 90
        "catboost": {"wins": 1, "ties": 1, "losses": 1},  # tie, 50 < 52, a failed peer loses
        "realmlp": {"wins": 1, "ties": 1, "losses": 0},  # stopped loses, tie, not installed: no contest
    }
    gap = {m: g["mean"] for m, g in s["gap_to_hgb"].items()}
    assert gap == {"search": pytest.approx((2 - 5 + 0.12) / 3), "hgb": 0.0, "catboost": pytest.approx(-0.5),
                   "realmlp": pytest.approx(-5.0)}  # fmt: skip
    # places: A search=catboost 1.5, hgb 3, realmlp 4 (stopped); B hgb 1, catboost 2, search=realmlp 3.5;
    # C search 1, hgb 2, catboost 3 (failed), realmlp not tried
    rank = {m: k["mean"] for m, k in s["mean_rank"].items()}
    assert rank == {"search": pytest.approx(2.0), "hgb": pytest.approx(2.0),
                    "catboost": pytest.approx(6.5 / 3, abs=1e-4), "realmlp": pytest.approx(3.75)}  # fmt: skip
    assert s["mean_rank"]["realmlp"]["n"] == 2


def test_cached_peers_leaves_out_the_uncached_ones_and_a_later_run_fits_them_keeping_the_search(
    tmp_path, monkeypatch
):
    suite, out = made_up_suite(tmp_path), tmp_path / "out"
    fits: list[str] = []
    searches: list[str] = []

    def search(t, frames, *, budget_s, folder):
        searches.append(t.name)
        return {"score": 0.7, "wall_s": budget_s, "n_test": len(frames[1])}

    monkeypatch.setattr(peers, "run_peer", fake_peer(fits))
    monkeypatch.setattr(tables, "run_search", search)
    run_tables_bench(suite=suite, only=["cancer-kind"], budget_s=5, folder=out, peers=("hgb",))
    fits.clear(), searches.clear()
    two = ("hgb", "catboost")
    r = run_tables_bench(suite=suite, budget_s=5, folder=out, peers=two, cached_peers=True)
    assert fits == [] and searches == ["diabetes-y"]
    cancer, diabetes = r["rows"]
    assert set(cancer["models"]) == {"hgb", "search"} and cancer["left_out"] == ["catboost"]
    assert set(diabetes["models"]) == {"search"} and diabetes["left_out"] == ["hgb", "catboost"]
    assert r["summary"]["mean_rank"]["catboost"]["n"] == 0  # a left-out peer is not ranked
    assert "left out (no cached figure, --cached-peers), diabetes-y hgb, catboost" in format_tables(r)
    searches.clear()
    r = run_tables_bench(suite=suite, budget_s=5, folder=out, peers=two)
    assert fits == ["catboost", "hgb", "catboost"] and searches == []  # the search rows were kept
    assert all("left_out" not in row for row in r["rows"])
    with pytest.raises(UserError, match="pass one"):
        request_from_args(build_parser().parse_args(["--tables", "--cached-peers", "--rerun-peers"]))


def test_the_flags_reach_the_request_and_bad_names_are_refused(tmp_path):
    args = build_parser().parse_args(
        [
            "--tables",
            "--tables-suite",
            "s.json",
            "--only",
            "a,b",
            "--only",
            "c",
            "--tables-budget",
            "60",
            "--tables-dir",
            "d",
            "--rerun-peers",
        ]  # fmt: skip
    )
    request = request_from_args(args)
    assert (request.kind, request.tables_suite, request.tables_only, request.tables_budget) == (
        "tables", "s.json", ("a,b", "c"), 60.0,
    )  # fmt: skip
    assert request.tables_dir == "d" and request.tables_rerun_peers
    suite = made_up_suite(tmp_path)
    with pytest.raises(UserError, match="not in the suite; its targets: cancer-kind, diabetes-y"):
        run_tables_bench(suite=suite, only=["cancer-kind,nope"], folder=tmp_path / "out")
    with pytest.raises(UserError, match="it is not there"):
        run_tables_bench(suite=tmp_path / "none.json", folder=tmp_path / "out")


@pytest.mark.skipif(
    not SHARED_SUITE.is_file(), reason=f"the real tables are not checked out ({SHARED_SUITE})"
)
def test_the_real_suite_loads_and_its_split_reproduces_the_reference_figure():
    targets = {t.name: t for t in load_suite()}
    assert len(targets) == 11 and targets["VerbAgg-r2"].drop == ("resp", "id")
    t = targets["Workinghours-occupation"]
    _, split = reference_split(t)
    with threadpool_limits(1):
        trees = HistGradientBoostingClassifier(random_state=0).fit(split.x_train, split.y_train)
    assert round(float((trees.predict(split.x_test) == split.y_test).mean()), 4) == t.reference["hgb_default"]


def test_the_sklearn_mlp_peer_is_fitted_again_when_our_preprocessing_changes(tmp_path, monkeypatch):
    suite, out = made_up_suite(tmp_path), tmp_path / "out"
    fits: list[str] = []
    monkeypatch.setattr(peers, "run_peer", fake_peer(fits))
    monkeypatch.setattr(
        tables, "run_search", lambda t, frames, *, budget_s, folder: {"score": 0.7, "wall_s": 1}
    )
    code = tmp_path / "tables.py"
    code.write_text("MAX_CATEGORIES = 64\n")
    monkeypatch.setattr(tables, "PREPROCESSING_FILES", (code,))
    both = ("hgb", "sklearn-mlp")
    run_tables_bench(suite=suite, only=["cancer-kind"], budget_s=5, folder=out, peers=both)
    run_tables_bench(suite=suite, only=["cancer-kind"], budget_s=5, folder=out, peers=both)
    assert fits == ["hgb", "sklearn-mlp"]  # the second run took both from the cache
    code.write_text("MAX_CATEGORIES = 256\n")
    run_tables_bench(suite=suite, only=["cancer-kind"], budget_s=5, folder=out, peers=both)
    assert fits == ["hgb", "sklearn-mlp", "sklearn-mlp"]  # the trees do not run on our preprocessing


def test_pytabkits_peers_get_numeric_gaps_filled_with_training_medians_and_marked():
    train = pd.DataFrame({"a": [1.0, None, 3.0, 10.0], "b": [1.0, 2.0, 3.0, 4.0], "t": ["x", "y", None, "x"]})
    test = pd.DataFrame({"a": [None, 5.0], "b": [None, 1.0], "t": ["y", "x"]})
    tr, te = peers._filled(train, test)
    assert tr["a"].tolist() == [1.0, 3.0, 3.0, 10.0] and te["a"].tolist() == [3.0, 5.0]  # median 3
    assert tr["a__missing"].tolist() == [0, 1, 0, 0] and te["a__missing"].tolist() == [1, 0]
    assert te["b"].tolist() == [2.5, 1.0] and "b__missing" not in te  # no gap in training: no marker
    assert tr["t"].isna().sum() == 1  # text columns are pytabkit's own to handle
