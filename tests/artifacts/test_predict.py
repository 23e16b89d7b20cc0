"""search.predict's loading of an export: preprocess.skops builds only trusted types, a crafted
file or an old pickle is refused in one line and runs nothing, and a saved export predicts exactly
what the in-memory model predicted."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io
from helpers import one_torch_thread

from search.artifacts.predict import (
    FORMAT,
    TRUSTED_TYPES,
    Predictor,
    Preprocess,
    load_predictor,
    load_preprocess,
)
from search.data.merged import with_validation_rows
from search.data.numeric import NUMERICS
from search.data.tables import TableSpec, load_table
from search.data.targets import TargetScale
from search.errors import UserError
from search.export import main as export_main
from search.predict import main as predict_main
from search.run import main as run_main
from search.schema import BEST_JSON, PREPROCESS_PKL, PREPROCESS_SKOPS
from search.training.config import TrainConfig
from search.tuning.finished import open_finished


def _frame(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """Numbers with gaps, text, booleans, and an integer-coded class (0, 1, 2)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1] * 10, "c": rng.integers(0, 40, n)})
    frame["colour"] = rng.choice(["red", "green", "blue", "rare"], n, p=[0.4, 0.3, 0.28, 0.02])
    frame["flag"] = rng.choice([True, False], n)
    frame["kind"] = (x[:, 0] + (frame["colour"] == "red") > 0.3).astype(int) + (x[:, 1] > 1)
    frame.loc[::9, "a"] = np.nan
    return frame


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A real table study (2 trials) and its export: (folder, storage URL, study name)."""
    root = tmp_path_factory.mktemp("predict")
    _frame().to_csv(root / "rows.csv", index=False)
    args = ["--storage", f"sqlite:///{root}/s.db", "--results-dir", str(root / "results"), "--device",
            "cpu", "--no-progress"]  # fmt: skip
    with one_torch_thread("search.tuning.run"):
        run = [*args, "--data", str(root / "rows.csv"), "--target", "kind", "--trials", "2", "--epochs", "3"]
        assert run_main(run) == 0
        assert export_main(args) == 0
    out = root / "results" / "rows-kind"
    return out, f"sqlite:///{root}/s.db", "rows-kind"


PERIODIC_STUDY = """
[study]
dataset = "table"
epochs = 3
sampler = "random"
pruner = "none"

[space]
n_layers = 1
width = 16
optimizer = "adam"
lr = 0.003
batch_size = 64
num_embedding = "periodic"
plr_frequencies = {low = 4, high = 8}
plr_sigma = {low = 0.05, high = 0.5, log = true}
plr_dim = {low = 2, high = 6}
"""


@pytest.fixture(scope="module")
def periodic_export(tmp_path_factory):
    """The same table searched with the periodic embedding (2 trials), exported with the search's
    own weights (--no-refit): (folder, storage URL, study name)."""
    root = tmp_path_factory.mktemp("periodic")
    _frame().to_csv(root / "rows.csv", index=False)
    (root / "plr.toml").write_text(PERIODIC_STUDY)
    args = ["--storage", f"sqlite:///{root}/s.db", "--results-dir", str(root / "results"), "--device",
            "cpu", "--no-progress"]  # fmt: skip
    with one_torch_thread("search.tuning.run"):
        run = [*args, "--study", str(root / "plr.toml"), "--data", str(root / "rows.csv"), "--target", "kind",
               "--trials", "2"]  # fmt: skip
        assert run_main(run) == 0
        assert export_main([*args, "--no-refit"]) == 0
    return root / "results" / "plr", f"sqlite:///{root}/s.db", "plr"


def _copy(export, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(export[0], folder)
    _frame().drop(columns="kind").head(5).to_csv(tmp_path / "rows.csv", index=False)
    return folder


def _one_line(capsys, rc: int) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------- the format


def test_the_export_writes_preprocess_skops_and_no_pickle(export):
    folder = export[0]
    assert (folder / PREPROCESS_SKOPS).is_file() and not (folder / PREPROCESS_PKL).exists()
    assert set(skops.io.get_untrusted_types(file=folder / PREPROCESS_SKOPS)) <= set(TRUSTED_TYPES)


@pytest.mark.parametrize("numeric", NUMERICS)
def test_every_numeric_transform_needs_only_the_trusted_types_and_transforms_the_same(tmp_path, numeric):
    frame = _frame()
    data = load_table(TableSpec(train="rows.csv", target="kind"), device="cpu", val_fraction=0.2,
                      split_seed=0, frame=frame)  # fmt: skip
    pre = Preprocess.of(data, numeric)
    path = pre.save(tmp_path / PREPROCESS_SKOPS)
    assert set(skops.io.get_untrusted_types(file=path)) <= set(TRUSTED_TYPES)
    back = load_preprocess(path)
    rows = data.table.frames["test"]
    assert np.array_equal(pre.transformer.transform(rows), back.transformer.transform(rows))
    assert (back.columns, back.task, back.target_name) == (pre.columns, pre.task, pre.target_name)


def test_classes_and_the_target_scale_come_back_exactly_as_they_were(tmp_path):
    data = load_table(TableSpec(train="rows.csv", target="kind"), device="cpu", val_fraction=0.2,
                      split_seed=0, frame=_frame())  # fmt: skip
    classes = [
        0, 7, 2.5, -0.0, True, False, "1", "", "naïve",
        np.int64(3), np.int8(-4), np.uint16(9), np.float32(0.1), np.float64(1e300), np.bool_(True),
        np.str_("x"), pd.Timestamp("2021-03-04 05:06:07.123456789"),
        pd.Timestamp("2021-03-04 05:06", tz="Europe/Paris"), pd.Timedelta(days=2, microseconds=3),
    ]  # fmt: skip
    target = TargetScale(1.5, 0.25, log=True, low=-3.0, high=float("inf"))
    pre = Preprocess(
        data.table.transformer("standard"), ["a", "b"], "classification", classes, target, "kind"
    )
    back = load_preprocess(pre.save(tmp_path / PREPROCESS_SKOPS))
    assert [type(c) for c in back.classes] == [type(c) for c in classes]
    assert all(a == b and str(a) == str(b) for a, b in zip(back.classes, classes, strict=True))
    assert back.classes[-2].tz is not None and str(back.classes[-2].tz) == "Europe/Paris"
    assert back.target == target
    # what a prediction answers: the same values, of the same types
    before = np.asarray(classes, dtype=object)[[0, 4, 9, 16]]
    after = np.asarray(back.classes, dtype=object)[[0, 4, 9, 16]]
    assert [(type(v), v) for v in after] == [(type(v), v) for v in before]


# ---------------------------------------------------------------------------- the round trip


@pytest.mark.parametrize("which", ["export", "periodic_export"])
def test_an_exported_model_predicts_exactly_what_the_in_memory_predictor_did(request, which):
    folder, storage, name = request.getfixturevalue(which)
    loaded = load_predictor(folder)
    study = open_finished(storage, name)
    data, _ = study.load_data(device="cpu")
    best = json.loads((folder / BEST_JSON).read_text())
    config = TrainConfig.from_dict(best["config"])
    if best["refit"] is not None:  # the export's preprocessing was fitted on training + validation rows
        data = with_validation_rows(data)
    memory = Predictor(loaded.model, Preprocess.of(data, config.numeric))
    rows = pd.concat([data.table.frames["test"], data.table.frames["val"]])
    assert loaded.classes == memory.classes == [0, 1, 2]
    assert all(type(c) is int for c in loaded.classes)
    predicted = loaded.predict(rows)
    assert [(type(v), v) for v in predicted] == [(type(v), v) for v in memory.predict(rows)]
    assert np.array_equal(loaded.predict_proba(rows), memory.predict_proba(rows))


def test_an_exported_periodic_embedding_loads_with_weights_only_and_predicts_as_the_trained_model(
    periodic_export,
):
    """model.pt (torch.load(weights_only=True) in load_model) holds the embedding, and predicts
    exactly what the search's trained weights predict (load_best: its checkpoint, rebuilt and
    checked against the trial's validation score)."""
    import torch

    from search.api import load_best
    from search.training.embeddings import PeriodicEmbedding

    folder, storage, name = periodic_export
    best = json.loads((folder / BEST_JSON).read_text())
    config = TrainConfig.from_dict(best["config"])
    assert config.num_embedding == "periodic" and best["refit"] is None
    loaded = load_predictor(folder)
    embedding = next(m for m in loaded.model.modules() if isinstance(m, PeriodicEmbedding))
    assert embedding.frequencies.shape == (3, config.plr_frequencies)  # a, b, c: the numeric columns
    state = torch.load(folder / "model.pt", weights_only=True)
    assert {k for k in state if k.startswith("0.")} == {"0.frequencies", "0.weight", "0.bias"}
    trained = load_best(study_name=name, storage=storage, results_dir=folder.parent, device="cpu")
    assert trained.ensemble is None or best["ensemble"]["exported"]
    rows = pd.concat([trained.data.table.frames["test"], trained.data.table.frames["val"]])
    assert np.array_equal(loaded.predict_proba(rows), trained.predict_proba(rows))
    assert list(loaded.predict(rows)) == list(trained.predict(rows))
    assert "(plr=3x" in best["architecture"]


# ---------------------------------------------------------------------------- refusals


class Payload:
    """What an attacker would ship: building it (skops calls __setstate__) writes a marker."""

    def __init__(self, marker: str):
        self.marker = marker

    def __setstate__(self, state):
        Path(state["marker"]).write_text("ran")


def _crafted(path: Path, transformer) -> None:
    meta = {"columns": ["a"], "task": "classification", "classes": [0, 1], "target": None, "target_name": "y"}
    state = {"format": FORMAT, "meta": json.dumps(meta), "transformer": transformer}
    path.write_bytes(skops.io.dumps(state))


def test_a_crafted_preprocess_file_is_refused_and_runs_nothing(export, tmp_path, capsys):
    folder = _copy(export, tmp_path)
    marker = tmp_path / "marker"
    _crafted(folder / PREPROCESS_SKOPS, Payload(str(marker)))
    untrusted = skops.io.get_untrusted_types(file=folder / PREPROCESS_SKOPS)
    skops.io.load(folder / PREPROCESS_SKOPS, trusted=untrusted)  # trusting it would run it:
    assert marker.read_text() == "ran"
    marker.unlink()
    rc = predict_main(["--model", str(folder), "--data", str(tmp_path / "rows.csv")])
    err = _one_line(capsys, rc)
    assert "refused" in err and "Payload" in err, err
    assert not marker.exists() and not (folder / "predictions.csv").exists()
    with pytest.raises(UserError, match="Payload"):
        load_predictor(folder)
    assert not marker.exists()


def test_a_preprocess_file_naming_os_system_is_refused(export, tmp_path, capsys):
    from sklearn.preprocessing import FunctionTransformer

    folder = _copy(export, tmp_path)
    _crafted(folder / PREPROCESS_SKOPS, FunctionTransformer(os.system, kw_args={"command": "true"}))
    rc = predict_main(["--model", str(folder), "--data", str(tmp_path / "rows.csv")])
    err = _one_line(capsys, rc)
    assert "refused" in err and "system" in err, err


class Unpickled:
    """An old export's pickle as an attacker would make it: unpickling creates a marker folder."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_an_old_pickled_export_is_never_opened(export, tmp_path, capsys):
    folder = _copy(export, tmp_path)
    (folder / PREPROCESS_SKOPS).unlink()
    marker = tmp_path / "marker"
    blob = pickle.dumps(Unpickled(str(marker)))
    pickle.loads(blob)  # noqa: S301  # the crafted pickle does run code when opened
    assert marker.is_dir()
    marker.rmdir()
    (folder / PREPROCESS_PKL).write_bytes(blob)
    rc = predict_main(["--model", str(folder), "--data", str(tmp_path / "rows.csv")])
    err = _one_line(capsys, rc)
    assert "predates safe loading" in err and "python -m search.export" in err, err
    assert not marker.exists()


def test_a_damaged_or_foreign_preprocess_file_is_one_line(export, tmp_path, capsys):
    folder = _copy(export, tmp_path)
    (folder / PREPROCESS_SKOPS).write_bytes(b"not a zip file")
    err = _one_line(capsys, predict_main(["--model", str(folder), "--data", str(tmp_path / "rows.csv")]))
    assert "not a preprocess file" in err, err
    (folder / PREPROCESS_SKOPS).write_bytes(skops.io.dumps({"format": 1, "preprocess": [1, 2]}))
    err = _one_line(capsys, predict_main(["--model", str(folder), "--data", str(tmp_path / "rows.csv")]))
    assert "another version" in err, err
