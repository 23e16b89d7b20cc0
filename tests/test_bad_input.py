"""Bad input: exit code 2, one line on stderr naming the problem, and the database untouched."""

import gc
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_args

from search.run import main

BAD_STUDIES = {
    "syntax.toml": "[study\ndataset = 'digits'\n",
    "activation.toml": '[study]\ndataset = "digits"\n[space]\nactivation = ["relu", "swish"]\n',
    "optimizer.toml": '[study]\ndataset = "digits"\n[space]\noptimizer = ["sgd", "lbfgs"]\n',
    "low_high.toml": '[study]\ndataset = "digits"\n[space]\nlr = {low = 0.1, high = 0.001}\n',
    "log_low.toml": '[study]\ndataset = "digits"\n[space]\nl1 = {low = 0.0, high = 0.1, log = true}\n',
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A real study database made by a real run, and the files the bad inputs point at."""
    root = tmp_path_factory.mktemp("bad")
    db = root / "search.db"
    args = run_args(root, "--trials", "1", db=db)
    assert main(args) == 0
    for name, text in BAD_STUDIES.items():
        (root / name).write_text(text)
    (root / "notes.txt").write_text("this is not a database\n" * 10)
    (root / "empty").mkdir()
    return root, db


def _digest(db: Path) -> str:
    """The database's bytes, with any write-ahead log that holds data. (-shm is SQLite's shared-
    memory index, and a reader of a WAL database may leave an empty -wal and an -shm behind.)"""
    # Close what earlier code left open first: a pooled SQLite connection checkpoints the WAL
    # into the database when it is garbage-collected, whichever test happens to be running then.
    # Until nothing is left (at most 5 times): a collection may run SQLAlchemy's callbacks that
    # return a connection to its pool, which only the next one frees.
    for _ in range(5):
        if not gc.collect():
            break
    h = hashlib.sha256(db.read_bytes())
    wal = db.with_name(db.name + "-wal")
    if wal.exists() and wal.stat().st_size:
        h.update(wal.read_bytes())
    return h.hexdigest()


CASES = {
    "trials zero": (["--trials", "0"], "--trials"),
    "trials negative": (["--trials", "-3"], "--trials"),
    "trials not a number": (["--trials", "abc"], "'abc' is not a whole number"),
    "negative timeout": (["--timeout", "-1"], "--timeout"),
    "no jobs": (["--jobs", "0"], "--jobs"),
    "no stack": (["--stack", "0"], "--stack"),
    "stack too large": (["--stack", "5000"], "stack must be in [1, 1024]"),
    "unknown study": (["--study", "nope"], "unknown study 'nope'"),
    "toml syntax": (["--study", "{root}/syntax.toml"], "TOML syntax error"),
    "unknown activation": (["--study", "{root}/activation.toml"], "'swish' is not allowed"),
    "unknown optimizer": (["--study", "{root}/optimizer.toml"], "'lbfgs' is not allowed"),
    "low above high": (["--study", "{root}/low_high.toml"], "low (0.1) > high (0.001)"),
    "log low not positive": (["--study", "{root}/log_low.toml"], "log range needs low > 0"),
    "unknown sampler": (["--sampler", "grid"], "--sampler"),
    "unknown pruner": (["--pruner", "asha"], "--pruner"),
    "malformed storage": (["--storage", "not a url"], "is not a storage URL"),
    "postgres not answering": (["--storage", "postgresql://postgres@127.0.0.1:1/test"], "cannot connect"),
    "storage not sqlite": (["--storage", "sqlite:///{root}/notes.txt"], "not an SQLite database"),
    "data dir missing": (["--dataset", "cifar10", "--data-dir", "{root}/missing"], "missing"),
    "data dir without images": (["--dataset", "imagefolder", "--data-dir", "{root}/empty"], "empty"),
    "mysql without its driver": (["--storage", "mysql://u@127.0.0.1:1/x"], "pip install mysqlclient"),
    "study name of dots": (["--study-name", ".."], "--study-name '..': a study name must hold"),
}
if not torch.cuda.is_available():
    CASES["cuda without cuda"] = (["--device", "cuda"], "CUDA is not available")


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_exits_2_with_one_line_and_leaves_the_database_unchanged(world, name, capsys):
    root, db = world
    extra, words = CASES[name]
    extra = [a.format(root=root) for a in extra]
    args = run_args(root, "--trials", "1", *extra, db=db)
    before = _digest(db)
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("python -m search.run: error: ") and words in err
    assert "Traceback" not in captured.err + captured.out
    assert _digest(db) == before
    # results/.. is root: a study named ".." would have put its best weights here
    assert not (root / "best_model.pt").exists() and not (root / "best_model.json").exists()


def test_a_bad_flag_from_the_shell_prints_no_traceback(world):
    root, db = world
    proc = subprocess.run(
        [sys.executable, "-m", "search.run", "--trials", "abc", "--storage", f"sqlite:///{db}"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "python -m search.run: error: argument --trials: 'abc' is not a whole number"
    ]


@pytest.mark.parametrize(
    "study_name, words",
    [("nope", "no study named 'nope'"), ("all-failed", "no finished")],
)
def test_export_of_a_missing_or_unfinished_study_is_one_line_and_changes_nothing(
    world, study_name, words, capsys
):
    import optuna

    from search.export import main as export_main

    root, db = world
    url = f"sqlite:///{db}"
    if study_name == "all-failed" and "all-failed" not in optuna.get_all_study_names(url):
        storage = optuna.storages.RDBStorage(url)
        study = optuna.create_study(study_name="all-failed", storage=storage, direction="maximize")
        study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
        storage.engine.dispose()
    before = _digest(db)
    assert export_main(["--storage", url, "--study-name", study_name, "--out", str(root / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err
    assert _digest(db) == before


def test_export_to_an_existing_file_is_one_line_and_writes_nothing(world, capsys):
    from search.export import main as export_main

    root, db = world
    target = root / "taken.txt"
    target.write_text("keep me\n")
    before = sorted(p.name for p in root.rglob("*"))
    for out in (target, target / "sub"):
        assert export_main(["--storage", f"sqlite:///{db}", "--out", str(out), "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is a file" in err, err
        assert "Traceback" not in err
    assert target.read_text() == "keep me\n"
    assert sorted(p.name for p in root.rglob("*")) == before


def test_mysql_without_its_driver_is_one_line_in_every_storage_command(capsys):
    from search.compare import main as compare_main
    from search.export import main as export_main
    from search.report import main as report_main

    for cmd in (compare_main, export_main, report_main):
        assert cmd(["--storage", "mysql://u@127.0.0.1:1/x"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "the mysql driver" in err and "pip install" in err, err


def test_a_spanish_spreadsheets_csv_searches_exports_and_predicts(tmp_path, capsys):
    """Excel's "CSV" on a Spanish Windows: Windows-1252 text, semicolons, decimal commas. Its
    numbers are numbers (the target is regressed, not 80 one-row classes), and prediction takes a
    value of the wrong kind as missing with one warning."""
    import numpy as np
    import optuna
    import pandas as pd

    from search.export import main as export_main
    from search.predict import main as predict_main

    rng = np.random.default_rng(0)
    edad = rng.normal(40, 10, 80).round(2)
    lines = ["año;ciudad;precio"] + [
        f"{a};{c};{2 * a + rng.normal():.2f}".replace(".", ",")
        for a, c in zip(edad, rng.choice(["Cádiz", "León"], 80), strict=True)
    ]
    (tmp_path / "ventas.csv").write_bytes("\r\n".join(lines).encode("cp1252"))
    common = ["--storage", f"sqlite:///{tmp_path}/s.db", "--results-dir", str(tmp_path / "results")]
    train = ["--data", str(tmp_path / "ventas.csv"), "--target", "precio", "--trials", "2", "--epochs", "1"]
    assert main([*common, *train, "--device", "cpu", "--no-progress"]) == 0
    study = optuna.load_study(study_name="ventas-precio", storage=common[1])
    assert study.user_attrs["task"] == "regression"
    assert export_main([*common, "--device", "cpu", "--no-progress"]) == 0
    (tmp_path / "nuevas.csv").write_bytes("ciudad;año\nLeón;41,5\nCádiz;abc\n".encode("cp1252"))
    out = tmp_path / "p.csv"
    model = str(tmp_path / "results" / "ventas-precio")
    predict = ["--model", model, "--data", str(tmp_path / "nuevas.csv"), "--out", str(out)]
    capsys.readouterr()
    with pytest.warns(UserWarning, match=r"'año' 1 not a number \(e.g. 'abc'\)"):
        assert predict_main(predict) == 0
    assert "Traceback" not in capsys.readouterr().err
    predicted = pd.read_csv(out)["prediction"]
    assert len(predicted) == 2 and predicted.notna().all() and 60 < predicted[0] < 110
