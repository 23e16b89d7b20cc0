"""search.bench --portfolio: candidates from the table study, a matrix of validation scores across
suite targets, rescaled errors, the greedy portfolio, leave-one-target-out grading, resumable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tomllib
import torch
from helpers import made_up_suite
from sklearn.metrics import accuracy_score

from search.bench import build_parser, request_from_args
from search.data import tables as tables_module
from search.data.tables import TableSpec, load_table
from search.perf import portfolio
from search.perf.portfolio import (
    candidates,
    greedy_portfolio,
    rescaled_errors,
    run_portfolio,
    start_rows,
    summarize,
)
from search.perf.table_suite import Target, reference_split
from search.training.fit import fit
from search.tuning.study_file import load_study, parse_study

TINY_STUDY = """
[study]
dataset = "table"
epochs = 2
val_fraction = 0.25
split_seed = 0
sampler = "tpe"
pruner = "none"

[space]
n_layers = {low = 1, high = 2}
width = {low = 8, high = 32, log = true}
optimizer = ["adamw"]
lr = {adamw = {low = 1e-3, high = 3e-2, log = true}}
batch_size = [64]
numeric = ["standard", "quantile"]

[baseline]
hidden = [16]
optimizer = "adamw"
lr = 0.01
batch_size = 64
numeric = "standard"
"""


def test_rescaled_errors_match_hand_values():
    errors = rescaled_errors({"a": [0.9, 0.8, 0.7, None], "b": [0.5, 0.5, 0.5, 0.5]})
    # a: best 0.9, median of the finite three 0.8: (0.9 - s) / 0.1, clipped; a missing score is 1
    assert errors["a"] == pytest.approx([0.0, 1.0, 1.0, 1.0])
    assert errors["b"] == [0.0, 0.0, 0.0, 0.0]  # nothing to tell apart
    spread = rescaled_errors({"c": [1.0, 0.9, 0.8, 0.7, 0.96]})["c"]
    assert spread == pytest.approx([0.0, 1.0, 1.0, 1.0, 0.4])  # median 0.9


def test_greedy_portfolio_covers_the_targets_the_first_pick_misses():
    errors = {
        "t1": [0.0, 0.2, 1.0, 0.9],
        "t2": [0.1, 0.3, 1.0, 0.9],
        "t3": [1.0, 0.5, 1.0, 0.0],
    }
    # alone: candidate 1 has the lowest mean (0.333); beside it, 3 brings t3 to 0 (mean 0.167),
    # and 0 then brings t1 and t2 down (mean 0.033); 2 never helps, so the portfolio stops
    assert greedy_portfolio(errors, 2) == [1, 3]
    assert greedy_portfolio(errors, 10) == [1, 3, 0]


def test_leave_one_out_never_lets_a_target_choose_its_own_start():
    targets = [Target(n, table=None, target="y", task="regression") for n in ("a", "b", "c")]  # type: ignore[arg-type]
    # candidate 2 is by far the best on c, and useless on a and b
    val = {"a": [0.50, 0.60, 0.10], "b": [0.50, 0.61, 0.10], "c": [0.40, 0.41, 0.90]}
    cells = {n: [{"val": v, "test": v - 0.01} for v in row] for n, row in val.items()}
    cands = [load_study("table").baseline] * 3
    r = summarize(targets, cands, cells, size=1)  # type: ignore[arg-type]
    rows = {row["target"]: row for row in r["rows"]}
    assert rows["c"]["portfolio"] == [1] and rows["c"]["pick"] == 1  # made by a and b alone
    assert rows["c"]["pick_test"] == pytest.approx(0.40)
    assert rows["c"]["baseline_test"] == pytest.approx(0.39)
    assert r["portfolio"] == [1]  # on all three, 1 still covers best with one member


def test_start_rows_read_back_as_the_same_configs(tmp_path):
    spec = load_study("table")
    cands = candidates(spec, 6, seed=3)
    assert cands[0] == spec.baseline.replace(epochs=spec.epochs, seed=cands[0].seed)
    doc = tomllib.loads(spec.path.read_text() + "\n" + start_rows(cands[1:]))
    read = parse_study(doc, name="table", path=spec.path)  # also checks each row fits the space

    def plain(configs):  # a study sets epochs and seeds
        return [c.replace(seed=0, epochs=1) for c in configs]

    n = len(spec.start)  # the study's own [[start]] rows are candidates after its baseline
    assert plain(cands[1 : 1 + n]) == plain(spec.start)
    assert plain(read.start[n:]) == plain(cands[1:])
    assert len({c.seed for c in cands}) == len(cands)  # each candidate its own training seed


def test_a_real_matrix_is_kept_and_scores_what_a_lone_fit_scores(tmp_path, monkeypatch):
    monkeypatch.setattr(portfolio, "MAX_STACK", 1)  # each candidate alone, as a lone fit trains
    suite = made_up_suite(tmp_path)
    study = tmp_path / "tiny.toml"
    study.write_text(TINY_STUDY)
    lines: list[str] = []
    first = run_portfolio(suite=suite, study=str(study), configs=3, size=2, folder=tmp_path / "out",
                          progress=lines.append)  # fmt: skip
    assert any("trained" in line for line in lines)
    matrix = json.loads((tmp_path / "out" / "matrix.json").read_text())["entries"]
    assert len(matrix) == 2 * len(first["candidates"])
    # the baseline on the classification target, trained and scored independently
    t = next(t for t in portfolio.load_suite(suite) if t.name == "cancer-kind")
    (train, test), _ = reference_split(t)
    spec = load_study(str(study))
    table = TableSpec(train=str(t.table), target=t.target, task=t.task, drop=t.drop)
    data = load_table(table, device=torch.device("cpu"), val_fraction=0.25, split_seed=0, frame=train,
                      test_frame=test)  # fmt: skip
    config = candidates(spec, 3)[0]
    model = fit(config, data).model.eval()
    with torch.no_grad():
        labels = model(data.x_test).argmax(1).numpy()
    truth = data.y_test.numpy()
    row = next(r for r in first["rows"] if r["target"] == "cancer-kind")
    assert row["baseline_test"] == pytest.approx(accuracy_score(truth, labels))
    assert 0.5 < row["baseline_test"] <= 1.0 and np.isfinite(row["baseline_val"])
    # rerun: nothing is trained again, and the figures are the same
    again: list[str] = []
    second = run_portfolio(suite=suite, study=str(study), configs=3, size=2, folder=tmp_path / "out",
                           progress=again.append)  # fmt: skip
    assert not any("trained" in line for line in again)
    assert second["rows"] == first["rows"]
    tomllib.loads((tmp_path / "out" / "portfolio.toml").read_text())
    # a cap on the rows is another matrix: each fit sees that many training rows, the test whole
    seen = []
    real_load = tables_module.load_table

    def load(spec, **kw):
        seen.append((len(kw["frame"]), len(kw["test_frame"])))
        return real_load(spec, **kw)

    monkeypatch.setattr(tables_module, "load_table", load)
    capped = run_portfolio(
        suite=suite, study=str(study), configs=3, size=2, folder=tmp_path / "out", rows=120
    )
    assert capped["rows_cap"] == 120 and len(seen) == 2
    assert all(n == 120 for n, _ in seen) and sorted(t for _, t in seen) == [89, 114]
    entries = json.loads((tmp_path / "out" / "matrix.json").read_text())["entries"]
    assert len(entries) == 4 * len(first["candidates"])


def test_the_bench_flags_ask_for_a_portfolio():
    flags = ["--portfolio", "--portfolio-configs", "5", "--portfolio-size", "3", "--portfolio-rows", "900"]
    request = request_from_args(build_parser().parse_args(flags))
    assert request.kind == "portfolio"
    assert (request.portfolio_configs, request.portfolio_size, request.portfolio_rows) == (5, 3, 900)
