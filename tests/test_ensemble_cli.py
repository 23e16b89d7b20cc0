"""The study's ensemble end to end: search keeps the pool, export writes the ensemble when it wins
on validation, and load_best, the report and retraining understand it.

The study is made so an ensemble wins by a wide margin on any CPU: one hidden layer of 4 to 8
units trained 2 epochs (weak, different models), random sampling, no pruning.
"""

from __future__ import annotations

import json
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO

import numpy as np
import pytest
import torch
from helpers import WEAK_STUDY, one_torch_thread

import search
from search.data.datasets import load_dataset
from search.export import main as export_main
from search.retrain import main as retrain_main
from search.run import main as run_main
from search.training.config import TrainConfig
from search.training.model import build_mlp

WEAK = WEAK_STUDY


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread("search.cli"):
        yield


def _quiet(main, argv):
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(argv)
    assert rc == 0, err.getvalue()
    return out.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("weak")
    (root / "weak.toml").write_text(WEAK)
    common = ["--storage", f"sqlite:///{root / 's.db'}", "--results-dir", str(root / "results"),
              "--device", "cpu", "--no-progress"]  # fmt: skip
    ran = _quiet(run_main, ["--study", str(root / "weak.toml"), "--trials", "8", *common])
    printed = _quiet(export_main, common)
    return root, common, ran, printed


def _members(path):
    saved = torch.load(path, weights_only=True)  # nothing but PyTorch reads it
    models, weights = [], []
    for m in saved["members"]:
        model = build_mlp(TrainConfig.from_dict(m["config"]), in_features=64, n_classes=10)
        state = m["state_dict"]
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        models.append(model.eval())
        weights.append(m["weight"])
    return saved, models, weights


def _accuracy(models, weights, x, y) -> float:
    """The weighted mean of the members' softmax, in NumPy, and its argmax counted."""
    mean = 0
    with torch.no_grad():
        for model, w in zip(models, weights, strict=True):
            logits = model(x).double().numpy()
            e = np.exp(logits - logits.max(1, keepdims=True))
            mean = mean + w * e / e.sum(1, keepdims=True)
    return (mean.argmax(1) == y.numpy()).sum() / len(y)


def test_the_run_summary_states_the_pools_disk_use_and_bound(exported):
    root, _, ran, _ = exported
    weights = sum(p.stat().st_size for p in (root / "results" / "weak" / "pool").glob("weights-*.pt"))
    assert len(list((root / "results" / "weak" / "pool").glob("weights-*.pt"))) == 4  # the bound
    assert f"ensemble pool: {weights / 1e6:.1f} MB of half-precision weights (at most 4 trials')" in ran


def test_export_writes_the_ensemble_that_beats_the_best_trial_and_scores_it(exported):
    root, _, _, printed = exported
    folder = root / "results" / "weak"
    best = json.loads((folder / "best.json").read_text())
    record = best["ensemble"]
    assert record["exported"] and len(record["members"]) >= 2, record
    assert record["val_score"] > best["value"] and "exported: the ensemble" in printed
    data = load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0)
    saved, models, weights = _members(folder / "ensemble.pt")
    assert [m["trial_number"] for m in saved["members"]] == [m["trial_number"] for m in record["members"]]
    assert _accuracy(models, weights, data.x_val, data.y_val) == record["val_score"]
    assert _accuracy(models, weights, data.x_test, data.y_test) == best["test_score"] == record["test_score"]
    single = build_mlp(TrainConfig.from_dict(best["config"]), in_features=64, n_classes=10).eval()
    single.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    assert _accuracy([single], [1.0], data.x_test, data.y_test) == best["single_test_score"]


def test_load_best_answers_with_the_same_ensemble(exported):
    root, _, _, _ = exported
    best = json.loads((root / "results" / "weak" / "best.json").read_text())
    loaded = search.load_best(storage=f"sqlite:///{root / 's.db'}", results_dir=root / "results")
    assert loaded.ensemble == {m["trial_number"]: m["weight"] for m in best["ensemble"]["members"]}
    data = loaded.data
    predicted = loaded.model(data.x_test).argmax(1)
    assert (predicted == data.y_test).sum().item() / len(data.y_test) == best["test_score"]


def test_the_report_page_has_an_ensemble_section(exported):
    root, _, _, _ = exported
    [page] = search.write_report(storage=f"sqlite:///{root / 's.db'}", results_dir=root / "results")
    text = page.read_text()
    assert '<section id="ensemble">' in text and "Validation accuracy: ensemble" in text


def test_retraining_the_ensemble_retrains_each_member_and_scores_their_mix(exported):
    root, _, _, _ = exported
    folder = root / "results" / "weak"
    _quiet(retrain_main, ["--config", str(folder / "best.json"), "--ensemble", "--device", "cpu",
                          "--no-progress"])  # fmt: skip
    report = json.loads((folder / "retrain" / "test_report.json").read_text())
    best = json.loads((folder / "best.json").read_text())
    members = [m["trial_number"] for m in best["ensemble"]["members"]]
    assert [m["trial_number"] for m in report["ensemble_members"]] == members
    data = load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0)
    _, models, weights = _members(folder / "retrain" / "ensemble.pt")  # full precision: exact
    assert _accuracy(models, weights, data.x_test, data.y_test) == report["test_score"]


def test_retraining_an_ensemble_that_was_not_exported_is_one_line(exported, tmp_path, capsys):
    root, _, _, _ = exported
    (tmp_path / "best.json").write_text((root / "results" / "weak" / "best.json").read_text())
    rc = retrain_main(["--config", str(tmp_path / "best.json"), "--ensemble", "--device", "cpu",
                       "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "ensemble.pt does not exist" in err, err


WEAK_TABLE = WEAK.replace('dataset = "digits"', 'dataset = "table"')


def test_predict_answers_with_the_exported_ensemble_of_a_table(tmp_path):
    """search.predict takes the ensemble the export chose (here refit on every row, kept in full
    precision), so its answers on the test rows score exactly the export's test figure."""
    from sklearn.datasets import load_digits

    from search.data.tables import TableSpec, load_table
    from search.predict import main as predict_main

    frame = load_digits(as_frame=True).frame  # the digits as a table: weak members differ
    frame.to_csv(tmp_path / "c.csv", index=False)
    (tmp_path / "weak.toml").write_text(WEAK_TABLE)
    common = ["--storage", f"sqlite:///{tmp_path / 's.db'}", "--results-dir", str(tmp_path / "results"),
              "--device", "cpu", "--no-progress"]  # fmt: skip
    _quiet(run_main, ["--study", str(tmp_path / "weak.toml"), "--data", str(tmp_path / "c.csv"),
                      "--target", "target", "--trials", "8", *common])  # fmt: skip
    _quiet(export_main, [*common, "--out", str(tmp_path / "out")])
    best = json.loads((tmp_path / "out" / "best.json").read_text())
    assert best["ensemble"]["exported"], "the weak study's ensemble should win on validation"
    spec = TableSpec(train=str(tmp_path / "c.csv"), target="target")
    test = frame.loc[
        load_table(spec, device="cpu", val_fraction=0.2, split_seed=0).table.frames["test"].index
    ]
    test.to_csv(tmp_path / "test.csv", index=False)
    _quiet(predict_main, ["--model", str(tmp_path / "out"), "--data", str(tmp_path / "test.csv"),
                          "--out", str(tmp_path / "p.csv")])  # fmt: skip
    import pandas as pd

    predicted = pd.read_csv(tmp_path / "p.csv")["prediction"].to_numpy()
    accuracy = (predicted == test["target"].to_numpy()).mean()
    assert accuracy == pytest.approx(best["test_score"], abs=1e-12)
    assert best["test_score"] != best["single_test_score"] or accuracy == best["single_test_score"]
