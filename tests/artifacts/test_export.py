"""search.export: the files it writes, that they reproduce the search, and its one-line errors."""

from __future__ import annotations

import csv
import hashlib
import json
import sqlite3
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO

import optuna
import pytest
import torch
from helpers import one_torch_thread
from optuna.trial import TrialState

from search.artifacts.evaluation import evaluate, load_model, read_best
from search.data.datasets import load_dataset
from search.export import main
from search.schema import BEST_WEIGHTS, study_dir
from search.training.config import TrainConfig
from search.training.model import build_mlp, count_params
from search.tuning import best_weights as checkpoint

STUDY = "digits"  # conftest's digits_study: a real search, 10 trials, some pruned


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread("search.cli"):
        yield


@pytest.fixture(scope="module")
def searched(digits_study):
    """(database file, storage URL, results dir) of the shared study; read-only."""
    return digits_study.db_path, digits_study.storage_url, digits_study.results_dir


@pytest.fixture(scope="module")
def exported(searched, tmp_path_factory):
    """The export of the shared study, and what it printed (capsys is function-scoped)."""
    _, url, results = searched
    out = tmp_path_factory.mktemp("export")
    argv = ["--storage", url, "--results-dir", str(results), "--out", str(out), "--device", "cpu",
            "--no-progress"]  # fmt: skip
    stdout, stderr = StringIO(), StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        rc = main(argv)
    assert rc == 0, stderr.getvalue()
    return out, stdout.getvalue()


def one_line_error(capsys, rc: int, *needles: str) -> str:
    """The rule for every user error: exit 2, one line on stderr, no traceback."""
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("python -m search.export: error: ")
    for n in needles:
        assert n in err, err
    return err


def best_of(url: str) -> optuna.trial.FrozenTrial:
    study = optuna.load_study(study_name=STUDY, storage=url)
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    return max(complete, key=lambda t: t.value)


# ---------------------------------------------------------------------------- the files


def test_export_writes_every_file_with_the_best_trial_and_its_provenance(searched, exported):
    _, url, _ = searched
    out, printed = exported
    for name in ("best.json", "model.pt", "model.txt", "test_report.txt", "test_report.json",
                 "trials.csv"):  # fmt: skip
        assert (out / name).is_file(), name
    best = read_best(out / "best.json")
    trial = best_of(url)
    assert (best["study"], best["trial_number"], best["value"]) == (STUDY, trial.number, trial.value)
    assert best["params"] == trial.params
    assert best["weights"] == "checkpoint"  # the search kept the best trial's weights
    attrs = optuna.load_study(study_name=STUDY, storage=url).user_attrs
    for key in ("dataset", "val_fraction", "split_seed", "epochs"):
        assert best[key] == attrs[key], key
    assert best["config"]["epochs"] == attrs["epochs"]
    prov = best["provenance"]
    assert set(prov["versions"]) >= {"torch", "optuna", "numpy", "scikit-learn", "search"}
    assert prov["device"] == "cpu" and "--storage" in prov["command"] and prov["git_revision"]
    assert f"best trial {trial.number}" in printed


def test_export_draws_test_predictions_and_the_most_confident_mistakes(exported):
    from PIL import Image

    out, printed = exported
    for name in ("predictions.png", "errors.png"):
        with Image.open(out / name) as img:
            assert img.width > 200 and img.height > 100, name
        assert name in printed


def test_replayed_config_is_the_one_the_search_trained(searched, exported):
    """The checkpoint's metadata holds the config the objective trained; the replay must equal it."""
    _, _, results = searched
    out, _ = exported
    meta = checkpoint.read_meta(study_dir(results, STUDY))
    best = read_best(out / "best.json")
    assert meta["trial_number"] == best["trial_number"]
    assert TrainConfig.from_dict(best["config"]) == TrainConfig.from_dict(meta["config"])
    assert best["config"]["seed"] == best["trial_user_attrs"]["seed"]


def test_exported_model_reproduces_the_reported_test_accuracy_exactly(exported):
    out, _ = exported
    best = read_best(out / "best.json")
    report = json.loads((out / "test_report.json").read_text())
    data = load_dataset("digits", device="cpu", val_fraction=best["val_fraction"],
                        split_seed=best["split_seed"])  # fmt: skip
    model = build_mlp(TrainConfig.from_dict(best["config"]), in_features=data.in_features,
                      n_classes=data.n_classes)  # fmt: skip
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))  # a plain state_dict
    _, test_acc = evaluate(model, data.x_test, data.y_test)
    assert test_acc == report["test_score"] == best["test_score"]
    _, val_score = evaluate(model, data.x_val, data.y_val)
    assert val_score == best["value"]  # on the CPU, the checkpoint scores what the trial reported
    again = load_model(best, out / "model.pt", in_features=data.in_features, n_classes=data.n_classes)
    assert evaluate(again, data.x_test, data.y_test)[1] == report["test_score"]


def test_test_report_has_per_class_scores_and_a_confusion_matrix(exported):
    out, _ = exported
    report = json.loads((out / "test_report.json").read_text())
    assert report["classes"] == [str(d) for d in range(10)]
    assert set(report["classification_report"]) >= {"0", "9", "macro avg", "weighted avg"}
    matrix = report["confusion_matrix"]
    assert len(matrix) == 10 and sum(map(sum, matrix)) == report["n_test"] == 360
    assert sum(matrix[i][i] for i in range(10)) == report["n_correct"]
    text = (out / "test_report.txt").read_text()
    assert "precision" in text and "confusion matrix" in text


def test_trials_csv_has_one_row_per_trial_with_params_and_user_attrs(searched, exported):
    _, url, _ = searched
    out, _ = exported
    rows = list(csv.DictReader(open(out / "trials.csv", newline="")))
    trials = optuna.load_study(study_name=STUDY, storage=url).get_trials()
    assert [int(r["number"]) for r in rows] == [t.number for t in trials]
    assert {r["state"] for r in rows} <= {s.name for s in TrialState}
    assert "params_lr" in rows[0] and "user_attrs_architecture" in rows[0]
    assert rows[0]["datetime_start"] and float(rows[0]["duration_s"]) > 0


def test_model_txt_lists_every_layer_and_counts_that_sum_to_the_total(exported):
    out, _ = exported
    best = read_best(out / "best.json")
    text = (out / "model.txt").read_text()
    assert "Sequential(" in text and best["architecture"] in text
    rows = [line.split() for line in text.splitlines() if line[:1].isdigit() and "  " in line]
    counts = [int(r[2].replace(",", "")) for r in rows]
    model = build_mlp(TrainConfig.from_dict(best["config"]), in_features=64, n_classes=10)
    assert len(rows) == len(model) and sum(counts) == count_params(model) == best["n_params"]


# ---------------------------------------------------------------------------- weights source


def test_without_the_checkpoint_export_retrains_to_the_same_weights(searched, exported, tmp_path, capsys):
    """Another machine, no results/ folder: the config and seed retrain bit for bit on the CPU."""
    _, url, _ = searched
    out, _ = exported
    rc = main(["--storage", url, "--results-dir", str(tmp_path / "elsewhere"), "--out",
               str(tmp_path / "x"), "--device", "cpu", "--no-progress"])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0
    assert "retrained" in printed and "no checkpoint" in printed
    best = read_best(tmp_path / "x" / "best.json")
    assert best["weights"] == "retrained" and best["val_score"] == best["value"]
    assert best["test_score"] == read_best(out / "best.json")["test_score"]


def test_export_does_not_modify_the_storage(searched, tmp_path, capsys):
    db, url, results = searched

    def snapshot():
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            dump = list(conn.iterdump())
        files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in (db, db.with_name(db.name + "-wal")) if p.exists()}  # fmt: skip
        return dump, files

    before = snapshot()
    assert main(["--storage", url, "--results-dir", str(results), "--out", str(tmp_path),
                 "--device", "cpu", "--no-progress"]) == 0  # fmt: skip
    assert snapshot() == before


# ---------------------------------------------------------------------------- errors


@pytest.fixture
def crowded_storage(digits_study_copy):
    """A private copy of the study's storage that also holds an empty study and one whose only
    trial failed."""
    url = digits_study_copy.storage_url
    failed = optuna.create_study(storage=url, study_name="failed")
    failed.tell(failed.ask(), state=TrialState.FAIL)
    optuna.create_study(storage=url, study_name="empty")
    return url


def test_a_storage_with_several_studies_needs_a_study_name(crowded_storage, capsys):
    rc = main(["--storage", crowded_storage, "--device", "cpu"])
    one_line_error(capsys, rc, "--study-name", "digits", "empty", "failed")


def test_an_unknown_study_name_lists_the_known_ones(crowded_storage, capsys):
    rc = main(["--storage", crowded_storage, "--study-name", "nope", "--device", "cpu"])
    one_line_error(capsys, rc, "'nope'", "known studies: digits, empty, failed")


@pytest.mark.parametrize("name, held", [("failed", "1 fail"), ("empty", "no trials")])
def test_a_study_without_a_complete_trial_is_an_error(crowded_storage, capsys, name, held):
    rc = main(["--storage", crowded_storage, "--study-name", name, "--device", "cpu"])
    one_line_error(capsys, rc, "no finished (COMPLETE) trial", held)


def test_a_missing_storage_file_is_an_error_and_is_not_created(tmp_path, capsys):
    rc = main(["--storage", f"sqlite:///{tmp_path / 'none.db'}", "--device", "cpu"])
    one_line_error(capsys, rc, "does not exist")
    assert not (tmp_path / "none.db").exists()


def test_a_checkpoint_that_does_not_fit_the_config_is_one_line(searched, tmp_path, capsys):
    _, url, _ = searched
    trial = best_of(url)
    wrong = build_mlp(TrainConfig(hidden=(7,)), in_features=64, n_classes=10)
    ckpt = study_dir(tmp_path, STUDY)
    ckpt.mkdir(parents=True)
    torch.save({"trial_number": trial.number, "value": trial.value, "state_dict": wrong.state_dict()},
               ckpt / BEST_WEIGHTS)  # fmt: skip
    rc = main(["--storage", url, "--results-dir", str(tmp_path), "--device", "cpu"])
    one_line_error(capsys, rc, "best_model.pt does not match the config's model", "shape of 0.weight")


def test_a_checkpoint_with_other_weights_is_refused(searched, tmp_path, capsys):
    """Right shapes, wrong numbers (say, another storage's study of the same name)."""
    _, url, results = searched
    saved = checkpoint.load_best(study_dir(results, STUDY))
    saved["state_dict"] = {k: torch.zeros_like(v) for k, v in saved["state_dict"].items()}
    ckpt = study_dir(tmp_path, STUDY)
    ckpt.mkdir(parents=True)
    torch.save(saved, ckpt / BEST_WEIGHTS)
    rc = main(["--storage", url, "--results-dir", str(tmp_path), "--device", "cpu"])
    one_line_error(capsys, rc, "these are not its weights", "--retrain")


@pytest.mark.parametrize("bf16, rows, accepted", [(False, 6, False), (True, 6, True), (True, 40, False)])
def test_a_checkpoint_a_few_rows_off_passes_only_under_bf16(searched, tmp_path, monkeypatch, bf16, rows,
                                                            accepted):  # fmt: skip
    """On CUDA the stack's batched bf16 matmuls and nn.Linear's flip a few validation rows (6 of
    5,000 on an H200): the same weights, accepted there; on fp32 devices and beyond 20 rows, not."""
    from search.artifacts import export as exporting

    _, url, results = searched
    trial = best_of(url)

    def off_by_rows(model, data, split, numeric):
        return trial.value - rows / len(data.y_val)

    monkeypatch.setattr(exporting, "score_split", off_by_rows)
    monkeypatch.setattr(exporting, "reduced_precision", lambda device: bf16)
    out = tmp_path / "out"
    with redirect_stdout(StringIO()), redirect_stderr(StringIO()) as err:
        rc = main(["--storage", url, "--results-dir", str(results), "--out", str(out), "--device", "cpu",
                   "--no-progress"])  # fmt: skip
    assert (rc == 0) == accepted, err.getvalue()
    assert ("these are not its weights" in err.getvalue()) == (not accepted)


def test_a_replay_that_drifted_from_the_search_is_refused(crowded_storage, tmp_path, capsys):
    """If the stored space no longer yields the trained model, export must not invent one."""
    study = optuna.load_study(study_name=STUDY, storage=crowded_storage)
    n_layers = best_of(crowded_storage).params["n_layers"]
    # A fixed knob never reaches the FixedTrial, so only the comparison with the trial catches it.
    study.set_user_attr("space", dict(study.user_attrs["space"], n_layers=n_layers - 1))
    rc = main(["--storage", crowded_storage, "--study-name", STUDY, "--results-dir", str(tmp_path),
               "--device", "cpu"])  # fmt: skip
    one_line_error(capsys, rc, "gives another model than it trained")


def test_a_drift_in_a_knob_outside_the_architecture_is_caught_by_the_saved_config(
    searched, crowded_storage, capsys
):
    """Same layers, another lr: only the config the checkpoint saved with the weights tells."""
    _, _, results = searched  # the copy's checkpoint is the same as the shared one
    study = optuna.load_study(study_name=STUDY, storage=crowded_storage)
    lr = best_of(crowded_storage).params["lr"]
    study.set_user_attr("space", dict(study.user_attrs["space"], lr=lr * 2))
    rc = main(["--storage", crowded_storage, "--study-name", STUDY, "--results-dir", str(results),
               "--device", "cpu"])  # fmt: skip
    one_line_error(capsys, rc, "gives another model than it trained", f"lr {lr * 2!r} vs trained {lr!r}")


def test_bad_flags_are_one_line_usage_errors(capsys):
    one_line_error(capsys, main(["--bogus"]), "unrecognized arguments")


def test_help_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "search.export", "--help"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "--study-name" in done.stdout and "--storage" in done.stdout and "--out" in done.stdout
