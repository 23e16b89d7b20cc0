"""search.retrain: retraining an exported config reproduces the search, and bad files fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import one_torch_thread

from search.artifacts.evaluation import evaluate, load_model, mean_std, read_best
from search.data.datasets import load_dataset
from search.export import export_study
from search.retrain import main


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread("search.cli"):
        yield


@pytest.fixture(scope="module")
def best_json(digits_study, tmp_path_factory) -> Path:
    """best.json of conftest's real digits search (CPU), exported into a private folder."""
    done = export_study(
        storage_url=digits_study.storage_url, study_name=None, out_dir=tmp_path_factory.mktemp("best"),
        results_dir=digits_study.results_dir, device=torch.device("cpu"),
    )  # fmt: skip
    return done.out_dir / "best.json"


def one_line_error(capsys, rc: int, *needles: str) -> str:
    """The rule for every user error: exit 2, one line on stderr, no traceback."""
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("python -m search.retrain: error: ")
    for n in needles:
        assert n in err, err
    return err


def test_same_seed_on_the_cpu_reproduces_the_trials_validation_accuracy(best_json, capsys):
    rc = main(["--config", str(best_json), "--device", "cpu", "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0
    best = read_best(best_json)
    out = best_json.parent / "retrain"  # the default: beside best.json
    report = json.loads((out / "test_report.json").read_text())
    assert report["val_score"] == best["value"]  # bit for bit, not approximately
    assert report["reproduced_trial_value"] is True and "reproduced" in printed
    # the same weights as the search's, so the same test figure as the export's
    assert report["test_score"] == best["test_score"]
    assert report["runs"] == [dict(report["runs"][0], seed=best["config"]["seed"])]


def test_the_retrained_model_pt_reproduces_its_reported_test_accuracy(best_json, tmp_path, capsys):
    assert main(["--config", str(best_json), "--out", str(tmp_path), "--device", "cpu",
                 "--no-progress"]) == 0  # fmt: skip
    best = read_best(best_json)
    data = load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0)
    model = load_model(best, tmp_path / "model.pt", in_features=64, n_classes=10)
    report = json.loads((tmp_path / "test_report.json").read_text())
    assert evaluate(model, data.x_test, data.y_test)[1] == report["test_score"]
    assert (tmp_path / "test_report.txt").read_text().count("confusion matrix") == 1


def test_seeds_report_mean_and_std_and_full_trains_on_validation_too(best_json, tmp_path, capsys):
    rc = main(["--config", str(best_json), "--seeds", "2", "--full", "--epochs", "1", "--out",
               str(tmp_path), "--device", "cpu", "--no-progress"])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0
    report = json.loads((tmp_path / "test_report.json").read_text())
    seed = read_best(best_json)["config"]["seed"]
    assert [r["seed"] for r in report["runs"]] == [seed, seed + 1]
    assert all(r["val_score"] is None for r in report["runs"])  # validation was trained on
    assert report["full"] is True and report["n_train"] == 1437 and report["config"]["epochs"] == 1
    assert report["reproduced_trial_value"] is None  # not comparable: --full, --epochs
    mean, std = mean_std([r["test_score"] for r in report["runs"]])
    assert (report["test_score_mean"], report["test_score_std"]) == (mean, std)
    assert f"{mean:.4f} ± {std:.4f}" in printed
    # model.pt is the first seed's
    data = load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0)
    model = load_model(read_best(best_json), tmp_path / "model.pt", in_features=64, n_classes=10)
    assert evaluate(model, data.x_test, data.y_test)[1] == report["runs"][0]["test_score"]


# ---------------------------------------------------------------------------- errors


def test_a_missing_best_json_is_one_line(tmp_path, capsys):
    rc = main(["--config", str(tmp_path / "best.json"), "--device", "cpu"])
    one_line_error(capsys, rc, "does not exist", "python -m search.export")


@pytest.mark.parametrize(
    "text, needle",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"config": {}}', "missing key(s) study, trial_number"),
    ],
)
def test_a_malformed_best_json_is_one_line(tmp_path, capsys, text, needle):
    path = tmp_path / "best.json"
    path.write_text(text)
    one_line_error(capsys, main(["--config", str(path), "--device", "cpu"]), needle)


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"split_seed": "0"}, "split_seed must be int"),
        ({"config": {"activation": "nope"}}, "invalid config: activation 'nope'"),
        ({"dataset": "mnist"}, "unknown dataset 'mnist'"),
    ],
)
def test_a_best_json_with_bad_values_is_one_line(best_json, tmp_path, capsys, change, needle):
    best = json.loads(best_json.read_text())
    if "config" in change:
        change = {"config": {**best["config"], **change["config"]}}
    path = tmp_path / "best.json"
    path.write_text(json.dumps({**best, **change}))
    rc = main(["--config", str(path), "--device", "cpu", "--out", str(tmp_path / "o")])
    one_line_error(capsys, rc, needle)
    assert not (tmp_path / "o").exists()  # nothing written for a bad input


def test_bad_flags_are_one_line_usage_errors(capsys):
    one_line_error(capsys, main(["--config", "x.json", "--seeds", "0"]), "--seeds", "at least 1")
    one_line_error(capsys, main([]), "--config")
