"""End to end: a two-objective digits study under a parameter limit searches, prunes by MO-ASHA,
exports its Pareto front and draws it, and resuming it as a single-objective study is refused."""

import csv
import json

import optuna
import pytest
from helpers import run_args
from optuna.trial import TrialState

from search.export import main as export_main
from search.pages.compare import compare_studies
from search.report import main as report_main
from search.run import main as run_main
from search.schema import ATTR_EPOCH_SCORES, ATTR_EPOCHS, ATTR_PARAMS, ATTR_REASON

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")
LIMIT = 30_000


def test_a_two_objective_study_prunes_exports_its_front_and_draws_it(tmp_path, capsys):
    extra = ("--trials", "9", "--stack", "3", "--objectives", "score,params", "--max-params", str(LIMIT))
    assert run_main(run_args(tmp_path, *extra, epochs="4")) == 0
    out = capsys.readouterr().out
    assert "Pareto front, validation accuracy against parameters, cheapest first" in out
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.load_study(study_name="digits", storage=url)
    assert len(study.directions) == 2 and study.user_attrs["objectives"] == ["score", "params"]
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 9
    trained = [t for t in trials if ATTR_EPOCHS in t.user_attrs]
    for t in trials:
        if t.user_attrs[ATTR_PARAMS] > LIMIT:  # never trained
            assert t.state == TrialState.PRUNED and t not in trained
            assert t.user_attrs[ATTR_REASON].startswith("rejected before training")
    # The pruner stopped some trials at a rung (epoch 1 or 3) on their recorded epoch scores.
    stopped = [t for t in trained if t.state == TrialState.PRUNED]
    assert stopped and all(t.user_attrs[ATTR_EPOCHS] in (1, 3) for t in stopped)
    for t in trained:
        assert sorted(map(int, t.user_attrs[ATTR_EPOCH_SCORES])) == list(
            range(1, t.user_attrs[ATTR_EPOCHS] + 1)
        )
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete and all(t.values[1] == t.user_attrs[ATTR_PARAMS] <= LIMIT for t in complete)
    assert not study.get_trials(states=(TrialState.FAIL,))

    export_args = [
        "--storage",
        url,
        "--results-dir",
        str(tmp_path / "results"),
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert export_main(export_args) == 0
    folder = tmp_path / "results" / "digits"
    best = json.loads((folder / "best.json").read_text())
    front = {p["trial_number"] for p in best["pareto_front"]}
    top = max(complete, key=lambda t: t.values[0])
    assert best["trial_number"] == top.number and top.number in front
    assert "Pareto front" in best["chosen"] and best["ensemble"] is None
    with open(folder / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {int(r["number"]) for r in rows if r["pareto_front"] == "True"} == front
    # A tighter limit exports the best trial within it: the front's cheapest, if nothing else fits.
    cheapest = min(best["pareto_front"], key=lambda p: p["n_params"])
    assert (
        export_main(
            [*export_args, "--max-params", str(cheapest["n_params"]), "--out", str(tmp_path / "small")]
        )
        == 0
    )
    small = json.loads((tmp_path / "small" / "best.json").read_text())
    assert small["n_params"] <= cheapest["n_params"] and small["limits"]["max_params"] == cheapest["n_params"]

    assert report_main(["--storage", url, "--results-dir", str(tmp_path / "results")]) == 0
    assert 'id="pareto-plot"' in (folder / "report.html").read_text()
    (row,) = compare_studies(url)
    assert row.best_value == top.values[0]

    capsys.readouterr()
    assert run_main(run_args(tmp_path, "--trials", "1")) == 2  # one objective now: refused
    err = capsys.readouterr().err
    assert "has 2 objective(s), not 1" in err and "--study-name" in err
